//! The console's HTTP surface over a fake source (the views are plain data; the adapters over
//! the management port have their own tests): every JSON endpoint, ETags, the pages, the
//! security rules (loopback Host, token, CSRF, origin), live updates and their bound.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_console::view::*;
use ferry_console::{ConsoleConfig, ConsoleSource, SourceError};
use futures::StreamExt as _;

#[derive(Clone, Default)]
struct Fake {
    state: Arc<Mutex<String>>,
    acts: Arc<Mutex<Vec<(String, Action, String)>>>,
}

fn install(i: usize) -> InstallRow {
    InstallRow {
        id: format!("i-{i}"),
        app: "demo".into(),
        last_seen: Some(1_000),
        agent_version: Some("0.1.0".into()),
        health: None,
        stale: i == 5,
        components: vec![ComponentVersions {
            component: "web".into(),
            desired: Some(VersionRef {
                build_id: "b-2".into(),
                digest: "sha256:2222222222222222222222222222222222222222222222222222222222222222"
                    .into(),
            }),
            current: (i < 3).then(|| VersionRef {
                build_id: "b-2".into(),
                digest: "sha256:2222222222222222222222222222222222222222222222222222222222222222"
                    .into(),
            }),
        }],
    }
}

impl Fake {
    fn summary(&self) -> ReleaseSummary {
        ReleaseSummary {
            id: "r-1".into(),
            app: "demo".into(),
            status: self.state.lock().unwrap().clone(),
            created: 1_000,
            step: 1,
            steps: 3,
            targets: 6,
            succeeded: 2,
            failed: 0,
        }
    }
}

impl ConsoleSource for Fake {
    async fn fleet(&self) -> Result<Fleet, SourceError> {
        let mut installs: Vec<_> = (0..6).map(install).collect();
        installs[4].id = "<script>alert(1)</script>".into();
        Ok(Fleet {
            now: 61_000,
            stale_after_ms: 300_000,
            installs,
        })
    }
    async fn releases(&self) -> Result<Vec<ReleaseSummary>, SourceError> {
        Ok(vec![self.summary()])
    }
    async fn release(&self, id: &str) -> Result<ReleaseDetail, SourceError> {
        if id != "r-1" {
            return Err(SourceError::NotFound(format!(
                "no release {id}; see ferry release list"
            )));
        }
        let running = self.summary().status == "running";
        Ok(ReleaseDetail {
            summary: self.summary(),
            builds: vec![ReleasedBuild {
                component: "web".into(),
                build_id: "b-2".into(),
                digest: None,
            }],
            per_step: 2,
            delay_secs: 600,
            max_failures: "1".into(),
            halted_because: None,
            steps: vec![StepRow {
                index: 0,
                state: "running".into(),
                started: Some(2_000),
                finished: None,
                targets: vec![TargetRow {
                    install: "i-0".into(),
                    state: "syncing".into(),
                    bytes_moved: 1024,
                    bytes_total: Some(4096),
                    eta_secs: Some(30),
                    error: None,
                }],
            }],
            actions: if running {
                vec![Action::Pause, Action::Abort]
            } else {
                vec![Action::Resume, Action::Abort]
            },
        })
    }
    async fn build(&self, id: &str) -> Result<BuildDetail, SourceError> {
        Err(SourceError::NotFound(format!("no build {id}")))
    }
    async fn lineage(&self, digest: &str) -> Result<Lineage, SourceError> {
        if !digest.starts_with("sha256:") {
            return Err(SourceError::Invalid(format!(
                "{digest:?} is not a digest (sha256:…)"
            )));
        }
        Ok(Lineage {
            digest: digest.into(),
            entries: vec![],
        })
    }
    async fn act(
        &self,
        release: &str,
        action: Action,
        by: &str,
    ) -> Result<ReleaseSummary, SourceError> {
        self.acts
            .lock()
            .unwrap()
            .push((release.into(), action, by.into()));
        *self.state.lock().unwrap() = match action {
            Action::Pause => "paused",
            Action::Resume => "running",
            Action::Abort => "aborted",
        }
        .into();
        Ok(self.summary())
    }
}

struct Running {
    addr: SocketAddr,
    fake: Fake,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

async fn start(config: impl FnOnce(&mut ConsoleConfig)) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut c = ConsoleConfig::new(addr);
    c.poll = Duration::from_millis(20);
    config(&mut c);
    let fake = Fake::default();
    *fake.state.lock().unwrap() = "running".into();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let source = fake.clone();
    tokio::spawn(async move {
        ferry_console::serve(listener, source, &c, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Running {
        addr,
        fake,
        stop: Some(tx),
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn csrf_of(page: &str) -> String {
    let start = page.find("name=\"ferry-csrf\" content=\"").unwrap() + 27;
    page[start..start + 64].to_string()
}

#[tokio::test]
async fn json_endpoints_answer_with_etags_and_clear_errors() {
    let c = start(|_| {}).await;
    let http = client();
    let r = http.get(c.url("/api/fleet")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let tag = r.headers()["etag"].to_str().unwrap().to_string();
    let fleet: Fleet = r.json().await.unwrap();
    assert_eq!(fleet.installs.len(), 6);
    let again = http
        .get(c.url("/api/fleet"))
        .header("if-none-match", &tag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);

    let list: Vec<ReleaseSummary> = http
        .get(c.url("/api/releases"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list[0].id, "r-1");
    let detail: ReleaseDetail = http
        .get(c.url("/api/releases/r-1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail.steps[0].targets[0].bytes_total, Some(4096));
    let missing = http.get(c.url("/api/releases/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("ferry release list"));
    let bad = http.get(c.url("/api/lineage/md5:x")).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let build = http.get(c.url("/api/builds/b-9")).send().await.unwrap();
    assert_eq!(build.status(), 404);
}

#[tokio::test]
async fn pages_read_without_javascript_and_escape_everything() {
    let c = start(|_| {}).await;
    let http = client();
    let page = http.get(c.url("/")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let page = page.text().await.unwrap();
    assert_eq!(page.matches("<tr data-install=").count(), 6);
    assert!(
        !page.contains("<script>alert(1)"),
        "an install id must be escaped"
    );
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    let stale = http
        .get(c.url("/?q=stale"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(stale.matches("<tr data-install=").count(), 1);
    let release = http
        .get(c.url("/releases/r-1"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(release.contains("data-watch=\"/api/releases/r-1\""));
    assert!(release.contains("1.0 KiB of 4.0 KiB"));
    assert!(release.contains("href=\"/releases/r-1/pause\""));
    // The fragment the live-update script asks for is only the inside of <main>.
    let fragment = http
        .get(c.url("/releases/r-1"))
        .header("x-ferry-fragment", "1")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(fragment.starts_with("<h1>") && !fragment.contains("<html"));
    for asset in ["/assets/console.css", "/assets/console.js"] {
        assert_eq!(http.get(c.url(asset)).send().await.unwrap().status(), 200);
    }
}

#[tokio::test]
async fn actions_need_the_csrf_token_and_the_console_origin() {
    let c = start(|_| {}).await;
    let http = client();
    let page = http
        .get(c.url("/releases/r-1"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = csrf_of(&page);
    let post = |headers: Vec<(&'static str, String)>| {
        let mut r = http.post(c.url("/api/releases/r-1/pause"));
        for (k, v) in headers {
            r = r.header(k, v);
        }
        r.send()
    };
    assert_eq!(post(vec![]).await.unwrap().status(), 403);
    assert_eq!(
        post(vec![("x-ferry-csrf", "0".repeat(64))])
            .await
            .unwrap()
            .status(),
        403
    );
    let cross = post(vec![
        ("x-ferry-csrf", csrf.clone()),
        ("origin", "http://evil.example".into()),
    ])
    .await
    .unwrap();
    assert_eq!(cross.status(), 403);
    assert!(
        c.fake.acts.lock().unwrap().is_empty(),
        "nothing may have been done"
    );

    let ok = post(vec![("x-ferry-csrf", csrf.clone())]).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(c.fake.summary().status, "paused");
    // The page without JavaScript: a confirmation, then a form POST, then back to the release.
    let confirm = http
        .get(c.url("/releases/r-1/resume"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(confirm.contains("Resume this release?") && confirm.contains(&csrf));
    let form = http
        .post(c.url("/releases/r-1/resume"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 303);
    assert_eq!(form.headers()["location"], "/releases/r-1");
    assert_eq!(c.fake.summary().status, "running");
    let unknown = http
        .post(c.url("/api/releases/r-1/delete"))
        .header("x-ferry-csrf", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let acts = c.fake.acts.lock().unwrap().clone();
    assert_eq!(acts.len(), 2);
    assert_eq!(acts[0].1, Action::Pause);
}

#[tokio::test]
async fn loopback_answers_only_to_loopback_hosts() {
    let c = start(|_| {}).await;
    let http = client();
    let rebound = http
        .get(c.url("/api/fleet"))
        .header("host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 421);
    let local = http
        .get(c.url("/api/fleet"))
        .header("host", format!("localhost:{}", c.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(local.status(), 200);
}

#[tokio::test]
async fn a_token_guards_everything_but_login_and_assets() {
    let token = ferry_console::generate_token();
    let t = token.clone();
    let c = start(move |cfg| cfg.token = Some(t)).await;
    let http = client();
    assert_eq!(
        http.get(c.url("/api/fleet")).send().await.unwrap().status(),
        401
    );
    assert_eq!(http.get(c.url("/")).send().await.unwrap().status(), 401);
    assert_eq!(
        http.get(c.url("/assets/console.css"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let bearer = http
        .get(c.url("/api/fleet"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    let wrong = http.get(c.url("/login?token=nope")).send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let login = http
        .get(c.url(&format!("/login?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let with_cookie = http
        .get(c.url("/"))
        .header("cookie", cookie.split(';').next().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(with_cookie.status(), 200);

    // Anything but loopback needs a token; a short token is refused.
    let open = ConsoleConfig::new("0.0.0.0:8080".parse().unwrap());
    assert!(open
        .validate()
        .unwrap_err()
        .to_string()
        .contains("--token-file"));
    let mut short = ConsoleConfig::new("0.0.0.0:8080".parse().unwrap());
    short.token = Some("short".into());
    assert!(short.validate().is_err());
}

#[tokio::test]
async fn live_updates_say_when_a_view_changes_and_are_bounded() {
    let c = start(|cfg| cfg.max_watchers = 1).await;
    let http = client();
    let resp = http
        .get(c.url("/api/watch?path=/api/releases/r-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    let mut next_event = async || loop {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(end) = seen.find("\n\n") {
            let ev: String = seen[..end].to_string();
            seen = seen[end + 2..].to_string();
            if ev.contains("event: change") {
                return ev;
            }
        }
    };
    let first = next_event().await;
    // The only slot is taken: a second live view is refused, the pages keep working.
    let second = http
        .get(c.url("/api/watch?path=/api/fleet"))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 503);
    *c.fake.state.lock().unwrap() = "halted".into();
    let changed = next_event().await;
    assert_ne!(
        first, changed,
        "a change in the view must produce a new event"
    );
    let bad = http
        .get(c.url("/api/watch?path=/etc/passwd"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}
