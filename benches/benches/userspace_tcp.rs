//! The userspace proxy's TCP throughput on loopback: a client sends 16 MiB to a sink directly,
//! through a proxy that splices (`backend_userspace::splice_bidirectional`), and through one
//! that copies through userspace buffers (`tokio::io::copy_bidirectional`), for comparison.
//!
//! Run: `cargo bench -p kproxy-benches --bench userspace_tcp`

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use backend_userspace::{connect_endpoint, splice_bidirectional, RetryPolicy, RoundRobin};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PAYLOAD: usize = 16 << 20;

/// Reads each connection to EOF, then closes it.
async fn sink() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while s.read(&mut buf).await.unwrap() > 0 {}
            });
        }
    });
    addr
}

/// A proxy in front of `target`, splicing or copying.
async fn proxy(target: SocketAddr, splice: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let mut rr = RoundRobin::new(None);
    rr.set_endpoints(vec![target]);
    let rr = std::sync::Arc::new(Mutex::new(rr));
    tokio::spawn(async move {
        loop {
            let (mut c, peer) = l.accept().await.unwrap();
            let rr = rr.clone();
            tokio::spawn(async move {
                let stats = proxy_core::proxy_port_metrics::PortStats::default();
                let (mut e, _) = connect_endpoint(&rr, peer.ip(), &RetryPolicy::default(), &stats)
                    .await
                    .unwrap();
                if splice {
                    splice_bidirectional(&c, &e, &stats).await.unwrap();
                } else {
                    tokio::io::copy_bidirectional(&mut c, &mut e).await.unwrap();
                }
            });
        }
    });
    addr
}

async fn send(to: SocketAddr, data: &[u8]) -> Duration {
    let start = Instant::now();
    let mut s = TcpStream::connect(to).await.unwrap();
    s.write_all(data).await.unwrap();
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (direct, spliced, copied) = rt.block_on(async {
        let target = sink().await;
        (
            target,
            proxy(target, true).await,
            proxy(target, false).await,
        )
    });
    let data = vec![0x5au8; PAYLOAD];
    let mut g = c.benchmark_group("userspace_tcp_16MiB");
    g.throughput(Throughput::Bytes(PAYLOAD as u64));
    g.sample_size(20);
    for (name, to) in [
        ("direct", direct),
        ("splice_proxy", spliced),
        ("copy_proxy", copied),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += send(to, &data).await;
                    }
                    total
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
