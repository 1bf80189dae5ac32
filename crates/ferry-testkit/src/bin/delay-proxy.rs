//! A TCP proxy that makes loopback look like a long link, for `scripts/bench-wan.sh` (this
//! kernel has no netem).
//!
//! Every byte is delivered `delay` after the proxy read it (one way), in each direction, and
//! each connection may have at most `window` bytes per direction in flight: credit for a byte
//! comes back one more `delay` after it was delivered (the acknowledgement's trip), so one
//! connection moves at most `window / (2 × delay)`, as a TCP connection with that window does
//! over that round trip. A new connection costs one round trip before its first byte moves
//! (the handshake). It never changes, drops or reorders bytes, and never buffers more than
//! `window` (plus one read) per direction per connection.
//!
//!     delay-proxy LISTEN_ADDR UPSTREAM_ADDR ONE_WAY_DELAY_MS WINDOW_BYTES
//!
//! It prints `ready` once listening, and runs until killed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The most one read takes from a socket.
const READ_CHUNK: usize = 64 * 1024;

struct Link {
    upstream: String,
    delay: Duration,
    window: usize,
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: delay-proxy LISTEN_ADDR UPSTREAM_ADDR ONE_WAY_DELAY_MS WINDOW_BYTES");
        std::process::exit(2);
    }
    let (Ok(delay_ms), Ok(window)) = (args[3].parse::<u64>(), args[4].parse::<usize>()) else {
        eprintln!("delay-proxy: the delay (ms) and the window (bytes) must be numbers");
        std::process::exit(2);
    };
    let link = Arc::new(Link {
        upstream: args[2].clone(),
        delay: Duration::from_millis(delay_ms),
        window: window.max(READ_CHUNK),
    });
    let listener = match TcpListener::bind(&args[1]).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("delay-proxy: cannot listen on {}: {e}", args[1]);
            std::process::exit(1);
        }
    };
    println!("ready");
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let link = link.clone();
        tokio::spawn(async move {
            // The handshake's round trip.
            tokio::time::sleep(2 * link.delay).await;
            let Ok(server) = TcpStream::connect(&link.upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::join!(pipe(cr, sw, &link), pipe(sr, cw, &link));
        });
    }
}

/// Moves bytes one way with the link's delay and window.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, link: &Link) {
    let credit = Arc::new(Semaphore::new(link.window));
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>, OwnedSemaphorePermit)>();
    let delay = link.delay;
    let reader = async move {
        loop {
            let mut buf = vec![0u8; READ_CHUNK];
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.truncate(n);
            let Ok(permit) = credit
                .clone()
                .acquire_many_owned(u32::try_from(n).unwrap_or(u32::MAX))
                .await
            else {
                break;
            };
            if tx.send((Instant::now() + delay, buf, permit)).is_err() {
                break;
            }
        }
    };
    let writer = async move {
        // Credit returns in delivery order, one delay after each delivery.
        let mut acks: VecDeque<(Instant, OwnedSemaphorePermit)> = VecDeque::new();
        loop {
            let next_ack = acks.front().map(|(t, _)| *t);
            tokio::select! {
                _ = async { tokio::time::sleep_until(next_ack.unwrap_or_else(Instant::now)).await }, if next_ack.is_some() => {
                    acks.pop_front();
                }
                item = rx.recv() => {
                    let Some((at, buf, permit)) = item else { break };
                    tokio::time::sleep_until(at).await;
                    while acks.front().is_some_and(|(t, _)| *t <= Instant::now()) {
                        acks.pop_front();
                    }
                    if to.write_all(&buf).await.is_err() {
                        break;
                    }
                    acks.push_back((Instant::now() + delay, permit));
                }
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
