//! `--data-dir`: nothing written before a restart is lost, resourceVersions included.

use control_plane::store::Store;
use serde_json::json;

#[test]
fn restart_serves_the_same_objects_and_versions() {
    let dir = std::env::temp_dir().join(format!("kproxy-cp-durable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (a, version) = {
        let mut s = Store::open(100, &dir).unwrap();
        s.create("namespaces", "", json!({"metadata": {"name": "ns"}}))
            .unwrap();
        let a = s
            .create(
                "services",
                "ns",
                json!({"metadata": {"name": "a"}, "spec": {"ports": [{"port": 80}]}}),
            )
            .unwrap();
        s.create("services", "ns", json!({"metadata": {"name": "b"}}))
            .unwrap();
        s.delete("services", "ns", "b").unwrap();
        let mut a2 = a.clone();
        a2["spec"]["x"] = json!(1);
        let a = s.update("services", "ns", "a", a2).unwrap();
        (a, s.version())
    };
    let mut s = Store::open(100, &dir).unwrap();
    assert_eq!(s.get("services", "ns", "a").unwrap(), a);
    assert!(
        s.get("services", "ns", "b").is_err(),
        "the delete was kept too"
    );
    assert_eq!(s.version(), version);
    let c = s
        .create("services", "ns", json!({"metadata": {"name": "c"}}))
        .unwrap();
    assert_eq!(
        c["metadata"]["resourceVersion"],
        json!((version + 1).to_string()),
        "versions go on"
    );
    // A watch from before the restart cannot be resumed: 410, clients re-list.
    assert!(s.events_since(version - 1).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The binary with `--data-dir`: killed and started again, it serves what was written before.
#[test]
fn the_binary_keeps_objects_across_a_restart() {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let dir = std::env::temp_dir().join(format!("kproxy-cp-bin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    let start = || {
        let _ = std::fs::remove_file(&kubeconfig);
        let child = Command::new(env!("CARGO_BIN_EXE_kproxy-control-plane"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--kubeconfig-out")
            .arg(&kubeconfig)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let server = loop {
            if let Ok(text) = std::fs::read_to_string(&kubeconfig) {
                if let Some(line) = text
                    .lines()
                    .find(|l| l.trim().starts_with("server: http://"))
                {
                    break line.trim().trim_start_matches("server: http://").to_owned();
                }
            }
            assert!(Instant::now() < deadline, "the control plane did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        (child, server)
    };
    let request = |addr: &str, method: &str, path: &str, body: &str| -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    };
    let (mut first, addr) = start();
    let created = request(
        &addr,
        "POST",
        "/api/v1/namespaces/default/services",
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"kept"},"spec":{"ports":[{"port":80}]}}"#,
    );
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    first.kill().unwrap();
    first.wait().unwrap();

    let (mut second, addr) = start();
    let got = request(&addr, "GET", "/api/v1/namespaces/default/services/kept", "");
    second.kill().unwrap();
    second.wait().unwrap();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let body = |t: &str| -> serde_json::Value {
        serde_json::from_str(t.split_once("\r\n\r\n").unwrap().1).unwrap()
    };
    assert_eq!(
        body(&got)["metadata"]["resourceVersion"],
        body(&created)["metadata"]["resourceVersion"]
    );
    assert_eq!(
        body(&got)["spec"]["clusterIP"],
        body(&created)["spec"]["clusterIP"]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
