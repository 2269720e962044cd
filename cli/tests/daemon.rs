//! The long-running proxy with the `--manifests` source, on the datapath: it programs rules, follows
//! changes to the files, keeps the last good rules when a file breaks, answers /healthz, /livez and
//! /metrics, and leaves its rules in place on SIGTERM. Needs root; skips elsewhere.

mod testbed;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testbed::{Bed, Reply, ServiceSpec};

const SVC: &str = "172.30.0.10:80";

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn yaml(endpoints: &[(&str, &str, bool)]) -> String {
    let now = proxy_core::rfc3339::format(std::time::SystemTime::now());
    ServiceSpec {
        name: "web",
        cluster_ip: "172.30.0.10",
        extra_spec: "",
        status: "",
        endpoints,
    }
    .yaml()
    .replace(
        "  labels: {kubernetes.io/service-name: web}\n",
        &format!(
            "  labels: {{kubernetes.io/service-name: web}}\n  annotations: {{endpoints.kubernetes.io/last-change-trigger-time: \"{now}\"}}\n"
        ),
    )
}

/// GET `path` on `addr` from inside the node namespace; returns (status, body).
fn get(bed: &Bed, addr: &str, path: &str) -> (u16, String) {
    let ns = bed.node.name.clone();
    let (addr, path) = (addr.to_owned(), path.to_owned());
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text[9..12].parse().unwrap();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    })
    .join()
    .unwrap()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn daemon_follows_manifests_and_serves_health_and_metrics() {
    let Some(bed) = Bed::new(
        "daemon",
        &[("pod-a", "10.244.1.11"), ("pod-b", "10.244.1.12")],
    ) else {
        return;
    };
    let dir = bed.dir.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("web.yaml");
    std::fs::write(&file, yaml(&[("10.244.1.11", "node-a", true)])).unwrap();

    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &bed.node.name,
            env!("CARGO_BIN_EXE_kproxy"),
        ])
        .args([
            "--manifests",
            dir.to_str().unwrap(),
            "--hostname-override",
            "node-a",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:244::/32",
            "--iptables-min-sync-period",
            "0",
            "--iptables-variant",
            "nft",
            "--healthz-bind-address",
            "127.0.0.1:10256",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut daemon = Daemon(child);

    wait_for("the first sync", || {
        bed.tcp("client", SVC).pod() == Some("pod-a")
    });

    let (status, body) = get(&bed, "127.0.0.1:10256", "/healthz");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"healthy\": true") && body.contains("lastUpdated"),
        "{body}"
    );
    let (status, _) = get(&bed, "127.0.0.1:10256", "/livez");
    assert_eq!(status, 200);

    // The manifests change: traffic follows.
    std::fs::write(&file, yaml(&[("10.244.1.12", "node-a", true)])).unwrap();
    wait_for("the new endpoint", || {
        bed.tcp("client", SVC).pod() == Some("pod-b")
    });
    for r in bed.tcp_many("client", SVC, 10) {
        assert_eq!(r.pod(), Some("pod-b"));
    }

    // A broken file: the last good rules stay.
    std::fs::write(&file, "kind: Service\nmetadata: [unclosed\n").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(bed.tcp("client", SVC).pod(), Some("pod-b"));
    std::fs::write(&file, yaml(&[])).unwrap();
    wait_for("REJECT with no endpoints", || {
        bed.tcp("client", SVC) == Reply::Refused
    });

    let (status, metrics) = get(&bed, "127.0.0.1:10249", "/metrics");
    assert_eq!(status, 200);
    for name in [
        "kubeproxy_sync_proxy_rules_duration_seconds_count",
        "kubeproxy_sync_full_proxy_rules_duration_seconds_count",
        "kubeproxy_sync_partial_proxy_rules_duration_seconds_count",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "kubeproxy_sync_proxy_rules_endpoint_changes_total",
        "kubeproxy_sync_proxy_rules_iptables_total{table=\"nat\"}",
        "kubeproxy_network_programming_duration_seconds_count",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    let partial = metrics
        .lines()
        .find(|l| l.starts_with("kubeproxy_sync_partial_proxy_rules_duration_seconds_count"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
    assert!(
        partial >= 2,
        "changes were applied by partial syncs:\n{metrics}"
    );

    // SIGTERM: the daemon exits and the rules stay.
    let pid = daemon.0.id().to_string();
    // `ip netns exec` execs kproxy, so the child's pid is kproxy's.
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = daemon.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "kproxy did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let mut stderr = String::new();
    daemon
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.contains("keeping the last good ones"), "{stderr}");
    assert!(
        bed.saved("nft").contains("KUBE-SERVICES"),
        "rules left in place"
    );
    assert_eq!(bed.tcp("client", SVC), Reply::Refused, "and still in force");
}
