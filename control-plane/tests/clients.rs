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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_apply_get_delete() {
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        eprintln!("skipping: kubectl not installed");
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
