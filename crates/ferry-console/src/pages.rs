//! The pages, rendered on the server from the views, so every page reads without JavaScript.
//! Each function returns the inside of `<main>`; live updates fetch the same inside again.
//!
//! This module must never render a value without [`esc`], and never render a form that
//! changes state without the CSRF token.

use std::fmt::Write as _;

use crate::html::{badge, bytes, digest, duration, esc, seg, time_el};
use crate::view::{Action, BuildDetail, Fleet, Lineage, ReleaseDetail, ReleaseSummary};

/// The fleet: every install, its agent's health, desired vs current per component.
pub fn fleet(f: &Fleet, filter: &str) -> String {
    let q = filter.trim().to_lowercase();
    let rows: Vec<_> = f
        .installs
        .iter()
        .filter(|i| {
            q.is_empty()
                || i.id.to_lowercase().contains(&q)
                || i.app.to_lowercase().contains(&q)
                || (q == "stale" && i.stale)
        })
        .collect();
    let stale = f.installs.iter().filter(|i| i.stale).count();
    let mut out = format!(
        "<h1>Fleet</h1><p class=\"summary\"><span data-count=\"installs\">{}</span> installs, \
         <span data-count=\"stale\">{stale}</span> stale (no word for {}).</p>\
         <form class=\"filter\" method=\"get\" action=\"/\" role=\"search\">\
         <label for=\"q\">Filter</label> <input id=\"q\" name=\"q\" type=\"search\" value=\"{}\" \
         placeholder=\"install, app or stale\" data-filter=\"#fleet tbody tr\"> \
         <button type=\"submit\">Apply</button></form>",
        f.installs.len(),
        duration(f.stale_after_ms / 1000),
        esc(filter),
    );
    if f.installs.is_empty() {
        out.push_str(
            "<p>No installs yet. Register one with <code>ferry install register</code>.</p>",
        );
        return out;
    }
    out.push_str(
        "<div class=\"scroll\"><table id=\"fleet\"><caption class=\"visually-hidden\">Installs</caption>\
         <thead><tr><th scope=\"col\">Install</th><th scope=\"col\">App</th>\
         <th scope=\"col\">Agent</th><th scope=\"col\">Last seen</th>\
         <th scope=\"col\">Components (desired → current)</th></tr></thead><tbody>",
    );
    for i in rows {
        let health = if i.stale { "stale" } else { "healthy" };
        let mut comps = String::from("<ul class=\"plain\">");
        for c in &i.components {
            let state = if c.in_sync() { "in sync" } else { "behind" };
            let show = |v: &Option<crate::view::VersionRef>| match v {
                Some(v) => digest(&v.digest),
                None => "<span class=\"muted\">none</span>".into(),
            };
            let _ = write!(
                comps,
                "<li>{}: {} → {} {}</li>",
                esc(&c.component),
                show(&c.desired),
                show(&c.current),
                badge(state)
            );
        }
        comps.push_str("</ul>");
        let _ = write!(
            out,
            "<tr data-install=\"{id}\" data-stale=\"{stale}\"><th scope=\"row\">{id}</th><td>{app}</td>\
             <td>{badge} {version}{health_text}</td><td>{seen}</td><td>{comps}</td></tr>",
            id = esc(&i.id),
            stale = i.stale,
            app = esc(&i.app),
            badge = badge(health),
            version = esc(i.agent_version.as_deref().unwrap_or("")),
            health_text = i
                .health
                .as_deref()
                .map(|h| format!(" <span class=\"muted\">{}</span>", esc(h)))
                .unwrap_or_default(),
            seen = time_el(f.now, i.last_seen),
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

/// The releases, newest first.
pub fn releases(list: &[ReleaseSummary], now: u64) -> String {
    let mut out = String::from("<h1>Releases</h1>");
    if list.is_empty() {
        out.push_str("<p>No releases yet. Start one with <code>ferry release create</code>.</p>");
        return out;
    }
    out.push_str(
        "<div class=\"scroll\"><table id=\"releases\"><thead><tr><th scope=\"col\">Release</th>\
         <th scope=\"col\">App</th><th scope=\"col\">Status</th><th scope=\"col\">Step</th>\
         <th scope=\"col\">Installs</th><th scope=\"col\">Created</th></tr></thead><tbody>",
    );
    for r in list {
        let _ = write!(
            out,
            "<tr data-release=\"{id}\"><th scope=\"row\"><a href=\"/releases/{link}\">{id}</a></th>\
             <td>{app}</td><td>{status}</td><td>{step} of {steps}</td>\
             <td>{ok} succeeded, {failed} failed, of {targets}</td><td>{created}</td></tr>",
            id = esc(&r.id),
            link = seg(&r.id),
            app = esc(&r.app),
            status = badge(&r.status),
            step = r.step,
            steps = r.steps,
            ok = r.succeeded,
            failed = r.failed,
            targets = r.targets,
            created = time_el(now, Some(r.created)),
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

/// One release: builds, policy, the steps as a timeline with every install's state, and the
/// actions it accepts now.
pub fn release(r: &ReleaseDetail, now: u64) -> String {
    let s = &r.summary;
    let mut out = format!(
        "<h1>Release <span class=\"id\">{id}</span></h1>\
         <p class=\"summary\">{app}: {status} — step {step} of {steps}; \
         <span data-count=\"succeeded\">{ok}</span> succeeded, \
         <span data-count=\"failed\">{failed}</span> failed, of {targets} installs. \
         {per} per step, {delay} between steps, halts after {maxf} failures.</p>",
        id = esc(&s.id),
        app = esc(&s.app),
        status = badge(&s.status),
        step = s.step,
        steps = s.steps,
        ok = s.succeeded,
        failed = s.failed,
        targets = s.targets,
        per = r.per_step,
        delay = duration(r.delay_secs),
        maxf = esc(&r.max_failures),
    );
    if let Some(why) = &r.halted_because {
        let _ = write!(
            out,
            "<p class=\"alert\" role=\"alert\">Halted: {}</p>",
            esc(why)
        );
    }
    if !r.actions.is_empty() {
        out.push_str("<div class=\"actions\">");
        for a in &r.actions {
            let _ = write!(
                out,
                "<a class=\"button {a}\" href=\"/releases/{id}/{a}\" data-action=\"{a}\" \
                 data-release=\"{id_attr}\" data-question=\"{q}\">{label}</a> ",
                a = a.as_str(),
                id = seg(&s.id),
                id_attr = esc(&s.id),
                q = esc(a.question()),
                label = capitalised(a.as_str()),
            );
        }
        out.push_str("</div>");
    }
    out.push_str("<h2>Builds</h2><ul class=\"plain\">");
    for b in &r.builds {
        let _ = write!(
            out,
            "<li>{}: <a href=\"/builds/{}\">{}</a> {}</li>",
            esc(&b.component),
            seg(&b.build_id),
            esc(&b.build_id),
            b.digest.as_deref().map(digest).unwrap_or_default()
        );
    }
    out.push_str("</ul><h2>Steps</h2><ol class=\"timeline\">");
    for step in &r.steps {
        let _ = write!(
            out,
            "<li class=\"step\" data-step=\"{idx}\" data-state=\"{state_attr}\"><h3>Step {n} {state}</h3>\
             <p class=\"muted\">started {started}, finished {finished}</p>",
            idx = step.index,
            n = step.index + 1,
            state_attr = esc(&step.state),
            state = badge(&step.state),
            started = time_el(now, step.started),
            finished = time_el(now, step.finished),
        );
        out.push_str(
            "<div class=\"scroll\"><table><thead><tr><th scope=\"col\">Install</th>\
             <th scope=\"col\">State</th><th scope=\"col\">Moved</th><th scope=\"col\">ETA</th>\
             <th scope=\"col\">Error</th></tr></thead><tbody>",
        );
        for t in &step.targets {
            let moved = match t.bytes_total {
                Some(total) => format!("{} of {}", bytes(t.bytes_moved), bytes(total)),
                None => bytes(t.bytes_moved),
            };
            let _ = write!(
                out,
                "<tr data-install=\"{id}\" data-state=\"{st}\"><th scope=\"row\">{id}</th><td>{state}</td>\
                 <td>{moved}</td><td>{eta}</td><td>{err}</td></tr>",
                id = esc(&t.install),
                st = esc(&t.state),
                state = badge(&t.state),
                eta = t.eta_secs.map(duration).unwrap_or_default(),
                err = esc(t.error.as_deref().unwrap_or("")),
            );
        }
        out.push_str("</tbody></table></div></li>");
    }
    out.push_str("</ol>");
    out
}

/// The confirmation asked before an action (the page without JavaScript).
pub fn confirm(release: &str, action: Action, csrf: &str) -> String {
    format!(
        "<h1>{label} release <span class=\"id\">{id}</span>?</h1><p>{q}</p>\
         <form method=\"post\" action=\"/releases/{link}/{a}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button type=\"submit\" class=\"button {a}\">Yes, {a}</button> \
         <a href=\"/releases/{link}\">Cancel</a></form>",
        label = capitalised(action.as_str()),
        id = esc(release),
        link = seg(release),
        a = action.as_str(),
        q = esc(action.question()),
        csrf = esc(csrf),
    )
}

/// One build.
pub fn build(b: &BuildDetail, now: u64) -> String {
    let row = |k: &str, v: String| format!("<tr><th scope=\"row\">{k}</th><td>{v}</td></tr>");
    let opt = |v: &Option<String>| esc(v.as_deref().unwrap_or("—"));
    let mut out = format!(
        "<h1>Build <span class=\"id\">{}</span></h1><table class=\"facts\"><tbody>",
        esc(&b.id)
    );
    out.push_str(&row(
        "Component",
        format!("{} / {}", esc(&b.app), esc(&b.component)),
    ));
    out.push_str(&row("Status", badge(&b.status)));
    out.push_str(&row("Source ref", esc(&b.source_ref)));
    out.push_str(&row("Revision", opt(&b.revision)));
    out.push_str(&row("Repository", opt(&b.repository)));
    out.push_str(&row(
        "Digest",
        b.digest
            .as_deref()
            .map(digest)
            .unwrap_or_else(|| "—".into()),
    ));
    out.push_str(&row("Media type", opt(&b.media_type)));
    out.push_str(&row("Created", time_el(now, Some(b.created))));
    if let Some(e) = &b.error {
        out.push_str(&row(
            "Error",
            format!("<span class=\"error\">{}</span>", esc(e)),
        ));
    }
    out.push_str(&row(
        "Logs",
        match &b.logs {
            Some(l) if l.starts_with("https://") => {
                format!("<a href=\"{0}\" rel=\"noreferrer\">{0}</a>", esc(l))
            }
            Some(l) => format!("<code>{}</code>", esc(l)),
            None => "—".into(),
        },
    ));
    out.push_str("</tbody></table>");
    let list = |title: &str, items: &[String]| {
        let mut s = format!("<h2>{title}</h2>");
        if items.is_empty() {
            s.push_str("<p class=\"muted\">none</p>");
        } else {
            s.push_str("<ul class=\"plain\">");
            for i in items {
                let _ = write!(s, "<li><code>{}</code></li>", esc(i));
            }
            s.push_str("</ul>");
        }
        s
    };
    out.push_str(&list("Artifact set", &b.artifacts));
    out.push_str(&list("Referrers", &b.referrers));
    out
}

/// Where a digest is (or the form to ask).
pub fn lineage(l: Option<&Lineage>, asked: &str, now: u64) -> String {
    let mut out = format!(
        "<h1>Lineage</h1><form class=\"filter\" method=\"get\" action=\"/lineage\">\
         <label for=\"digest\">Digest</label> <input id=\"digest\" name=\"digest\" \
         value=\"{}\" placeholder=\"sha256:…\" size=\"72\" required> \
         <button type=\"submit\">Find</button></form>",
        esc(asked)
    );
    let Some(l) = l else { return out };
    if l.entries.is_empty() {
        let _ = write!(
            out,
            "<p>No install holds <code>{}</code>.</p>",
            esc(&l.digest)
        );
        return out;
    }
    out.push_str(
        "<div class=\"scroll\"><table id=\"lineage\"><thead><tr><th scope=\"col\">Install</th>\
         <th scope=\"col\">Repository</th><th scope=\"col\">Build</th><th scope=\"col\">Since</th>\
         </tr></thead><tbody>",
    );
    for e in &l.entries {
        let _ = write!(
            out,
            "<tr><th scope=\"row\">{}</th><td><code>{}</code></td><td><a href=\"/builds/{}\">{}</a></td><td>{}</td></tr>",
            esc(&e.install),
            esc(&e.repository),
            seg(&e.build_id),
            esc(&e.build_id),
            time_el(now, Some(e.since)),
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

/// An error, in words, with what to do.
pub fn problem(title: &str, message: &str) -> String {
    format!(
        "<h1>{}</h1><p class=\"alert\" role=\"alert\">{}</p>",
        esc(title),
        esc(message)
    )
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}
