//! `kproxy` in IPVS mode on a real IPVS kernel: `ipvs_commands_in_uml` boots the user-mode-linux
//! kernel (see docs/ipvs.md) and runs the `inside_uml_*` tests of this binary inside it.
//!
//! Inside: `kproxy sync --proxy-mode ipvs` over the bundled examples programs exactly what
//! `kproxy render --proxy-mode ipvs` prints (virtual and real servers, set members), with
//! `--iptables-variant auto` falling back to legacy since the UML kernel has no nf_tables for
//! IPv4; a second sync changes nothing; `kproxy --cleanup` leaves nothing behind.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use uml_testbed::sh;

#[test]
fn ipvs_commands_in_uml() {
    let Some(kernel) = uml_testbed::kernel_or_skip("the IPVS command tests") else {
        return;
    };
    let exe = std::env::current_exe().unwrap();
    let out = kernel
        .run_test_binary(&exe, "inside_uml_", |spec| {
            spec.timeout = Duration::from_secs(600);
        })
        .expect("the UML kernel ran");
    assert!(
        out.success() && out.output.contains("test result: ok. 2 passed"),
        "tests inside the UML kernel failed (status {}):\n{}\nconsole:\n{}",
        out.status,
        out.output,
        out.console
    );
}

fn kproxy(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kproxy"))
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kproxy {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The lines of `text` between `from` and the next `# ` heading, that start with `prefix`.
fn section(text: &str, from: &str, prefix: &str) -> BTreeSet<String> {
    text.split_once(from)
        .map(|(_, rest)| rest)
        .unwrap_or("")
        .lines()
        .take_while(|l| !l.starts_with("# "))
        .filter(|l| l.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
#[ignore = "runs inside the UML kernel (ipvs_commands_in_uml)"]
fn inside_uml_sync_programs_the_rendered_plan_and_cleanup_removes_it() {
    assert!(uml_testbed::inside(), "runs inside user-mode-linux only");
    // The example node's address, and a route to the example pods (IPVS refuses real servers
    // it cannot route to).
    sh("ip link add eth0 type dummy && ip link set eth0 up && ip addr add 192.168.56.10/24 dev eth0");
    sh("ip link add pods type dummy && ip link set pods up && ip addr add 10.244.0.1/16 dev pods");
    let flags = [
        "--proxy-mode",
        "ipvs",
        "--cluster-cidr",
        "10.244.0.0/16",
        "--nodeport-addresses",
        "192.168.56.0/24",
    ];
    let plan = kproxy(&[&["render"], &flags[..]].concat());
    kproxy(&[&["sync", "--iptables-variant", "auto"], &flags[..]].concat());

    let want_servers = section(&plan, "(ipvsadm -S -n)\n", "-");
    let have_servers: BTreeSet<String> = sh("ipvsadm -S -n").lines().map(str::to_owned).collect();
    assert_eq!(
        have_servers, want_servers,
        "the kernel's IPVS table differs from the plan"
    );
    assert!(want_servers.len() > 40, "{want_servers:?}");

    let want_members = section(&plan, "(ipset save)\n", "add ");
    let have_members: BTreeSet<String> = sh("ipset save")
        .lines()
        .filter(|l| l.starts_with("add KUBE-"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        have_members, want_members,
        "set members differ from the plan"
    );

    let nat = sh("iptables-legacy-save -t nat");
    assert!(
        nat.contains(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
        ),
        "{nat}"
    );
    assert!(
        nat.lines().any(|l| l.contains("! -s 10.244.0.0/16")
            && l.contains("--match-set KUBE-CLUSTER-IP dst,dst")
            && l.ends_with("-j KUBE-MARK-MASQ")),
        "{nat}"
    );
    let bound = sh("ip -4 addr show dev kube-ipvs0");
    assert!(bound.contains("172.30.0.10/32"), "{bound}");

    // A second sync finds everything in place.
    kproxy(&[&["sync", "--iptables-variant", "auto"], &flags[..]].concat());
    let again: BTreeSet<String> = sh("ipvsadm -S -n").lines().map(str::to_owned).collect();
    assert_eq!(again, want_servers);

    kproxy(&["--cleanup"]);
    assert_eq!(sh("ipvsadm -S -n").trim(), "");
    assert!(!sh("ip link").contains("kube-ipvs0"));
    assert!(!sh("iptables-legacy-save").contains("KUBE-"));
    assert!(!sh("ipset list -n").contains("KUBE-"));
    sh("ip link del eth0; ip link del pods");
}

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text))
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

#[test]
#[ignore = "runs inside the UML kernel (ipvs_commands_in_uml)"]
fn inside_uml_the_daemon_follows_manifests_and_leaves_the_datapath_on_sigterm() {
    assert!(uml_testbed::inside(), "runs inside user-mode-linux only");
    sh("ip link add eth0 type dummy && ip link set eth0 up && ip addr add 192.168.56.10/24 dev eth0");
    sh("ip link add pods type dummy && ip link set pods up && ip addr add 10.244.0.1/16 dev pods");
    let dir = std::env::temp_dir().join(format!("kproxy-ipvs-daemon-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/examples");
    for e in std::fs::read_dir(examples).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_kproxy"))
        .args([
            "--proxy-mode",
            "ipvs",
            "--manifests",
            dir.to_str().unwrap(),
            "--hostname-override",
            "node-a",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--nodeport-addresses",
            "192.168.56.0/24",
            "--healthz-bind-address",
            "127.0.0.1:10256",
            "--metrics-bind-address",
            "127.0.0.1:10249",
        ])
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    wait_for("healthz 200", || {
        http_get("127.0.0.1:10256", "/healthz").is_some_and(|(s, _)| s == 200)
    });
    let servers =
        || -> BTreeSet<String> { sh("ipvsadm -S -n").lines().map(str::to_owned).collect() };
    assert!(
        servers().contains("-A -t 172.30.0.10:80 -s rr"),
        "{:?}",
        servers()
    );
    // A new Service appears through a partial sync.
    std::fs::write(
        dir.join("95-new.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: added, namespace: ns1}\n\
         spec: {clusterIP: 172.30.0.99, ports: [{name: http, port: 80, protocol: TCP}]}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: added-1, namespace: ns1, labels: {kubernetes.io/service-name: added}}\n\
         addressType: IPv4\nports: [{name: http, port: 8080, protocol: TCP}]\n\
         endpoints: [{addresses: [10.244.1.99], conditions: {ready: true}, nodeName: node-a}]\n",
    )
    .unwrap();
    wait_for("the added Service's virtual server", || {
        servers().contains("-a -t 172.30.0.99:80 -r 10.244.1.99:8080 -m -w 1")
    });
    let (_, metrics) = http_get("127.0.0.1:10249", "/metrics").expect("metrics");
    assert!(
        metrics.contains("kind=\"ipvs/virtual-servers\""),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("objects"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        metrics.contains("sync_partial_proxy_rules_duration_seconds_count"),
        "a partial sync ran"
    );
    let before = servers();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = daemon.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(servers(), before, "SIGTERM leaves IPVS as it was");
    assert!(sh("ip -4 addr show dev kube-ipvs0").contains("172.30.0.99/32"));
    kproxy(&["--cleanup"]);
    sh("ip link del eth0; ip link del pods");
    let _ = std::fs::remove_dir_all(&dir);
}
