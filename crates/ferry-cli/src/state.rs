//! The `ferry dev` state directory, as the management commands see it: everything but the
//! table helpers is `ferry_dev::state` (shared with the dev system itself), re-exported here.
//! The helpers only format for the terminal; this module must never print a secret.

use std::io::Write as _;

pub use ferry_dev::state::*;

pub use ferry_spec::short_digest;

/// Prints rows as aligned columns.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    // A closed pipe (`| head`) is not an error worth a panic: stop writing quietly.
    let mut out = std::io::stdout().lock();
    let mut line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        let _ = writeln!(out, "  {}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}
