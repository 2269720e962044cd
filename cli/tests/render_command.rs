//! `kproxy render` end to end.

use std::process::{Command, Output};

fn kproxy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kproxy"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run kproxy")
}

/// `kproxy render` with `args`, which must succeed; its output.
fn render_ok(args: &[&str]) -> String {
    let out = kproxy(&[&["render"], args].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn renders_the_bundled_examples_with_no_arguments() {
    let out = kproxy(&["render"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("*nat\n"));
    assert!(text.ends_with("COMMIT\n"));
    assert!(text.contains("-A KUBE-SERVICES -m comment --comment \"ns1/web:http cluster IP\""));
    assert!(text.contains("\nCOMMIT\n*filter\n"));
    // Deterministic: the same bytes twice.
    assert_eq!(kproxy(&["render"]).stdout, text.as_bytes());
}

#[test]
fn flags_shape_the_rules() {
    let out = kproxy(&[
        "render",
        "--proxy-mode",
        "iptables",
        "--cluster-cidr",
        "10.244.0.0/16,fd00::/8",
        "--node-ip",
        "192.168.56.10",
        "--hostname-override",
        "node-a",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("! -s 10.244.0.0/16 -j KUBE-MARK-MASQ"),
        "{text}"
    );

    let out = kproxy(&["render", "--masquerade-all"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("--dport 80 -j KUBE-MARK-MASQ"),
        "masquerade-all has no source match"
    );

    let out = kproxy(&["render", "--ip-family", "ipv6"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("-d fd00:30::81"));
    assert!(!text.contains("172.30."));
}

#[test]
fn bad_flag_values_exit_2() {
    assert_eq!(
        kproxy(&["render", "--cluster-cidr", "10.0.0.0"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        kproxy(&["render", "--proxy-mode", "bogus"]).status.code(),
        Some(2)
    );
    assert_eq!(
        kproxy(&["render", "--iptables-masquerade-bit", "40"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn broken_manifest_exits_2_naming_file_and_line() {
    let dir = std::env::temp_dir().join(format!("kproxy-render-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("x.yaml");
    std::fs::write(
        &file,
        "kind: Service\nmetadata: {name: a}\nspec:\n  ports: {port: 1\n",
    )
    .unwrap();
    let out = kproxy(&["render", "-f", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:", file.display())), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn broken_service_is_skipped_and_the_rest_renders() {
    let dir = std::env::temp_dir().join(format!("kproxy-render-skip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("svc.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: ok, namespace: ns1}\n\
         spec: {clusterIP: 172.30.0.1, ports: [{name: p, port: 80}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: ns1}\n\
         spec: {clusterIP: 172.30.0.2, ports: [{name: p, port: 80, protocol: QUIC}]}\n",
    )
    .unwrap();
    let out = kproxy(&[
        "render",
        "-f",
        dir.to_str().unwrap(),
        "--hostname-override",
        "n",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(text.contains("ns1/ok:p has no endpoints"), "{text}");
    assert!(!text.contains("ns1/bad"), "{text}");
    assert!(err.contains("Service ns1/bad: spec.ports[0]"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A file that never ends (or is simply too large) is refused with exit 2, not read until memory
/// runs out.
#[test]
fn an_endless_input_file_is_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kproxy"))
        .args(["render", "-f", "/dev/zero"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("/dev/zero") && stderr.contains("larger than"),
        "{stderr}"
    );
}

/// Addresses with leading zeros (as old API servers stored them) are read as upstream reads them —
/// decimal, then written canonically — in every field: the render is byte for byte the render of
/// the same Service spelled canonically. (They used to skip the whole Service.)
#[test]
fn zero_padded_addresses_render_as_their_canonical_spelling() {
    let manifest = |ip: &dyn Fn(&str) -> String| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: legacy, namespace: ns1}}\nspec:\n  type: LoadBalancer\n  clusterIP: {c}\n  clusterIPs: [{c}]\n  externalIPs: [{e}]\n  loadBalancerSourceRanges: [{r}/8]\n  ports:\n  - {{name: p80, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}}\nstatus:\n  loadBalancer:\n    ingress: [{{ip: {l}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: legacy-1\n  namespace: ns1\n  labels: {{kubernetes.io/service-name: legacy}}\naddressType: IPv4\nports:\n- {{name: p80, port: 8080, protocol: TCP}}\nendpoints:\n- addresses: [{a}]\n  nodeName: node-a\n  conditions: {{ready: true}}\n---\napiVersion: v1\nkind: Node\nmetadata: {{name: node-a}}\nstatus: {{addresses: [{{type: InternalIP, address: {n}}}]}}\n",
            c = ip("172.30.0.41"),
            e = ip("192.168.99.11"),
            r = ip("10.0.0.0"),
            l = ip("5.6.7.8"),
            a = ip("10.180.0.1"),
            n = ip("192.168.56.10"),
        )
    };
    let pad = |s: &str| {
        s.split('.')
            .map(|o| format!("{o:0>3}"))
            .collect::<Vec<_>>()
            .join(".")
    };
    let dir = std::env::temp_dir().join(format!("kproxy-padded-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let render = |name: &str, text: String| {
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        let out = kproxy(&[
            "render",
            "-f",
            file.to_str().unwrap(),
            "--hostname-override",
            "node-a",
            "--cluster-cidr",
            "10.244.0.0/16",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (canonical, _) = render("canonical.yaml", manifest(&|s| s.to_owned()));
    let (padded, warnings) = render("padded.yaml", manifest(&|s| pad(s)));
    assert!(
        canonical.contains("-d 172.30.0.41/32") || canonical.contains("-d 172.30.0.41 "),
        "{canonical}"
    );
    assert!(!padded.contains("172.030"), "{padded}");
    assert!(!warnings.contains("invalid"), "{warnings}");
    assert_eq!(padded, canonical);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--conntrack-tcp-be-liberal` leaves out the rule that drops conntrack-INVALID packets, as
/// kube-proxy does when the node's conntrack is liberal.
#[test]
fn conntrack_tcp_be_liberal_drops_the_invalid_rule() {
    let invalid = "-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP";
    assert!(render_ok(&[]).contains(invalid));
    assert!(!render_ok(&["--conntrack-tcp-be-liberal"]).contains(invalid));
    assert!(render_ok(&["--conntrack-tcp-be-liberal=false"]).contains(invalid));
}

/// `render` assumes a node with nfacct, as upstream's tests do (the dropped-INVALID and
/// localhost-NodePort counters); `--no-nfacct` renders for a node without it.
#[test]
fn render_counts_with_nfacct_unless_told_not_to() {
    let with = render_ok(&[]);
    assert!(with.contains("-m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP"));
    assert!(
        with.contains(
            "-d 127.0.0.0/8 --dport 30443 -m nfacct --nfacct-name localhost_nps_accepted_pkts"
        ),
        "{with}"
    );
    let without = render_ok(&["--no-nfacct"]);
    assert!(!without.contains("nfacct"));
    assert!(without.contains("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"));
}

/// `render --proxy-mode userspace`: the listener plan as comments, then restore input that
/// REDIRECTs each Service address to its listener's port, REJECTs ports without endpoints and
/// DROPs Local-policy traffic without local endpoints; the plan's ports come from the range.
#[test]
fn userspace_plan_lists_listeners_and_redirects() {
    let text = render_ok(&[
        "--proxy-mode",
        "userspace",
        "--proxy-port-range",
        "40000-40100",
    ]);
    let (plan, rules) = text
        .split_once("*nat\n")
        .expect("restore input after the plan");
    assert!(plan.lines().all(|l| l.starts_with('#')), "{plan}");
    // Each listener's port appears in the plan and in its REDIRECT.
    let line = plan
        .lines()
        .find(|l| l.starts_with("# ns1/web:http tcp -> "))
        .unwrap_or_else(|| panic!("no web:http listener in {plan}"));
    let port: u16 = line["# ns1/web:http tcp -> ".len()..]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((40000..=40100).contains(&port), "{line}");
    assert!(
        rules.contains(&format!(
            "-A KUBE-PORTALS-CONTAINER -d 172.30.0.10/32 -p tcp -m comment --comment \"ns1/web:http cluster IP\" -m tcp --dport 80 -j REDIRECT --to-ports {port}"
        )),
        "{rules}"
    );
    assert!(rules.contains("-A KUBE-PORTALS-HOST -d 172.30.0.10/32 -p tcp"));
    assert!(
        rules.contains("-A KUBE-PORTALS-FILTER -d 172.30.0.70/32 -p tcp -m comment --comment \"ns1/empty:http cluster IP has no endpoints\" -m tcp --dport 80 -j REJECT"),
        "{rules}"
    );
    assert!(
        plan.contains("# ns1/sctp:diameter: SCTP, not proxied"),
        "{plan}"
    );
    assert!(rules.ends_with("COMMIT\n"));
    // Deterministic.
    assert_eq!(
        render_ok(&[
            "--proxy-mode",
            "userspace",
            "--proxy-port-range",
            "40000-40100"
        ]),
        text
    );
    // A one-port range: the first listener gets it, the others none and so no REDIRECT.
    let tight = render_ok(&[
        "--proxy-mode",
        "userspace",
        "--proxy-port-range",
        "40000-40000",
    ]);
    assert!(
        tight.matches("REDIRECT --to-ports 40000").count() >= 2,
        "{tight}"
    );
    assert!(tight.contains("(no free port)"), "{tight}");
    assert!(
        tight.contains(
            "ns1/web:http cluster IP has no proxy listener\" -m tcp --dport 80 -j REJECT"
        ),
        "{tight}"
    );
    assert!(!tight.contains("--to-ports 40001"), "{tight}");
}

/// The userspace proxy lives in the daemon's process: a one-shot `sync` refuses, saying so.
#[test]
fn userspace_sync_is_refused_with_the_reason() {
    let out = kproxy(&["sync", "--proxy-mode", "userspace"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("runs only as the daemon"), "{err}");
}

/// `render --proxy-mode ipvs`: the virtual and real servers as `ipvsadm -S -n` prints them, the
/// set members as `ipset save` does, then the restore input of IPVS mode's constant ruleset.
#[test]
fn ipvs_plan_lists_servers_sets_and_rules() {
    let text = render_ok(&["--proxy-mode", "ipvs", "--cluster-cidr", "10.244.0.0/16"]);
    let (servers, rest) = text
        .split_once("# ipsets (ipset save)\n")
        .expect("sets after the servers");
    let (sets, rules) = rest
        .split_once("# iptables rules (iptables-restore --noflush)\n")
        .expect("rules after the sets");
    for line in [
        "-A -t 172.30.0.10:80 -s rr",
        "-a -t 172.30.0.10:80 -r 10.244.1.10:8080 -m -w 1",
        "-A -u 172.30.0.10:53 -s rr",
        // ClientIP affinity is persistence.
        "-A -t 172.30.0.60:80 -s rr -p 600",
        // NodePorts on the node's address, LoadBalancer and external IPs as their own services.
        "-a -t 192.168.56.10:30080 -r 10.244.1.20:8080 -m -w 1",
        "-A -t 203.0.113.30:443 -s rr",
        "-A -t 192.0.2.40:80 -s rr",
        // A Service without endpoints still has its virtual service (IPVS answers with ICMP).
        "-A -t 172.30.0.70:80 -s rr",
    ] {
        assert!(
            servers.lines().any(|l| l == line),
            "no {line:?} in\n{servers}"
        );
    }
    for line in [
        "add KUBE-CLUSTER-IP 172.30.0.10,udp:53",
        "add KUBE-LOOP-BACK 10.244.1.10,tcp:8080,10.244.1.10",
        "add KUBE-NODE-PORT-TCP 30080",
        "add KUBE-NODE-PORT-LOCAL-TCP 30081",
        "add KUBE-LOAD-BALANCER-FW 203.0.113.30,tcp:443",
        "add KUBE-LOAD-BALANCER-SOURCE-CIDR 203.0.113.30,tcp:443,192.0.2.0/25",
        "add KUBE-HEALTH-CHECK-NODE-PORT 32000",
        "add KUBE-IPVS-IPS 172.30.0.10",
    ] {
        assert!(sets.lines().any(|l| l == line), "no {line:?} in\n{sets}");
    }
    assert!(rules.starts_with("*nat\n"), "{rules}");
    assert!(
        rules.contains("-A KUBE-SERVICES -m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" -m set --match-set KUBE-CLUSTER-IP dst,dst ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ"),
        "{rules}"
    );
    assert!(
        rules.contains("-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT"),
        "{rules}"
    );
    assert!(rules.ends_with("COMMIT\n"));
    // Deterministic; the scheduler flag reaches every virtual service.
    assert_eq!(
        render_ok(&["--proxy-mode", "ipvs", "--cluster-cidr", "10.244.0.0/16"]),
        text
    );
    let wrr = render_ok(&["--proxy-mode", "ipvs", "--ipvs-scheduler", "wrr"]);
    assert!(wrr.contains("-A -t 172.30.0.10:80 -s wrr"), "{wrr}");
    let out = kproxy(&[
        "render",
        "--proxy-mode",
        "ipvs",
        "--ipvs-scheduler",
        "fastest",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an IPVS scheduler"));
}
