//! Clients that try to exhaust the server: abandoned watches of a large object, headers sent a
//! byte at a time, idle connections, more connections than the cap. The server keeps serving.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use control_plane::connections::Limits;

async fn start(limits: Limits) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Arc::new(control_plane::api::App::new((
        "10.96.0.0".parse().unwrap(),
        1 << 16,
    )));
    tokio::spawn(control_plane::serve_app_with(listener, app, limits));
    addr
}

fn limits() -> Limits {
    Limits {
        max_connections: 400,
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(2),
    }
}

/// One request on a fresh connection; (status, body).
///
/// A server over its connection cap answers 429 and closes without reading the request, so
/// writing it may fail (broken pipe) on a busy machine: the answer is read all the same, and a
/// connection that yields none reads as status 0.
fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let _ = write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (
        code,
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    )
}

/// Waits until the server closes `s` (a read returns 0 or fails); false after `deadline`.
fn closed_by_server(s: &mut TcpStream, deadline: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let until = Instant::now() + deadline;
    let mut buf = [0u8; 1024];
    while Instant::now() < until {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(_) => return true,
        }
    }
    false
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// 300 watches of a store holding a 1 MB object, opened and never read: they share the object's
/// encoded line instead of holding a copy each (before: ~1 MB of memory per watch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_watches_share_what_they_send() {
    let addr = start(limits()).await;
    tokio::task::spawn_blocking(move || {
        // A 1 MB field the server keeps as sent (annotations are capped at 256 KiB).
        let svc = format!(
            r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"big"}},"spec":{{"ports":[{{"port":80}}],"externalName":"{}"}}}}"#,
            "y".repeat(1024 * 1024)
        );
        let (code, body) = request(addr, "POST", "/api/v1/namespaces/default/services", &svc);
        assert_eq!(code, 201, "{}", &body[..body.len().min(300)]);
        let before = rss_kib();
        let mut watches = Vec::new();
        for _ in 0..300 {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(s, "GET /api/v1/services?watch=1 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            watches.push(s);
        }
        // Let the server start every watch (each reads the request and begins its answer).
        std::thread::sleep(Duration::from_secs(2));
        let grown_mib = rss_kib().saturating_sub(before) / 1024;
        eprintln!("300 abandoned watches of a 1 MB object: RSS grew {grown_mib} MiB");
        assert!(grown_mib < 150, "300 abandoned watches of a 1 MB object took {grown_mib} MiB");
        drop(watches);
        // Still serving.
        assert_eq!(request(addr, "GET", "/api/v1/namespaces/default/services/big", "").0, 200);
    })
    .await
    .unwrap();
}

/// Headers trickled in too slowly, and a connection that sends nothing at all, are closed by the
/// server; normal clients are served all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed() {
    let addr = start(limits()).await;
    tokio::task::spawn_blocking(move || {
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET /api/v1/services HTTP/1.1\r\nHo")
            .unwrap();
        let mut idle = TcpStream::connect(addr).unwrap();
        assert_eq!(request(addr, "GET", "/api/v1/services", "").0, 200);
        assert!(
            closed_by_server(&mut slow, Duration::from_secs(60)),
            "slow headers"
        );
        assert!(
            closed_by_server(&mut idle, Duration::from_secs(60)),
            "idle connection"
        );
    })
    .await
    .unwrap();
}

/// Over the connection cap a client gets a 429 `Status` at once; when connections close, new
/// ones are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_answers_429() {
    let addr = start(Limits {
        max_connections: 10,
        header_read_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(60),
    })
    .await;
    tokio::task::spawn_blocking(move || {
        let held: Vec<TcpStream> = (0..10).map(|_| TcpStream::connect(addr).unwrap()).collect();
        // The server accepts in order: give it the ten before the eleventh.
        let mut answer = (0, String::new());
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            answer = request(addr, "GET", "/api/v1/services", "");
            if answer.0 == 429 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(answer.0, 429, "{}", answer.1);
        assert!(answer.1.contains("\"kind\":\"Status\""), "{}", answer.1);
        drop(held);
        let until = Instant::now() + Duration::from_secs(60);
        while request(addr, "GET", "/api/v1/services", "").0 != 200 {
            assert!(Instant::now() < until, "never served again");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
}
