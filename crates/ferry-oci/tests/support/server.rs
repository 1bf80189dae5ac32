//! Runs an axum app on 127.0.0.1:0 in its own thread and runtime, so it keeps serving while a
//! test blocks on a child process (skopeo) or runs on a current-thread runtime.
//!
//! It must never outlive its owner: Drop signals shutdown and the thread ends with it.

use std::net::SocketAddr;

use axum::Router;
use tokio::sync::oneshot;

pub struct BackgroundServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl BackgroundServer {
    pub fn start(app: Router) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let serve = axum::serve(listener, app);
                // Stop at once when told; open keep-alive connections die with the runtime.
                tokio::select! {
                    _ = serve => {}
                    _ = rx => {}
                }
            });
            rt.shutdown_background();
        });
        BackgroundServer {
            addr,
            shutdown: Some(tx),
        }
    }

    /// `127.0.0.1:port`
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
