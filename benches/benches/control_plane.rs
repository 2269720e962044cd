//! The integration control plane under load: how fast it takes writes (in memory, durable, and
//! over HTTP), and how fast one burst of writes fans out to 50 HTTP watchers.
//!
//! Run: `cargo bench -p kproxy-benches --bench control_plane`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use control_plane::api::App;
use control_plane::store::Store;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams, WatchParams};
use serde_json::{json, Value};

const UPDATES: u64 = 1_000;

fn service(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": {"seq": "0"}},
        "spec": {"ports": [{"port": 80, "protocol": "TCP"}], "selector": {"app": name}},
    })
}

/// `count` updates of one Service, each a new resourceVersion and a watch event.
fn update_burst(store: &mut Store, count: u64) {
    let mut object = store.get("services", "default", "load").unwrap();
    object["metadata"]["resourceVersion"] = Value::Null;
    for seq in 0..count {
        object["metadata"]["labels"]["seq"] = Value::String(seq.to_string());
        black_box(
            store
                .update("services", "default", "load", object.clone())
                .unwrap(),
        );
    }
}

fn store_writes(c: &mut Criterion) {
    let mut group = c.benchmark_group("control_plane_store_write");
    group.sample_size(10);
    group.throughput(Throughput::Elements(UPDATES));
    let mut memory = Store::new(10_000);
    memory
        .create("services", "default", service("load"))
        .unwrap();
    group.bench_function(BenchmarkId::new("memory", UPDATES), |b| {
        b.iter(|| update_burst(&mut memory, UPDATES))
    });
    let dir = std::env::temp_dir().join(format!("kproxy-bench-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut durable = Store::open(10_000, &dir).unwrap();
    durable
        .create("services", "default", service("load"))
        .unwrap();
    // Every durable write is its own committed transaction: far fewer per iteration.
    group.throughput(Throughput::Elements(100));
    group.bench_function(BenchmarkId::new("durable", 100), |b| {
        b.iter(|| update_burst(&mut durable, 100))
    });
    group.finish();
    drop(durable);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A served control plane on a fresh loopback port, and a kube-rs client for it.
fn serve(rt: &tokio::runtime::Runtime) -> (Arc<App>, Api<Service>) {
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Arc::new(App::new(("10.96.0.0".parse().unwrap(), 1 << 16)));
        tokio::spawn(control_plane::serve_app(listener, Arc::clone(&app)));
        let client =
            kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap()))
                .unwrap();
        let api: Api<Service> = Api::namespaced(client, "default");
        let svc: Service = serde_json::from_value(service("load")).unwrap();
        api.create(&Default::default(), &svc).await.unwrap();
        (app, api)
    })
}

fn http_writes(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_app, api) = serve(&rt);
    let mut group = c.benchmark_group("control_plane_http_write");
    group.sample_size(10);
    group.throughput(Throughput::Elements(100));
    group.bench_function(BenchmarkId::new("merge_patch", 100), |b| {
        b.iter(|| {
            rt.block_on(async {
                for seq in 0..100u32 {
                    let patch = json!({"metadata": {"labels": {"seq": seq.to_string()}}});
                    api.patch("load", &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .unwrap();
                }
            })
        })
    });
    group.finish();
}

/// 50 watchers connected over HTTP; one burst of 1,000 store writes; done when every watcher has
/// received all 1,000 events. Throughput is events delivered (50,000 per iteration).
fn watch_fan_out(c: &mut Criterion) {
    const WATCHERS: u64 = 50;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (app, api) = serve(&rt);
    let mut group = c.benchmark_group("control_plane_watch_fan_out");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(WATCHERS * UPDATES));
    group.bench_function(
        BenchmarkId::new(format!("{WATCHERS}_watchers"), UPDATES),
        |b| {
            b.iter(|| {
                rt.block_on(async {
                    let from = app.store.lock().unwrap().version().to_string();
                    let mut watchers = Vec::new();
                    for _ in 0..WATCHERS {
                        let params = WatchParams::default().timeout(60);
                        let stream = api.watch(&params, &from).await.unwrap();
                        watchers.push(tokio::spawn(async move {
                            let mut stream = std::pin::pin!(stream);
                            let mut seen = 0;
                            while seen < UPDATES {
                                stream.try_next().await.unwrap().expect("event");
                                seen += 1;
                            }
                        }));
                    }
                    update_burst(&mut app.store.lock().unwrap(), UPDATES);
                    for w in watchers {
                        w.await.unwrap();
                    }
                })
            })
        },
    );
    group.finish();
}

/// Creating Services over HTTP into a control plane that already holds 20,000 (every tenth a
/// NodePort): the cluster-IP and node-port allocation and the EndpointSlice controller's work per
/// write, which must not grow with the Services stored. Each iteration creates 100 (half NodePort)
/// and deletes them again.
fn create_at_scale(c: &mut Criterion) {
    const STORED: usize = 20_000;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (app, api) = serve(&rt);
    {
        let mut store = app.store.lock().unwrap();
        for i in 0..STORED {
            let mut svc = service(&format!("stored-{i}"));
            svc["spec"]["clusterIP"] = json!(format!("10.96.{}.{}", 1 + i / 250, 1 + i % 250));
            if i % 10 == 0 {
                svc["spec"]["type"] = json!("NodePort");
                svc["spec"]["ports"][0]["nodePort"] = json!(30000 + (i / 10) as i64);
            }
            store.create("services", "default", svc).unwrap();
        }
    }
    let mut group = c.benchmark_group("control_plane_create_at_20k");
    group.sample_size(10);
    group.throughput(Throughput::Elements(100));
    group.bench_function(BenchmarkId::new("create_and_delete", 100), |b| {
        b.iter(|| {
            rt.block_on(async {
                for i in 0..100 {
                    let mut svc = service(&format!("new-{i}"));
                    if i % 2 == 0 {
                        svc["spec"]["type"] = json!("NodePort");
                    }
                    let svc: Service = serde_json::from_value(svc).unwrap();
                    api.create(&Default::default(), &svc).await.unwrap();
                }
                for i in 0..100 {
                    api.delete(&format!("new-{i}"), &Default::default())
                        .await
                        .unwrap();
                }
            })
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    store_writes,
    http_writes,
    watch_fan_out,
    create_at_scale
);
criterion_main!(benches);
