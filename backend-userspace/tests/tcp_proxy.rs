//! The TCP path of the userspace proxy on real sockets (loopback): a client's bytes reach the
//! endpoint and come back intact through `splice(2)`, half-closes pass through, and a dead
//! endpoint is skipped.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use backend_userspace::{
    connect_endpoint, splice_bidirectional, ConnectError, RetryPolicy, RoundRobin, Transferred,
};
use proxy_core::proxy_port_metrics::PortStats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// An endpoint that reads until the client half-closes, then sends everything back and closes.
async fn echo_after_eof() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                s.write_all(&got).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    addr
}

/// An address nothing listens on (connects are refused). The socket stays bound, without
/// listening, so no other test's listener can take the port while it is in use.
fn refusing() -> (tokio::net::TcpSocket, SocketAddr) {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = s.local_addr().unwrap();
    (s, addr)
}

/// A one-connection proxy in front of `balancer`, counting into `stats`; returns its address and
/// the bytes it carried.
async fn proxy_once(
    balancer: Mutex<RoundRobin>,
    stats: PortStats,
) -> (
    SocketAddr,
    tokio::task::JoinHandle<(SocketAddr, Transferred)>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (client, peer) = listener.accept().await.unwrap();
        let (endpoint, chosen) =
            connect_endpoint(&balancer, peer.ip(), &RetryPolicy::default(), &stats)
                .await
                .unwrap();
        let carried = splice_bidirectional(&client, &endpoint, &stats)
            .await
            .unwrap();
        (chosen, carried)
    });
    (addr, task)
}

fn balancer(endpoints: Vec<SocketAddr>) -> Mutex<RoundRobin> {
    let mut rr = RoundRobin::new(None);
    rr.set_endpoints(endpoints);
    Mutex::new(rr)
}

/// 1 MiB (not a multiple of the 64 KiB splice chunk) with a pattern a misordered copy would break.
fn payload() -> Vec<u8> {
    (0..(1 << 20) + 4099u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mebibyte_goes_through_and_back_after_a_half_close() {
    let echo = echo_after_eof().await;
    let stats = PortStats::default();
    let (proxy, task) = proxy_once(balancer(vec![echo]), stats.clone()).await;
    let data = payload();

    let mut client = TcpStream::connect(proxy).await.unwrap();
    let (mut rx, mut tx) = client.split();
    let send = async {
        tx.write_all(&data).await.unwrap();
        tx.shutdown().await.unwrap(); // half-close: the endpoint only answers after EOF
    };
    let mut back = Vec::new();
    let receive = rx.read_to_end(&mut back);
    let ((), got) = tokio::join!(send, receive);
    got.unwrap();

    assert!(back == data, "the echo differs ({} bytes back)", back.len());
    let (chosen, carried) = task.await.unwrap();
    assert_eq!(chosen, echo);
    assert_eq!(
        carried,
        Transferred {
            client_to_endpoint: data.len() as u64,
            endpoint_to_client: data.len() as u64,
        }
    );
    // The metric counters saw every byte, as they passed.
    assert_eq!(stats.bytes_to_endpoint.get(), data.len() as u64);
    assert_eq!(stats.bytes_to_client.get(), data.len() as u64);
    assert_eq!(stats.failed_connects.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_endpoint_is_skipped_and_the_client_sticks_to_the_next() {
    let (_held, dead) = refusing();
    let echo = echo_after_eof().await;
    let mut rr = RoundRobin::new(Some(Duration::from_secs(60)));
    rr.set_endpoints(vec![dead, echo]); // the rotation starts at the dead one
    let rr = Mutex::new(rr);

    let stats = PortStats::default();
    let (stream, chosen) = connect_endpoint(&rr, CLIENT, &RetryPolicy::default(), &stats)
        .await
        .unwrap();
    assert_eq!(chosen, echo);
    assert_eq!(
        stats.failed_connects.get(),
        1,
        "the refused attempt is counted"
    );
    drop(stream);
    // Affinity now points at the endpoint that answered.
    let again = rr
        .lock()
        .unwrap()
        .next_endpoint(CLIENT, std::time::Instant::now(), false);
    assert_eq!(again, Some(echo));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_attempt_fails_the_error_names_the_last_endpoint() {
    let (held, dead): (Vec<_>, Vec<_>) = [refusing(), refusing()].into_iter().unzip();
    let policy = RetryPolicy {
        attempt_timeouts: vec![Duration::from_secs(5); 3],
    };
    let stats = PortStats::default();
    let err = connect_endpoint(&balancer(dead.clone()), CLIENT, &policy, &stats)
        .await
        .unwrap_err();
    assert_eq!(stats.failed_connects.get(), 3);
    match err {
        ConnectError::AllFailed {
            attempts,
            last,
            error,
        } => {
            assert_eq!(attempts, 3, "bounded by the policy");
            assert_eq!(last, dead[0], "the third attempt wraps round to the first");
            assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("unexpected {other}"),
    }
    let none = connect_endpoint(&balancer(Vec::new()), CLIENT, &policy, &stats).await;
    assert!(matches!(none, Err(ConnectError::NoEndpoints)));
    let no_attempts = connect_endpoint(
        &balancer(dead.clone()),
        CLIENT,
        &RetryPolicy {
            attempt_timeouts: Vec::new(),
        },
        &stats,
    )
    .await;
    assert!(matches!(no_attempts, Err(ConnectError::NoAttempts)));
    drop(held);
}
