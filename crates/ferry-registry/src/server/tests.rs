use super::blobs::{parse_range, ByteRange};
use super::listings::paginate;
use super::routes::{parse_route, Route};

#[test]
fn routes_parse_from_the_right() {
    assert_eq!(parse_route("_catalog"), Some(Route::Catalog));
    assert_eq!(
        parse_route("installs/acme/app/web/manifests/v1"),
        Some(Route::Manifest("installs/acme/app/web".into(), "v1".into()))
    );
    assert_eq!(
        parse_route("a/manifests/b/manifests/latest"),
        Some(Route::Manifest("a/manifests/b".into(), "latest".into()))
    );
    assert_eq!(
        parse_route("a/b/blobs/uploads/"),
        Some(Route::UploadStart("a/b".into()))
    );
    assert_eq!(
        parse_route("a/b/blobs/uploads"),
        Some(Route::UploadStart("a/b".into()))
    );
    assert_eq!(
        parse_route("a/blobs/uploads/xyz"),
        Some(Route::Upload("a".into(), "xyz".into()))
    );
    assert_eq!(
        parse_route("a/blobs/sha256:00"),
        Some(Route::Blob("a".into(), "sha256:00".into()))
    );
    assert_eq!(parse_route("a/tags/list"), Some(Route::Tags("a".into())));
    assert_eq!(
        parse_route("a/referrers/sha256:00"),
        Some(Route::Referrers("a".into(), "sha256:00".into()))
    );
    assert_eq!(parse_route("manifests/x"), None);
    assert_eq!(parse_route("a/b/c"), None);
}

#[test]
fn ranges() {
    assert!(matches!(
        parse_range(Some("bytes=2-5"), 10),
        ByteRange::Partial(2, 5)
    ));
    assert!(matches!(
        parse_range(Some("bytes=7-"), 10),
        ByteRange::Partial(7, 9)
    ));
    assert!(matches!(
        parse_range(Some("bytes=-3"), 10),
        ByteRange::Partial(7, 9)
    ));
    assert!(matches!(
        parse_range(Some("bytes=2-50"), 10),
        ByteRange::Partial(2, 9)
    ));
    assert!(matches!(
        parse_range(Some("bytes=10-"), 10),
        ByteRange::Unsatisfiable
    ));
    assert!(matches!(parse_range(None, 10), ByteRange::Full));
}

#[test]
fn pagination() {
    let items: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
    assert_eq!(
        paginate(items.clone(), Some(2), None),
        (vec!["a".into(), "b".into()], true)
    );
    assert_eq!(
        paginate(items.clone(), Some(2), Some("b")),
        (vec!["c".into(), "d".into()], false)
    );
    assert_eq!(paginate(items.clone(), Some(0), None), (vec![], false));
    assert_eq!(paginate(items, None, Some("c")), (vec!["d".into()], false));
}
