//! Serving connections with limits, so clients cannot exhaust the server: a cap on open
//! connections (over it, a 429 `Status` and the connection is closed), a deadline for a request's
//! headers (a client that sends them a byte at a time is cut off), and an idle timeout for
//! keep-alive connections that carry no request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// What one client may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open connections at most; more are answered 429 and closed.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers once it has started.
    pub header_read_timeout: Duration,
    /// How long a connection may stay open with no request in progress.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
        }
    }
}

/// The answer to a connection over the cap.
const TOO_MANY: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 139\r\n\r\n{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"too many connections\",\"reason\":\"TooManyRequests\",\"code\":429}";

/// Accepts connections on `listener` and serves `router` on each, within `limits`, until the
/// future is dropped.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: wait a little instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = stream.write_all(TOO_MANY).await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        let router = router.clone();
        tokio::spawn(async move {
            serve_connection(stream, router, limits).await;
            drop(permit);
        });
    }
}

/// Whether a connection is busy, and since when it has not been.
struct Activity {
    in_flight: AtomicUsize,
    since: Mutex<Instant>,
}

async fn serve_connection(stream: TcpStream, router: Router, limits: Limits) {
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        since: Mutex::new(Instant::now()),
    });
    let tracked = Arc::clone(&activity);
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let router = router.clone();
            let activity = Arc::clone(&tracked);
            activity.in_flight.fetch_add(1, Ordering::SeqCst);
            async move {
                let response = router.oneshot(request.map(axum::body::Body::new)).await;
                activity.in_flight.fetch_sub(1, Ordering::SeqCst);
                *activity.since.lock().expect("activity lock") = Instant::now();
                response
            }
        });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut tick = tokio::time::interval(limits.idle_timeout / 4);
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            _ = tick.tick() => {
                let idle = activity.in_flight.load(Ordering::SeqCst) == 0
                    && activity.since.lock().expect("activity lock").elapsed() >= limits.idle_timeout;
                if idle {
                    // Finishes a response still streaming (a watch), then closes.
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
