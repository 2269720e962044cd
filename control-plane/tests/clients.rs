//! Real clients against the control plane: kubectl (create, apply twice, get, delete, get -w) and a
//! kube-rs watcher (list, then watch).

use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::watcher::{self, Event};
use kube::Api;

async fn start() -> (std::net::SocketAddr, std::path::PathBuf) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(control_plane::serve(
        listener,
        ("10.96.0.0".parse().unwrap(), 1 << 16),
    ));
    let dir =
        std::env::temp_dir().join(format!("kproxy-cp-{}-{}", std::process::id(), addr.port()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, control_plane::kubeconfig(addr)).unwrap();
    (addr, kubeconfig)
}

fn kubectl(
    kubeconfig: &std::path::Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("kubectl: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default, labels: {app: web}}\nspec:\n  selector: {app: web}\n  ports: [{name: http, port: 80}]\n";

/// Whether kubectl is absent (`.ci/run` installs it; a bare developer machine may not have it).
fn kubectl_missing() -> bool {
    let missing = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_err();
    if missing {
        eprintln!("skipping: kubectl not installed");
    }
    missing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_apply_get_delete() {
    if kubectl_missing() {
        return;
    }
    let (_, kc) = start().await;
    tokio::task::spawn_blocking(move || {
        let out = kubectl(&kc, &["create", "-f", "-"], Some(SVC)).unwrap();
        assert!(out.contains("service/web created"), "{out}");
        let err = kubectl(&kc, &["create", "-f", "-"], Some(SVC)).unwrap_err();
        assert!(err.contains("already exists"), "{err}");
        let json: serde_json::Value = serde_json::from_str(
            &kubectl(&kc, &["get", "svc", "web", "-o", "json"], None).unwrap(),
        )
        .unwrap();
        let ip = json["spec"]["clusterIP"].as_str().unwrap().to_owned();
        assert!(ip.starts_with("10.96."), "a cluster IP was allocated: {ip}");
        // apply twice: the second is a patch
        kubectl(&kc, &["apply", "-f", "-"], Some(SVC)).unwrap();
        let changed = SVC.replace("port: 80", "port: 8080");
        let out = kubectl(&kc, &["apply", "-f", "-"], Some(&changed)).unwrap();
        assert!(out.contains("configured"), "{out}");
        let json: serde_json::Value = serde_json::from_str(
            &kubectl(&kc, &["get", "svc", "web", "-o", "json"], None).unwrap(),
        )
        .unwrap();
        assert_eq!(json["spec"]["ports"][0]["port"], 8080);
        assert_eq!(
            json["spec"]["clusterIP"].as_str().unwrap(),
            ip,
            "allocation kept"
        );
        // kubectl patch (strategic merge by default for built-in types)
        kubectl(
            &kc,
            &[
                "patch",
                "svc",
                "web",
                "-p",
                r#"{"metadata":{"labels":{"tier":"front"}}}"#,
            ],
            None,
        )
        .unwrap();
        let json: serde_json::Value = serde_json::from_str(
            &kubectl(&kc, &["get", "svc", "web", "-o", "json"], None).unwrap(),
        )
        .unwrap();
        assert_eq!(json["metadata"]["labels"]["tier"], "front");
        assert_eq!(json["metadata"]["labels"]["app"], "web");
        // a label selector
        let out = kubectl(&kc, &["get", "svc", "-l", "tier=front", "-o", "name"], None).unwrap();
        assert_eq!(out.trim(), "service/web");
        kubectl(&kc, &["delete", "svc", "web"], None).unwrap();
        let err = kubectl(&kc, &["get", "svc", "web"], None).unwrap_err();
        assert!(
            err.contains("NotFound") || err.contains("not found"),
            "{err}"
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_watcher_lists_then_watches() {
    let (addr, _) = start().await;
    let client =
        kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap()))
            .unwrap();
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "a", "namespace": "default"},
        "spec": {"ports": [{"port": 80}]},
    }))
    .unwrap();
    api.create(&Default::default(), &svc).await.unwrap();
    let mut stream = std::pin::pin!(watcher::watcher(
        Api::<Service>::all(client),
        watcher::Config::default()
    ));
    let mut seen_init = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("watch events")
            .unwrap()
            .unwrap();
        match ev {
            Event::InitApply(s) => assert_eq!(s.metadata.name.as_deref(), Some("a")),
            Event::InitDone => {
                seen_init = true;
                let mut b = svc.clone();
                b.metadata.name = Some("b".into());
                api.create(&Default::default(), &b).await.unwrap();
            }
            Event::Apply(s) => {
                assert!(seen_init);
                assert_eq!(s.metadata.name.as_deref(), Some("b"));
                break;
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_sees_changes() {
    if kubectl_missing() {
        return;
    }
    let (_, kc) = start().await;
    tokio::task::spawn_blocking(move || {
        let mut watch = Command::new("kubectl")
            .args(["get", "svc", "-w", "-o", "name", "--request-timeout=20s"])
            .env("KUBECONFIG", &kc)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(700));
        kubectl(&kc, &["create", "-f", "-"], Some(SVC)).unwrap();
        let mut out = watch.stdout.take().unwrap();
        let mut buf = [0u8; 256];
        let mut text = String::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        use std::io::Read;
        while !text.contains("service/web") && std::time::Instant::now() < deadline {
            let n = out.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        let _ = watch.kill();
        let _ = watch.wait();
        assert!(
            text.contains("service/web"),
            "kubectl get -w printed {text:?}"
        );
    })
    .await
    .unwrap();
}

#[test]
fn watch_from_a_too_old_version_gets_410_and_kube_rs_relists() {
    use std::sync::Arc;
    // The server runs on its own runtime so the test can cut every connection (drop the runtime)
    // and bring it back on the same port with the history gone.
    let app = Arc::new(control_plane::api::App::with_store(
        control_plane::store::Store::new(2),
        ("10.96.0.0".parse().unwrap(), 1 << 16),
    ));
    let serve = |addr: &str| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let addr = addr.to_owned();
        let listener = rt.block_on(async move {
            for _ in 0..50 {
                if let Ok(l) = tokio::net::TcpListener::bind(&addr).await {
                    return l;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("cannot bind {addr}");
        });
        let bound = listener.local_addr().unwrap();
        rt.spawn(control_plane::serve_app(listener, Arc::clone(&app)));
        (rt, bound)
    };
    let (server, addr) = serve("127.0.0.1:0");
    for i in 0..5 {
        app.store
            .lock()
            .unwrap()
            .create(
                "services",
                "default",
                serde_json::json!({"metadata": {"name": format!("s{i}")}}),
            )
            .unwrap();
    }
    // A raw watch from an old version: an in-stream ERROR with code 410.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /api/v1/services?watch=true&resourceVersion=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(
        body.contains("\"type\":\"ERROR\"") && body.contains("410"),
        "{body}"
    );

    // kube-rs: list, watch; then the server goes away and comes back without history: the
    // resumed watch is told 410 and the watcher re-lists, seeing what was created meanwhile.
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<String>>();
    client_rt.spawn(async move {
        let client =
            kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap()))
                .unwrap();
        let mut stream = std::pin::pin!(watcher::watcher(
            Api::<Service>::all(client),
            watcher::Config::default()
        ));
        let mut names = Vec::new();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(Event::Init) => names.clear(),
                Ok(Event::InitApply(s)) => names.push(s.metadata.name.unwrap_or_default()),
                Ok(Event::InitDone) if tx.send(names.clone()).is_err() => return,
                _ => {}
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(first.len(), 5);
    std::thread::sleep(Duration::from_millis(300)); // the watch is open
    server.shutdown_background();
    {
        let mut store = app.store.lock().unwrap();
        store.forget_history();
        // More changes than the history (2) keeps: the watcher's version is no longer covered.
        for name in ["late", "later", "latest"] {
            store
                .create(
                    "services",
                    "default",
                    serde_json::json!({"metadata": {"name": name}}),
                )
                .unwrap();
        }
    }
    let (_server, again) = serve(&addr.to_string());
    assert_eq!(again, addr);
    let second = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a re-list after 410");
    assert!(
        second.contains(&"latest".to_owned()) && second.len() == 8,
        "{second:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpointslice_controller_follows_a_pod_ready_terminating_and_deleted() {
    let (addr, _) = start().await;
    let client =
        kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap()))
            .unwrap();
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    })).unwrap();
    svcs.create(&Default::default(), &svc).await.unwrap();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "default");
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "x"}], "nodeName": "n1"},
        "status": {"podIP": "10.1.2.3", "conditions": [{"type": "Ready", "status": "True"}]},
    })).unwrap();
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(client, "default");
    // Polls the slices until `want` holds for the pod's endpoint (None: no endpoint), and returns
    // how long that took. Reported, not asserted as a timing: the API round trips dominate.
    let wait_for = |want: Option<(bool, bool)>| {
        let slices = slices.clone();
        async move {
            let started = std::time::Instant::now();
            loop {
                let list = slices.list(&Default::default()).await.unwrap();
                let state = list
                    .items
                    .iter()
                    .flat_map(|s| s.endpoints.iter().flatten())
                    .find(|e| e.addresses == ["10.1.2.3"])
                    .map(|e| {
                        let c = e.conditions.clone().unwrap_or_default();
                        (c.ready == Some(true), c.terminating == Some(true))
                    });
                if state == want {
                    return started.elapsed();
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "slice never reached {want:?}; last {state:?}"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    pods.create(&Default::default(), &pod).await.unwrap();
    let ready = wait_for(Some((true, false))).await;
    // Deleted with a grace period: terminating, no longer ready, still listed.
    let graceful = kube::api::DeleteParams {
        grace_period_seconds: Some(30),
        ..Default::default()
    };
    pods.delete("p", &graceful).await.unwrap();
    let terminating = wait_for(Some((false, true))).await;
    // Gone for good: the endpoint leaves the slice.
    pods.delete("p", &kube::api::DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let removed = wait_for(None).await;
    eprintln!(
        "pod ready -> slice {ready:?}; deleted -> terminating {terminating:?}; removed {removed:?}"
    );
}

/// The default ServiceCIDR (`kubernetes`, the service range) is served under
/// networking.k8s.io/v1 as a real API server serves it, and kube-rs lists and creates them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_cidrs_are_served_with_the_default_one() {
    use k8s_openapi::api::networking::v1::{ServiceCIDR, ServiceCIDRSpec};
    let (_, kc) = start().await;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kc).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let api: Api<ServiceCIDR> = Api::all(client);
    let list = api.list(&Default::default()).await.unwrap();
    let names: Vec<_> = list
        .items
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["kubernetes"]);
    assert_eq!(
        list.items[0].spec.as_ref().unwrap().cidrs.as_deref(),
        Some(&["10.96.0.0/16".to_owned()][..])
    );
    let extra = ServiceCIDR {
        metadata: kube::api::ObjectMeta {
            name: Some("extra".into()),
            ..Default::default()
        },
        spec: Some(ServiceCIDRSpec {
            cidrs: Some(vec!["10.97.0.0/16".into()]),
        }),
        status: None,
    };
    api.create(&Default::default(), &extra).await.unwrap();
    assert_eq!(api.list(&Default::default()).await.unwrap().items.len(), 2);
}
