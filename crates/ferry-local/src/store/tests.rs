//! Unit tests of the store's helpers: cursors bound to their query, corrupt rows reported.

use ferry_core::domain::Build;
use ferry_core::ports::PageRequest;

use super::pagination::make_cursor;
use super::*;

#[test]
fn cursors_name_their_query_and_parameters() {
    let key = CursorKey {
        p: vec!["shop".into(), "web".into()],
        t: Some(5),
        id: "b-1".into(),
    };
    let c = make_cursor("builds_by_component", &key);
    let page = PageRequest::after(3, c);
    assert_eq!(
        read_cursor("builds_by_component", &["shop", "web"], &page).unwrap(),
        Some(key)
    );
    let err = read_cursor("builds_by_component", &["shop", "api"], &page).unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");
    assert!(read_cursor("syncs_by_build", &["shop", "web"], &page).is_err());
}

#[test]
fn corrupt_rows_are_reported_as_corrupt() {
    let e = store_err(decode::<Build>("b-1", "{not json").unwrap_err());
    assert!(
        matches!(e, StoreError::Corrupt { ref key, .. } if key == "b-1"),
        "{e:?}"
    );
}
