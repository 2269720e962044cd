//! Loading a cluster into the integration control plane over HTTP, as a scale test would: N
//! Services (every tenth a NodePort) and their EndpointSlices (10 endpoints each), created one
//! after the other by one kube-rs client. Prints the time of each thousand and the total, then
//! times a full list of each resource.
//!
//! Run: `cargo run --release -p kproxy-benches --example control_plane_load -- [N, default 20000]`

use std::sync::Arc;
use std::time::Instant;

use control_plane::api::App;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

fn service(i: usize) -> Service {
    let node_port = i.is_multiple_of(10);
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": "default"},
        "spec": {
            "type": if node_port { "NodePort" } else { "ClusterIP" },
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
        },
    }))
    .unwrap()
}

fn slice(i: usize) -> EndpointSlice {
    let endpoints: Vec<_> = (0..10)
        .map(|e| {
            json!({
                "addresses": [format!("10.{}.{}.{}", 64 + i / 25_000, (i / 100) % 250, (i % 100) * 2 + e / 5)],
                "conditions": {"ready": true},
                "nodeName": format!("node-{}", e % 3),
            })
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("svc-{i}-abcde"), "namespace": "default",
            "labels": {"kubernetes.io/service-name": format!("svc-{i}")},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .unwrap()
}

/// The size of the body of a plain HTTP/1.1 GET, read to the end.
fn raw_get(addr: std::net::SocketAddr, path: &str) -> usize {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    all.len()
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(20_000, |a| a.parse().expect("count"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // A /12 of cluster IPs: room for a million Services.
        let app = Arc::new(App::new(("10.96.0.0".parse().unwrap(), 1 << 20)));
        tokio::spawn(control_plane::serve_app(listener, Arc::clone(&app)));
        let client =
            kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap()))
                .unwrap();
        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
        let start = Instant::now();
        let mut lap = Instant::now();
        for i in 0..n {
            services
                .create(&PostParams::default(), &service(i))
                .await
                .unwrap_or_else(|e| panic!("service {i}: {e}"));
            slices
                .create(&PostParams::default(), &slice(i))
                .await
                .unwrap_or_else(|e| panic!("slice {i}: {e}"));
            if (i + 1) % 1000 == 0 {
                println!(
                    "{:>6} pairs: this thousand {:.2?}, total {:.2?}",
                    i + 1,
                    lap.elapsed(),
                    start.elapsed()
                );
                lap = Instant::now();
            }
        }
        println!(
            "{n} Services + {n} EndpointSlices in {:.2?}",
            start.elapsed()
        );
        for path in [
            "/api/v1/namespaces/default/services",
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
        ] {
            let t = Instant::now();
            let bytes = tokio::task::spawn_blocking(move || raw_get(addr, path))
                .await
                .unwrap();
            println!(
                "GET {path}: {:.1} MiB answered in {:.2?} (no client decoding)",
                bytes as f64 / (1 << 20) as f64,
                t.elapsed()
            );
        }
        let t = Instant::now();
        let listed = services.list(&ListParams::default()).await.unwrap();
        println!(
            "list {} Services (kube-rs, decoded): {:.2?}",
            listed.items.len(),
            t.elapsed()
        );
        let t = Instant::now();
        let listed = slices.list(&ListParams::default()).await.unwrap();
        println!(
            "list {} EndpointSlices (kube-rs, decoded): {:.2?}",
            listed.items.len(),
            t.elapsed()
        );
    });
}
