//! kproxy against the project's control plane, driven by the real kubectl, on the datapath: a
//! Service and Pods applied with kubectl become working rules, readiness changes move traffic, a
//! terminating Pod serves until it is gone, a deleted Service's rules go away. Needs root and
//! kubectl; skips elsewhere.
//!
//! Pods are reported through the API like a kubelet would (status subresource); the control
//! plane's EndpointSlice controller turns them into slices.

mod testbed;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testbed::{wait_for, Bed, Daemon};

const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  clusterIP: 10.96.0.10\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: 8080}]\n";

#[test]
fn kubectl_apply_becomes_rules_and_delete_removes_them() {
    let have_kubectl = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok();
    if !have_kubectl {
        eprintln!("skipping: kubectl not installed");
        return;
    }
    let Some(bed) = Bed::new(
        "integration",
        &[("pod-a", "10.244.1.11"), ("pod-b", "10.244.1.12")],
    ) else {
        return;
    };
    // The control plane, listening on the node namespace's loopback, on its own runtime so the test
    // can stop it (drop the runtime: every connection dies) and start it again with the same objects.
    let app = Arc::new(control_plane::api::App::new((
        "10.96.0.0".parse().unwrap(),
        1 << 16,
    )));
    let start_api = |addr| bed.start_control_plane(Arc::clone(&app), addr);
    let (api, addr) = start_api(None);
    let kubeconfig = bed.dir.join("kubeconfig");
    std::fs::write(&kubeconfig, control_plane::kubeconfig(addr)).unwrap();
    let kubectl = |args: &[&str], stdin: &str| -> String {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &bed.node.name, "kubectl"])
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &bed.node.name,
            env!("CARGO_BIN_EXE_kproxy"),
        ])
        .args(["--kubeconfig", kubeconfig.to_str().unwrap()])
        .args([
            "--hostname-override",
            "node-a",
            "--cluster-cidr",
            "10.244.0.0/16",
        ])
        .args([
            "--iptables-min-sync-period",
            "0",
            "--iptables-variant",
            "nft",
        ])
        .args(["--healthz-bind-address", "127.0.0.1:10256"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _daemon = Daemon(child);

    kubectl(&["apply", "-f", "-"], SVC);
    // Pods, with the IPs and readiness of the test bed's pod namespaces reported through the API
    // (the status subresource, as a kubelet would).
    let pod = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: web}}}}\n\
             spec:\n  nodeName: node-a\n  containers: [{{name: c, image: none, ports: [{{name: http, containerPort: 8080}}]}}]\n"
        )
    };
    let status = |name: &str, ip: &str, ready: bool| {
        let ready = if ready { "True" } else { "False" };
        kubectl(
            &[
                "patch", "pod", name, "--subresource=status", "--type=merge", "-p",
                &format!("{{\"status\":{{\"podIP\":\"{ip}\",\"phase\":\"Running\",\"conditions\":[{{\"type\":\"Ready\",\"status\":\"{ready}\"}}]}}}}"),
            ],
            "",
        );
    };
    kubectl(&["apply", "-f", "-"], &pod("pod-a"));
    status("pod-a", "10.244.1.11", true);
    wait_for("the Service to reach pod-a", || {
        bed.tcp("client", "10.96.0.10:80").pod() == Some("pod-a")
    });

    // Scale: pod-b joins and becomes ready; pod-a stops being ready.
    kubectl(&["apply", "-f", "-"], &pod("pod-b"));
    status("pod-b", "10.244.1.12", true);
    status("pod-a", "10.244.1.11", false);
    wait_for("traffic to move to pod-b", || {
        bed.tcp_many("client", "10.96.0.10:80", 5)
            .iter()
            .all(|r| r.pod() == Some("pod-b"))
    });

    // pod-b deleted with a grace period: terminating but serving, it still takes traffic (the
    // fallback when nothing is ready); once gone, the Service rejects.
    kubectl(
        &["delete", "pod", "pod-b", "--grace-period=3", "--wait=false"],
        "",
    );
    assert_eq!(bed.tcp("client", "10.96.0.10:80").pod(), Some("pod-b"));
    wait_for("REJECT once no endpoint is left", || {
        bed.tcp("client", "10.96.0.10:80") == testbed::Reply::Refused
    });

    // The API server goes away: the rules stay and keep working.
    status("pod-a", "10.244.1.11", true);
    wait_for("pod-a ready again", || {
        bed.tcp("client", "10.96.0.10:80").pod() == Some("pod-a")
    });
    api.shutdown_background();
    std::thread::sleep(Duration::from_secs(2));
    for r in bed.tcp_many("client", "10.96.0.10:80", 5) {
        assert_eq!(
            r.pod(),
            Some("pod-a"),
            "rules kept while the API server is down"
        );
    }
    // It comes back (same objects); a change made after that is applied.
    let (_api, _) = start_api(Some(addr));
    kubectl(&["apply", "-f", "-"], &pod("pod-b"));
    status("pod-b", "10.244.1.12", true);
    status("pod-a", "10.244.1.11", false);
    wait_for("the change made after the API returned", || {
        bed.tcp_many("client", "10.96.0.10:80", 5)
            .iter()
            .all(|r| r.pod() == Some("pod-b"))
    });

    kubectl(&["delete", "service", "web"], "");
    wait_for("the Service's rules to go", || {
        !bed.saved("nft").contains("KUBE-SVC-")
    });
    assert_ne!(bed.tcp("client", "10.96.0.10:80").pod(), Some("pod-b"));
}

/// The time from `kubectl apply` of a Service and its EndpointSlice to working rules, with N
/// Services already programmed. Not a pass/fail test: run by hand and read the figures
/// (`KPROXY_LATENCY_SERVICES=5000 KPROXY_LATENCY_VARIANT=legacy cargo test --release -p kproxy
/// --test integration -- --ignored --nocapture`).
#[test]
#[ignore]
fn apply_to_rules_latency() {
    let services: usize = std::env::var("KPROXY_LATENCY_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let variant = std::env::var("KPROXY_LATENCY_VARIANT").unwrap_or_else(|_| "legacy".into());
    let Some(bed) = Bed::new("latency", &[("pod-a", "10.244.1.11")]) else {
        return;
    };
    let app = Arc::new(control_plane::api::App::new((
        "10.96.0.0".parse().unwrap(),
        1 << 16,
    )));
    {
        let mut store = app.store.lock().unwrap();
        for i in 0..services {
            let ip = format!("10.97.{}.{}", i / 250, i % 250 + 1);
            store
                .create("services", "default", serde_json::json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": format!("bulk{i}"), "namespace": "default"},
                    "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
                }))
                .unwrap();
            let eps: Vec<serde_json::Value> = (0..10)
                .map(|j| serde_json::json!({"addresses": [format!("10.{}.{}.{}", 100 + j, i / 250, i % 250 + 1)], "nodeName": "node-b"}))
                .collect();
            store
                .create("endpointslices", "default", serde_json::json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": format!("bulk{i}-1"), "namespace": "default", "labels": {"kubernetes.io/service-name": format!("bulk{i}")}},
                    "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": eps,
                }))
                .unwrap();
        }
    }
    let ns = bed.node.name.clone();
    let app2 = Arc::clone(&app);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            control_plane::serve_app(listener, app2).await.unwrap();
        });
    });
    let addr = rx.recv().unwrap();
    let kubeconfig = bed.dir.join("kubeconfig");
    std::fs::write(&kubeconfig, control_plane::kubeconfig(addr)).unwrap();
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &bed.node.name,
            env!("CARGO_BIN_EXE_kproxy"),
        ])
        .args([
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--hostname-override",
            "node-a",
        ])
        .args([
            "--cluster-cidr",
            "10.244.0.0/16",
            "--iptables-min-sync-period",
            "0",
        ])
        .args([
            "--iptables-variant",
            &variant,
            "--healthz-bind-address",
            "127.0.0.1:10256",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _daemon = Daemon(child);
    let start = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(600);
    while !bed.saved(&variant).contains("bulk0:http") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    // Wait for the initial full sync of all N services to be in place.
    std::thread::sleep(Duration::from_secs(2));
    eprintln!(
        "{variant}, {services} services: first full sync done after {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let mut kubectl_total = Vec::new();
    let mut after_write = Vec::new();
    for k in 0..5 {
        let name = format!("new{k}");
        let ip = format!("10.96.1.{}", k + 1);
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: {ip}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\n\
             addressType: IPv4\nports:\n- {{name: http, port: 8080, protocol: TCP}}\nendpoints:\n- addresses: [\"10.244.1.11\"]\n  nodeName: node-a\n"
        );
        let t0 = Instant::now();
        let mut c = Command::new("ip")
            .args([
                "netns",
                "exec",
                &bed.node.name,
                "kubectl",
                "apply",
                "-f",
                "-",
            ])
            .env("KUBECONFIG", &kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
        assert!(c.wait().unwrap().success());
        let t1 = Instant::now();
        // Poll with short connection attempts until the new Service answers.
        let to = format!("{ip}:80");
        let ns = bed.client.name.clone();
        let done = std::thread::spawn(move || {
            let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let to: std::net::SocketAddr = to.parse().unwrap();
            loop {
                if std::net::TcpStream::connect_timeout(&to, Duration::from_millis(20)).is_ok() {
                    return Instant::now();
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
        .join()
        .unwrap();
        kubectl_total.push(done - t0);
        after_write.push(done - t1);
    }
    let ms = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.0}", d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    };
    eprintln!(
        "{variant}, {services} services: kubectl apply -> working rules (ms): {}",
        ms(&kubectl_total)
    );
    eprintln!(
        "{variant}, {services} services: API write done -> working rules (ms): {}",
        ms(&after_write)
    );
}
