//! HTML building blocks: escaping, the page frame, times and sizes in words. Everything a page
//! shows goes through [`esc`]; this module must never emit a value unescaped.

use std::fmt::Write as _;

/// Escapes text for HTML content and double-quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a path segment for a link (ids are validated names, but never trust that here).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The navigation entries: (path, label).
const NAV: &[(&str, &str)] = &[
    ("/", "Fleet"),
    ("/releases", "Releases"),
    ("/lineage", "Lineage"),
];

/// A whole page. `watch` is the JSON path whose changes refresh `<main>` (live updates).
pub fn page(title: &str, active: &str, watch: Option<&str>, csrf: &str, main: &str) -> String {
    let mut nav = String::new();
    for (path, label) in NAV {
        let current = if *path == active {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(nav, "<li><a href=\"{path}\"{current}>{label}</a></li>");
    }
    let watch = watch
        .map(|w| format!(" data-watch=\"{}\"", esc(w)))
        .unwrap_or_default();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"ferry-csrf\" content=\"{csrf}\">\
         <title>{title} · Ferry console</title>\
         <link rel=\"icon\" href=\"/assets/favicon.svg\" type=\"image/svg+xml\">\
         <link rel=\"stylesheet\" href=\"/assets/console.css\">\
         <script src=\"/assets/console.js\" defer></script></head>\
         <body><header><p class=\"brand\">Ferry console</p><nav aria-label=\"Main\"><ul>{nav}</ul></nav></header>\
         <main id=\"view\"{watch} aria-live=\"polite\">{main}</main></body></html>\n",
        csrf = esc(csrf),
        title = esc(title),
    )
}

/// `5s ago`, `3m ago`, `2h ago`, `4d ago`; `never` for none.
pub fn ago(now: u64, t: Option<u64>) -> String {
    let Some(t) = t else {
        return "never".into();
    };
    let s = now.saturating_sub(t) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// A `<time>` element: words shown, the UTC instant in `datetime` and the tooltip.
pub fn time_el(now: u64, t: Option<u64>) -> String {
    match t {
        None => "<span class=\"muted\">never</span>".into(),
        Some(ms) => {
            let iso = iso(ms);
            format!(
                "<time datetime=\"{iso}\" title=\"{iso}\">{}</time>",
                esc(&ago(now, Some(ms)))
            )
        }
    }
}

/// RFC 3339 UTC, to the second.
pub fn iso(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// `1.5 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `1h 02m`, `3m 20s`, `45s`.
pub fn duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format!("{}h {:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// A digest shortened for tables, full in the tooltip.
pub fn digest(d: &str) -> String {
    let short = ferry_spec::short_digest(d);
    format!(
        "<a href=\"/lineage?digest={}\" title=\"{}\"><code>{}</code></a>",
        seg(d),
        esc(d),
        esc(&short)
    )
}

/// A state word as a badge, with its class for colour (and the word itself for meaning).
pub fn badge(state: &str) -> String {
    let class = match state {
        "succeeded" | "completed" | "done" | "in sync" | "healthy" => "ok",
        "failed" | "halted" | "aborted" | "stale" | "dead_lettered" | "policy_failed" => "bad",
        "running" | "syncing" | "waiting" | "pending" | "paused" | "behind" => "busy",
        _ => "plain",
    };
    format!("<span class=\"badge {class}\">{}</span>", esc(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_words() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(seg("a b/c?"), "a%20b%2Fc%3F");
        assert_eq!(ago(10_000, Some(5_000)), "5s ago");
        assert_eq!(ago(4_000_000, Some(0)), "1h ago");
        assert_eq!(ago(1, None), "never");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12), "12 B");
        assert_eq!(duration(200), "3m 20s");
        assert_eq!(iso(0), "1970-01-01T00:00:00Z");
    }
}
