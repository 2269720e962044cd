//! `kproxy state` end to end: the binary, real files, exit statuses and stderr.

use std::path::PathBuf;
use std::process::{Command, Output};

fn kproxy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kproxy"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run kproxy")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kproxy-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn bundled_examples_without_arguments() {
    let out = kproxy(&["state"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.starts_with("# node node-a (IPv4), zone zone-a"),
        "{stdout}"
    );
    assert!(stdout.contains("ns1/web:http tcp: ClusterIP 172.30.0.10:80"));
    assert!(!stdout.contains("other-proxy"));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn broken_manifest_is_an_error_with_file_and_line() {
    let dir = temp_dir("broken");
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "kind: Service\nmetadata:\n  name: a\nspec:\n  ports:\n  - port: [80\n",
    )
    .unwrap();
    let out = kproxy(&["state", "-f", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains(&format!("{}:", file.display())), "{stderr}");
    assert!(
        stderr.contains(":6: ") || stderr.contains(":7: "),
        "line of the error: {stderr}"
    );
    assert!(out.stdout.is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn missing_file_is_an_error() {
    let out = kproxy(&["state", "-f", "/nonexistent/kproxy.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/kproxy.yaml"));
}

#[test]
fn one_broken_service_is_skipped_with_a_warning_and_the_rest_is_computed() {
    let dir = temp_dir("skip");
    let text = "\
apiVersion: v1
kind: Service
metadata: {name: good, namespace: ns1}
spec: {clusterIP: 172.30.0.1, ports: [{name: p, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: broken, namespace: ns1}
spec: {clusterIP: 172.30.0.999, ports: [{name: p, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: zero-port, namespace: ns1}
spec: {clusterIP: 172.30.0.3, ports: [{name: p, port: 0}, {name: q, port: 81, protocol: ICMP}]}
";
    std::fs::write(dir.join("svc.yaml"), text).unwrap();
    let out = kproxy(&[
        "state",
        "-f",
        dir.to_str().unwrap(),
        "--hostname-override",
        "n1",
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stdout.contains("ns1/good:p tcp"), "{stdout}");
    assert!(
        !stdout.contains("broken") && !stdout.contains("zero-port"),
        "{stdout}"
    );
    assert!(stdout.starts_with("# node n1 "), "{stdout}");
    assert!(
        stderr.contains("Service ns1/broken: spec.clusterIPs[0]: invalid IP address"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Service ns1/zero-port: spec.ports[0]"),
        "{stderr}"
    );
    assert!(
        stderr.contains("unknown protocol \\\"ICMP\\\"")
            || stderr.contains("unknown protocol \"ICMP\""),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn ipv6_family_shows_the_dual_stack_service_only() {
    let out = kproxy(&["state", "--ip-family", "ipv6"]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("1 service ports"), "{stdout}");
    assert!(
        stdout.contains("ns1/dual:http tcp: ClusterIP [fd00:30::81]:80"),
        "{stdout}"
    );
}

/// What a person should hear about but that does not stop the command: a field kproxy's types do
/// not have, a kind it ignores, an object listed twice (and which copy wins), a Service without a
/// spec. Each warning names the file and line where it can.
#[test]
fn odd_manifests_warn_and_still_load() {
    let dir = temp_dir("warnings");
    let file = dir.join("odd.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Service\nmetadata: {name: nospec, namespace: ns1}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns1}\n\
         spec: {clusterIP: 172.30.0.5, ports: [{port: 80, protocl: UDP}], externalTraficPolicy: Local}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns1}\nspec: {clusterIP: 172.30.0.6, ports: [{port: 80}]}\n",
    )
    .unwrap();
    let out = kproxy(&[
        "state",
        "-f",
        file.to_str().unwrap(),
        "--hostname-override",
        "n",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for expected in [
        "odd.yaml:5: Service field spec.ports[0].protocl is not known",
        "odd.yaml:5: Service field spec.externalTraficPolicy is not known",
        "odd.yaml:10: kind Deployment is not a Service, EndpointSlice, Node or ServiceCIDR",
        "Service ns1/a appears more than once; the last one wins",
        "Service ns1/nospec: spec: the Service has no spec",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in\n{stderr}"
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("172.30.0.6:80"),
        "the last copy wins:\n{stdout}"
    );
}
