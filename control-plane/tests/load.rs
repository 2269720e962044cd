//! Load: 50 concurrent watchers (kube-rs clients over HTTP) and a writer doing 1,000 updates;
//! every watcher sees every update, in order. Run once with the default fan-out buffer and once
//! with a tiny one, so watchers fall behind the live channel and must catch up from the history.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams, WatchEvent, WatchParams};

const WATCHERS: usize = 50;
const UPDATES: u32 = 1_000;

/// How the writer writes.
#[derive(Clone, Copy)]
enum Writer {
    /// Merge patches over HTTP, one at a time (a real client).
    Http,
    /// Straight into the store in one burst, far faster than 50 HTTP watchers drain, so their
    /// live channel overflows and they must catch up from the history.
    Burst,
}

async fn fan_out(store: control_plane::store::Store, writer: Writer) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Arc::new(control_plane::api::App::with_store(
        store,
        ("10.96.0.0".parse().unwrap(), 1 << 16),
    ));
    tokio::spawn(control_plane::serve_app(listener, Arc::clone(&app)));
    let client =
        kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap()))
            .unwrap();
    let api: Api<Service> = Api::namespaced(client, "default");
    let svc: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "load", "namespace": "default"},
        "spec": {"ports": [{"port": 80}]},
    }))
    .unwrap();
    let created = api.create(&Default::default(), &svc).await.unwrap();
    let from = created.metadata.resource_version.clone().unwrap();

    // Every watcher is connected (subscribed) before the first write.
    let mut streams = Vec::new();
    for _ in 0..WATCHERS {
        let params = WatchParams::default().timeout(120);
        streams.push(api.watch(&params, &from).await.unwrap().boxed());
    }
    let watchers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let mut seen: Vec<(u32, u64)> = Vec::with_capacity(UPDATES as usize);
                while let Some(event) = stream.try_next().await.unwrap() {
                    // Bookmarks come when the server has been quiet for a while (a busy machine
                    // makes the run slower, not wrong): they carry no update, so skip them.
                    let s = match event {
                        WatchEvent::Modified(s) => s,
                        WatchEvent::Bookmark(_) => continue,
                        other => panic!("unexpected event {other:?}"),
                    };
                    let seq: u32 = s.metadata.labels.as_ref().unwrap()["seq"].parse().unwrap();
                    let rv: u64 = s.metadata.resource_version.unwrap().parse().unwrap();
                    seen.push((seq, rv));
                    if seq == UPDATES - 1 {
                        break;
                    }
                }
                seen
            })
        })
        .collect();

    match writer {
        Writer::Http => {
            for seq in 0..UPDATES {
                let patch = serde_json::json!({"metadata": {"labels": {"seq": seq.to_string()}}});
                api.patch("load", &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .unwrap();
            }
        }
        Writer::Burst => {
            let mut object = serde_json::to_value(&created).unwrap();
            object["metadata"]["resourceVersion"] = serde_json::Value::Null;
            let mut store = app.store.lock().unwrap();
            for seq in 0..UPDATES {
                object["metadata"]["labels"] = serde_json::json!({"seq": seq.to_string()});
                store
                    .update("services", "default", "load", object.clone())
                    .unwrap();
            }
        }
    }

    let expected: Vec<u32> = (0..UPDATES).collect();
    for watcher in watchers {
        let seen = tokio::time::timeout(Duration::from_secs(60), watcher)
            .await
            .expect("watcher finished")
            .unwrap();
        let seqs: Vec<u32> = seen.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, expected, "every update, in order");
        assert!(
            seen.windows(2).all(|w| w[0].1 < w[1].1),
            "resourceVersions strictly increase"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_watchers_see_every_update_in_order() {
    fan_out(control_plane::store::Store::new(10_000), Writer::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_behind_a_tiny_fanout_buffer_catch_up_from_history() {
    fan_out(
        control_plane::store::Store::with_fanout_capacity(10_000, 4),
        Writer::Burst,
    )
    .await;
}
