//! `Listeners` on real sockets (loopback): Service ports get listeners from the port range, a port
//! someone else holds fails that Service port alone, endpoint changes leave established
//! connections working, removed Service ports close their listener.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use backend_userspace::{ListenerSettings, ListenerSpec, Listeners, RetryPolicy, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP endpoint that greets each connection with its one-byte name, then echoes.
async fn named_echo(name: u8) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                s.write_all(&[name]).await.unwrap();
                let mut buf = [0u8; 1024];
                loop {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    s.write_all(&buf[..n]).await.unwrap();
                }
            });
        }
    });
    addr
}

/// Connects to the proxy port, returns the stream and the endpoint's name.
async fn connect(port: u16) -> (TcpStream, u8) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut name = [0u8; 1];
    s.read_exact(&mut name).await.unwrap();
    (s, name[0])
}

async fn echoes(s: &mut TcpStream, what: &[u8]) {
    s.write_all(what).await.unwrap();
    let mut back = vec![0u8; what.len()];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, what);
}

fn tcp(endpoints: Vec<SocketAddr>) -> ListenerSpec {
    ListenerSpec {
        transport: Transport::Tcp,
        endpoints,
        affinity: None,
    }
}

/// A listener on some port (the squatter) whose next port is free now.
fn squatted_pair() -> (std::net::TcpListener, u16, u16) {
    for _ in 0..100 {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return (a, p, p + 1);
        }
    }
    panic!("no free port next to an ephemeral one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_follow_the_desired_service_ports() {
    let (e1, e2) = (named_echo(b'1').await, named_echo(b'2').await);
    // Someone else holds the range's first port.
    let (squatter, low, high) = squatted_pair();
    let mut listeners = Listeners::new(
        ListenerSettings {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port_range: Some(low..=high),
            udp_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        },
        tokio::runtime::Handle::current(),
    );

    let report = listeners.apply([
        ("ns/web:http", tcp(vec![e1])),
        ("ns/api:http", tcp(vec![e2])),
    ]);
    assert_eq!(report.opened.len(), 1, "{report:?}");
    assert_eq!(
        report.failed.len(),
        1,
        "the range has one free port: {report:?}"
    );
    let (served, port) = report.opened[0];
    assert_eq!(port, high, "the squatted port is skipped");
    let expected_name = if served == "ns/api:http" { b'2' } else { b'1' };
    let (mut long_lived, name) = connect(port).await;
    assert_eq!(name, expected_name);
    echoes(&mut long_lived, b"before").await;

    // The endpoints change: the listener stays, the old connection keeps working, new ones go
    // to the new endpoint.
    let other = if served == "ns/api:http" { e1 } else { e2 };
    let report = listeners.apply([(served, tcp(vec![other]))]);
    assert_eq!(report.updated, vec![served]);
    assert!(
        report.closed.is_empty(),
        "the one that failed had no listener to close: {report:?}"
    );
    assert_eq!(listeners.port_of(&served), Some(port));
    echoes(&mut long_lived, b"during").await;
    let (_fresh, name) = connect(port).await;
    assert_ne!(
        name, expected_name,
        "new connections go to the new endpoint"
    );

    // The Service port goes: its listener closes, the established connection stays.
    drop(squatter);
    let report = listeners.apply(std::iter::empty());
    assert_eq!(report.closed, vec![served]);
    assert!(listeners.is_empty());
    let mut refused = false;
    for _ in 0..600 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "the listener was closed");
    echoes(&mut long_lived, b"after").await;
}
