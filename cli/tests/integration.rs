//! kproxy against the project's control plane, driven by the real kubectl, on the datapath: a
//! Service and its EndpointSlice applied with kubectl become working rules, a changed slice moves
//! traffic, a deleted Service's rules go away. Needs root and kubectl; skips elsewhere.
//!
//! The control plane has no EndpointSlice controller yet, so the test writes the slice itself.

mod testbed;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testbed::Bed;

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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

fn slice(ips: &[&str]) -> String {
    let mut y = String::from(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nports:\n- {name: http, port: 8080, protocol: TCP}\nendpoints:\n",
    );
    for ip in ips {
        y.push_str(&format!(
            "- addresses: [\"{ip}\"]\n  nodeName: node-a\n  conditions: {{ready: true}}\n"
        ));
    }
    y
}

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
    // The control plane, listening on the node namespace's loopback.
    let ns = bed.node.name.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            control_plane::serve(listener, ("10.96.0.0".parse().unwrap(), 1 << 16))
                .await
                .unwrap();
        });
    });
    let addr = rx.recv().unwrap();
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
    kubectl(&["apply", "-f", "-"], &slice(&["10.244.1.11"]));
    wait_for("the Service to work", || {
        bed.tcp("client", "10.96.0.10:80").pod() == Some("pod-a")
    });

    kubectl(&["apply", "-f", "-"], &slice(&["10.244.1.12"]));
    wait_for("traffic to follow the slice", || {
        bed.tcp("client", "10.96.0.10:80").pod() == Some("pod-b")
    });

    kubectl(&["delete", "service", "web"], "");
    wait_for("the Service's rules to go", || {
        !bed.saved("nft").contains("KUBE-SVC-")
    });
    assert_ne!(bed.tcp("client", "10.96.0.10:80").pod(), Some("pod-b"));
}
