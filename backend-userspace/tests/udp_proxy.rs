//! The UDP path of the userspace proxy on real sockets (loopback): replies come back from the
//! proxy's address, clients are balanced across endpoints, idle sessions end and reopen.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backend_userspace::{RoundRobin, UdpProxy};
use tokio::net::UdpSocket;

/// An endpoint that answers each datagram with `name:` and the datagram.
async fn echo(name: &'static str) -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        loop {
            let (n, from) = s.recv_from(&mut buf).await.unwrap();
            let mut reply = format!("{name}:").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            s.send_to(&reply, from).await.unwrap();
        }
    });
    addr
}

async fn ask(client: &UdpSocket, proxy: SocketAddr, what: &[u8]) -> String {
    client.send_to(what, proxy).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    let (n, from) = tokio::time::timeout(Duration::from_secs(30), client.recv_from(&mut buf))
        .await
        .expect("a reply")
        .unwrap();
    assert_eq!(from, proxy, "replies come from the proxy's address");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

/// Waits (up to a generous deadline) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..600 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_balance_reply_from_the_proxy_and_end_when_idle() {
    let (a, b) = (echo("a").await, echo("b").await);
    let mut rr = RoundRobin::new(None);
    rr.set_endpoints(vec![a, b]);
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let proxy = Arc::new(UdpProxy::new(
        socket,
        Arc::new(Mutex::new(rr)),
        // long enough that a stalled machine does not end a session between two questions
        Duration::from_secs(5),
    ));
    let addr = proxy.local_addr().unwrap();
    tokio::spawn(Arc::clone(&proxy).run());

    let one = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let two = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(ask(&one, addr, b"x").await, "a:x");
    assert_eq!(
        ask(&two, addr, b"y").await,
        "b:y",
        "the next client gets the next endpoint"
    );
    // A session keeps its endpoint while traffic flows.
    assert_eq!(ask(&one, addr, b"z").await, "a:z");
    assert_eq!(proxy.sessions(), 2);

    // A large datagram passes whole.
    let big = vec![b'q'; 60_000];
    let reply = ask(&one, addr, &big).await;
    assert_eq!(reply.len(), 2 + big.len());

    eventually("idle sessions to end", || proxy.sessions() == 0).await;
    // A new datagram opens a new session (round-robin goes on: a, b, then a).
    assert_eq!(ask(&two, addr, b"w").await, "a:w");
    assert_eq!(proxy.sessions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_endpoints_datagrams_are_dropped_and_the_proxy_keeps_serving() {
    let rr = Arc::new(Mutex::new(RoundRobin::new(None)));
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let proxy = Arc::new(UdpProxy::new(
        socket,
        Arc::clone(&rr),
        Duration::from_secs(30),
    ));
    let addr = proxy.local_addr().unwrap();
    tokio::spawn(Arc::clone(&proxy).run());

    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.send_to(b"lost", addr).await.unwrap();
    eventually("the datagram to be dropped", || {
        proxy.dropped_datagrams() == 1
    })
    .await;
    assert_eq!(proxy.sessions(), 0);
    // Endpoints arrive: the same client is served (nothing was left half-open).
    let a = echo("a").await;
    rr.lock().unwrap().set_endpoints(vec![a]);
    assert_eq!(ask(&client, addr, b"found").await, "a:found");
}
