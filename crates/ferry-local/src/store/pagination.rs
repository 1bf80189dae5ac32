//! Cursors and pages for the store's queries (builds, syncs, installs, lineage, releases). A
//! cursor must never be accepted by a query (or a partition) other than the one that made it.

use ferry_core::ports::{Cursor, Page, PageRequest};
use rusqlite::Connection;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::decode;
use crate::db::DbError;

// ---------------------------------------------------------------------------------------------
// Cursors: "<query>:<json>", where the json repeats the query's parameters so a cursor from
// another query (or another component) is refused instead of silently restarting.

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct CursorKey {
    /// The query's parameters.
    pub(crate) p: Vec<String>,
    /// created_at of the last item, for newest-first queries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) t: Option<u64>,
    /// The id (or install id) of the last item.
    pub(crate) id: String,
}

pub(crate) fn make_cursor(query: &str, key: &CursorKey) -> Cursor {
    // Encoding a struct of strings and numbers cannot fail; an empty cursor would be refused.
    Cursor::new(format!(
        "{query}:{}",
        serde_json::to_string(key).unwrap_or_default()
    ))
}

pub(crate) fn read_cursor(
    query: &str,
    params: &[&str],
    page: &PageRequest,
) -> Result<Option<CursorKey>, DbError> {
    let Some(cursor) = &page.cursor else {
        return Ok(None);
    };
    let bad = || {
        DbError::Invalid(format!(
            "the cursor does not belong to this {query} query; pass back the `next` cursor of the same query, or start from the first page"
        ))
    };
    let json = cursor
        .as_str()
        .strip_prefix(query)
        .and_then(|rest| rest.strip_prefix(':'))
        .ok_or_else(bad)?;
    let key: CursorKey = serde_json::from_str(json).map_err(|_| bad())?;
    if key.p.iter().map(String::as_str).ne(params.iter().copied()) {
        return Err(bad());
    }
    Ok(Some(key))
}

/// Turns `limit + 1` fetched rows into a page; `key_of` builds the cursor of the last item.
pub(crate) fn paginate<T>(
    query: &str,
    mut rows: Vec<T>,
    limit: u32,
    key_of: impl Fn(&T) -> CursorKey,
) -> Page<T> {
    let limit = limit as usize;
    let next = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|last| make_cursor(query, &key_of(last)))
    } else {
        None
    };
    Page { items: rows, next }
}

pub(crate) fn query_bodies<T: DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    what: &str,
) -> Result<Vec<T>, DbError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(decode(what, &row?)?);
    }
    Ok(out)
}
