//! `kproxy` in IPVS mode on a real IPVS kernel: `ipvs_commands_in_uml` boots the user-mode-linux
//! kernel (see docs/ipvs.md) and runs the `inside_uml_*` tests of this binary inside it.
//!
//! Inside: `kproxy sync --proxy-mode ipvs` over the bundled examples programs exactly what
//! `kproxy render --proxy-mode ipvs` prints (virtual and real servers, set members), with
//! `--iptables-variant auto` falling back to legacy since the UML kernel has no nf_tables for
//! IPv4; a second sync changes nothing; `kproxy --cleanup` leaves nothing behind.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

#[test]
fn ipvs_commands_in_uml() {
    if uml_testbed::inside() {
        return;
    }
    let kernel = match uml_testbed::UmlKernel::find() {
        Ok(k) => k,
        Err(why) => {
            eprintln!("skipping the IPVS tests: {why}");
            return;
        }
    };
    let exe = std::env::current_exe().unwrap();
    let out = kernel
        .run_test_binary(&exe, "inside_uml_", |spec| {
            spec.timeout = Duration::from_secs(600);
        })
        .expect("the UML kernel ran");
    assert!(
        out.success() && out.output.contains("test result: ok. 1 passed"),
        "tests inside the UML kernel failed (status {}):\n{}\nconsole:\n{}",
        out.status,
        out.output,
        out.console
    );
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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
