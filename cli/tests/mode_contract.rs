//! The contract every mode keeps, tested the same way for each on the real datapath (a node
//! namespace, pods and an outside client, real packets): the daemon of one mode hands the node
//! over to the daemon of any other with a connection loop running, and after an endpoint change
//! new connections reach only the new endpoint while nothing of the old mode remains; tampering
//! with a mode's own objects is repaired by its periodic full sync; one broken Service is skipped
//! while the others sync.
//!
//! The modes here are iptables (iptables-nft and iptables-legacy, which are two datapaths a node
//! can hold at once), nftables and userspace; IPVS runs the same handover inside user-mode-linux
//! (`cli/tests/ipvs_uml.rs`). The per-mode scenarios of the flows themselves (ClusterIP,
//! NodePort, LoadBalancer source ranges, REJECT without endpoints, restart, `--cleanup`) are in
//! `datapath.rs` (iptables nft and legacy, nftables), `userspace.rs` and `nftables.rs`; this
//! file adds userspace's restart and broken-Service scenarios, which only its daemon can run.
//! Needs root (CI is root); skips, saying why, elsewhere.

mod testbed;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use testbed::{wait_for, Bed, Daemon, Reply, ServiceSpec, NODE_IP};

const SVC_IP: &str = "172.30.0.10";

/// A datapath as the suite drives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    IptablesNft,
    IptablesLegacy,
    Nftables,
    Userspace,
}

use Mode::*;

impl Mode {
    fn name(self) -> &'static str {
        match self {
            IptablesNft => "iptables-nft",
            IptablesLegacy => "iptables-legacy",
            Nftables => "nftables",
            Userspace => "userspace",
        }
    }

    /// The daemon's flags for this mode (with [`CONFIG`]'s 2 s full resync for every mode).
    fn flags(self) -> Vec<&'static str> {
        let mut flags = Vec::new();
        flags.extend(match self {
            IptablesNft => vec!["--proxy-mode", "iptables", "--iptables-variant", "nft"],
            IptablesLegacy => vec!["--proxy-mode", "iptables", "--iptables-variant", "legacy"],
            Nftables => vec!["--proxy-mode", "nftables"],
            Userspace => vec![
                "--proxy-mode",
                "userspace",
                "--iptables-variant",
                "nft",
                "--proxy-port-range",
                "36000-36099",
            ],
        });
        flags
    }

    /// Whether a process restart of this mode leaves traffic served: the kernel's rules stay
    /// across it, except in userspace mode, whose listeners are the process's own sockets (the
    /// REDIRECTs point at closed ports until the next process listens: upstream's userspace
    /// proxier had the same gap).
    fn serves_across_its_restart(self) -> bool {
        self != Userspace
    }

    /// What of this mode is on the node (empty: nothing), ignoring what `except` (the mode
    /// running now) also owns.
    fn footprint_on(self, bed: &Bed, except: Option<Mode>) -> Vec<String> {
        let iptables_chains = |variant: &str, chains: &dyn Fn(&str) -> bool| -> Vec<String> {
            bed.saved(variant)
                .lines()
                .filter_map(|l| l.strip_prefix(':'))
                .filter_map(|d| d.split_whitespace().next())
                .filter(|c| chains(c))
                .map(|c| format!("iptables-{variant} chain {c}"))
                .collect()
        };
        match self {
            IptablesNft | IptablesLegacy => {
                let variant = if self == IptablesNft { "nft" } else { "legacy" };
                if except == Some(self) {
                    return Vec::new();
                }
                iptables_chains(variant, &|c| {
                    c.starts_with("KUBE-SVC-")
                        || c.starts_with("KUBE-SEP-")
                        || c.starts_with("KUBE-EXT-")
                        || matches!(
                            c,
                            "KUBE-SERVICES"
                                | "KUBE-NODEPORTS"
                                | "KUBE-EXTERNAL-SERVICES"
                                | "KUBE-PROXY-CANARY"
                                | "KUBE-POSTROUTING"
                                | "KUBE-MARK-MASQ"
                                | "KUBE-FORWARD"
                                | "KUBE-PROXY-FIREWALL"
                        )
                })
            }
            Nftables => {
                let tables = bed
                    .node
                    .output(&["nft", "list", "tables"])
                    .unwrap_or_default();
                tables
                    .lines()
                    .filter(|l| l.trim_end().ends_with(" kube-proxy"))
                    .map(|l| format!("nft {}", l.trim()))
                    .collect()
            }
            Userspace => iptables_chains("nft", &|c| {
                c.starts_with("KUBE-PORTALS-") || c.starts_with("KUBE-NODEPORT-")
            }),
        }
    }
}

/// The bed's manifests directory with `services.yaml` = `yaml`.
fn manifests(bed: &Bed, yaml: &str) -> PathBuf {
    let dir = bed.dir.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("services.yaml"), yaml).unwrap();
    dir
}

/// `web`, a NodePort Service (80/TCP → 8080, 53/UDP → 5353, node port 30080) on `endpoints`.
fn web(endpoints: &[&str]) -> String {
    let endpoints: Vec<(&str, &str, bool)> =
        endpoints.iter().map(|ip| (*ip, "node-a", true)).collect();
    ServiceSpec {
        name: "web",
        cluster_ip: SVC_IP,
        extra_spec: "  type: NodePort\n",
        status: "",
        endpoints: &endpoints,
    }
    .yaml()
}

/// The daemons' configuration file: a full resync every 2 s in every mode (`syncPeriod`), so
/// repairs show quickly.
const CONFIG: &str = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\n\
kind: KubeProxyConfiguration\n\
syncPeriod: 2s\n";

/// The daemon of `mode` on the manifests in `dir`, its log in `log`.
fn daemon(bed: &Bed, dir: &Path, mode: Mode, log: &Path) -> Daemon {
    let stderr = std::fs::File::create(log).unwrap();
    let config = bed.dir.join("kube-proxy.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let mut flags = vec!["--config", config.to_str().unwrap()];
    flags.extend(mode.flags());
    bed.start_daemon(dir, "10.244.0.0/16", Stdio::from(stderr), &flags)
}

/// Stops a daemon the way the kubelet does (SIGTERM: the rules stay) and waits for it.
fn stop(mut d: Daemon) {
    let pid = nix::unistd::Pid::from_raw(d.0.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = d.0.wait();
}

/// New TCP connections from the outside client to the node port, one after another until
/// stopped: which pod answered each, and the failures.
struct ConnectionLoop {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(usize, Vec<String>)>,
}

impl ConnectionLoop {
    fn start(bed: &Bed) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ns = bed.ns("client").name.clone();
        let to: std::net::SocketAddr = format!("{NODE_IP}:30080").parse().unwrap();
        let stopper = stop.clone();
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let (mut ok, mut failed) = (0, Vec::new());
            while !stopper.load(Ordering::SeqCst) {
                match std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                    Ok(mut s) => {
                        let mut text = String::new();
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        match std::io::Read::read_to_string(&mut s, &mut text) {
                            Ok(_) if text.starts_with("pod-") => ok += 1,
                            other => failed.push(format!("{other:?} {text:?}")),
                        }
                    }
                    Err(e) => failed.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (ok, failed)
        });
        Self { stop, thread }
    }

    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

fn node_port(bed: &Bed) -> Reply {
    bed.tcp("client", &format!("{NODE_IP}:30080"))
}

/// `from`'s daemon serves, is stopped, `to`'s daemon takes over with a connection loop running;
/// then an endpoint change: every new connection reaches only the new endpoint (no rule of the
/// old mode steers one to the old), and nothing of `from` remains.
fn switch(from: Mode, to: Mode) {
    let Some(bed) = Bed::three_pods(&format!("sw-{}", std::process::id())) else {
        return;
    };
    if (from == Nftables || to == Nftables) && !fixtures::command_exists("nft") {
        eprintln!("skipped: nft not installed (to inspect the tables)");
        return;
    }
    let dir = manifests(&bed, &web(&["10.244.1.11"]));
    let old = daemon(&bed, &dir, from, &bed.dir.join("from.log"));
    wait_for(&format!("{} to serve the node port", from.name()), || {
        node_port(&bed).pod() == Some("pod-a")
    });
    let connections = ConnectionLoop::start(&bed);
    std::thread::sleep(Duration::from_millis(300));
    stop(old);
    let log = bed.dir.join("to.log");
    let _new = daemon(&bed, &dir, to, &log);
    wait_for(
        &format!(
            "{}'s objects to be gone after the switch to {}",
            from.name(),
            to.name()
        ),
        || from.footprint_on(&bed, Some(to)).is_empty(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed) = connections.finish();
    assert!(ok > 5, "only {ok} connections made");
    if from.serves_across_its_restart() {
        assert!(
            failed.is_empty(),
            "{} → {}: {} failed connections: {failed:?}",
            from.name(),
            to.name(),
            failed.len()
        );
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!("handover to {}", to_mode_name(to))),
        "the handover says what it removed:\n{text}"
    );

    // The endpoint moves: only the new one may answer new connections.
    std::fs::write(dir.join("services.yaml"), web(&["10.244.1.12"])).unwrap();
    wait_for("the new endpoint", || {
        node_port(&bed).pod() == Some("pod-b")
    });
    let replies = bed.tcp_many("client", &format!("{NODE_IP}:30080"), 20);
    assert!(
        replies.iter().all(|r| r.pod() == Some("pod-b")),
        "{} → {}: after the endpoint change {replies:?}",
        from.name(),
        to.name()
    );
    let left = from.footprint_on(&bed, Some(to));
    assert!(left.is_empty(), "left of {}: {left:?}", from.name());
    assert!(
        to.footprint_on(&bed, None).len() + usize::from(to == Nftables) > 0,
        "{} wrote its own objects",
        to.name()
    );
}

/// The mode's name as the daemon's log says it (`handover to <mode> mode`).
fn to_mode_name(mode: Mode) -> &'static str {
    match mode {
        IptablesNft | IptablesLegacy => "iptables",
        Nftables => "nftables",
        Userspace => "userspace",
    }
}

macro_rules! switches {
    ($($name:ident: $from:ident => $to:ident),* $(,)?) => {
        $(#[test] fn $name() { switch($from, $to) })*
    };
}

switches!(
    iptables_nft_to_iptables_legacy: IptablesNft => IptablesLegacy,
    iptables_nft_to_nftables: IptablesNft => Nftables,
    iptables_nft_to_userspace: IptablesNft => Userspace,
    iptables_legacy_to_iptables_nft: IptablesLegacy => IptablesNft,
    iptables_legacy_to_nftables: IptablesLegacy => Nftables,
    iptables_legacy_to_userspace: IptablesLegacy => Userspace,
    nftables_to_iptables_nft: Nftables => IptablesNft,
    nftables_to_iptables_legacy: Nftables => IptablesLegacy,
    nftables_to_userspace: Nftables => Userspace,
    userspace_to_iptables_nft: Userspace => IptablesNft,
    userspace_to_iptables_legacy: Userspace => IptablesLegacy,
    userspace_to_nftables: Userspace => Nftables,
);

/// A tampering with the mode's own objects, and whether traffic still flows right after it is
/// repaired.
struct Tamper {
    what: &'static str,
    /// Commands run in the node namespace.
    commands: Vec<Vec<String>>,
}

fn tampers(mode: Mode, bed: &Bed) -> Vec<Tamper> {
    let cmd = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    match mode {
        IptablesNft | IptablesLegacy => {
            let ipt = if mode == IptablesNft {
                "iptables-nft"
            } else {
                "iptables-legacy"
            };
            let svc_chain = bed
                .saved(if mode == IptablesNft { "nft" } else { "legacy" })
                .lines()
                .filter_map(|l| l.strip_prefix(':'))
                .filter_map(|d| d.split_whitespace().next())
                .find(|c| c.starts_with("KUBE-SVC-"))
                .expect("a service chain")
                .to_owned();
            vec![
                Tamper {
                    what: "a flushed Service chain",
                    commands: vec![cmd(&format!("{ipt} -t nat -F {svc_chain}"))],
                },
                Tamper {
                    what: "the jumps from nat PREROUTING and OUTPUT flushed",
                    commands: vec![
                        cmd(&format!("{ipt} -t nat -F PREROUTING")),
                        cmd(&format!("{ipt} -t nat -F OUTPUT")),
                    ],
                },
                Tamper {
                    what: "KUBE-NODEPORTS flushed",
                    commands: vec![cmd(&format!("{ipt} -t nat -F KUBE-NODEPORTS"))],
                },
                Tamper {
                    what: "a foreign DNAT planted in KUBE-NODEPORTS",
                    commands: vec![cmd(&format!(
                        "{ipt} -t nat -I KUBE-NODEPORTS 1 -p tcp --dport 30080 -j DNAT --to-destination 10.244.1.13:8080"
                    ))],
                },
            ]
        }
        Userspace => vec![
            Tamper {
                what: "the portal chains flushed",
                commands: vec![
                    cmd("iptables-nft -t nat -F KUBE-NODEPORT-CONTAINER"),
                    cmd("iptables-nft -t nat -F KUBE-PORTALS-CONTAINER"),
                ],
            },
            Tamper {
                what: "the jumps from nat PREROUTING flushed",
                commands: vec![cmd("iptables-nft -t nat -F PREROUTING")],
            },
        ],
        Nftables => vec![
            Tamper {
                what: "the services chain flushed",
                commands: vec![cmd("nft flush chain ip kube-proxy services")],
            },
            Tamper {
                what: "the nat-prerouting chain flushed",
                commands: vec![cmd("nft flush chain ip kube-proxy nat-prerouting")],
            },
            Tamper {
                what: "the service-nodeports map emptied",
                commands: vec![cmd("nft flush map ip kube-proxy service-nodeports")],
            },
            Tamper {
                what: "a foreign DNAT planted in the services chain",
                commands: vec![cmd(
                    "nft insert rule ip kube-proxy services tcp dport 30080 dnat to 10.244.1.13:8080",
                )],
            },
        ],
    }
}

/// Each tampering with the mode's own objects breaks the node port, and the mode's periodic
/// full sync (every 2 s here) repairs it: the node port answers again.
fn tampering_is_repaired(mode: Mode) {
    let Some(bed) = Bed::three_pods(&format!("tamper-{}", std::process::id())) else {
        return;
    };
    if mode == Nftables && !fixtures::command_exists("nft") {
        eprintln!("skipped: nft not installed (to tamper with the table)");
        return;
    }
    let dir = manifests(&bed, &web(&["10.244.1.11"]));
    let _d = daemon(&bed, &dir, mode, &bed.dir.join("d.log"));
    wait_for("the node port", || node_port(&bed).pod() == Some("pod-a"));
    for tamper in tampers(mode, &bed) {
        for c in &tamper.commands {
            let args: Vec<&str> = c.iter().map(String::as_str).collect();
            bed.node.exec(&args).unwrap();
        }
        wait_for(
            &format!("{}: {} repaired", mode.name(), tamper.what),
            || node_port(&bed).pod() == Some("pod-a"),
        );
    }
}

#[test]
fn tampering_is_repaired_iptables_nft() {
    tampering_is_repaired(IptablesNft)
}
#[test]
fn tampering_is_repaired_iptables_legacy() {
    tampering_is_repaired(IptablesLegacy)
}
#[test]
fn tampering_is_repaired_nftables() {
    tampering_is_repaired(Nftables)
}
#[test]
fn tampering_is_repaired_userspace() {
    tampering_is_repaired(Userspace)
}

/// userspace mode: a Service that cannot be proxied (port 0) or parsed (a bogus cluster IP) is
/// skipped with a warning naming it, and the others are served.
#[test]
fn userspace_skips_one_broken_service() {
    let Some(bed) = Bed::three_pods(&format!("usbroken-{}", std::process::id())) else {
        return;
    };
    let mut yaml = web(&["10.244.1.11"]);
    yaml.push_str(
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: ns1}\n\
         spec: {clusterIP: 172.30.0.99, ports: [{name: http, port: 0}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: bogus-ip, namespace: ns1}\n\
         spec: {clusterIP: 172.30.0.300, ports: [{name: http, port: 80}]}\n",
    );
    let dir = manifests(&bed, &yaml);
    let log = bed.dir.join("d.log");
    let _d = daemon(&bed, &dir, Userspace, &log);
    wait_for("the node port", || node_port(&bed).pod() == Some("pod-a"));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("ns1/broken"), "{text}");
    assert!(text.contains("ns1/bogus-ip"), "{text}");
    assert_eq!(
        bed.tcp("client", &format!("{SVC_IP}:80")).pod(),
        Some("pod-a")
    );
}

/// userspace mode restarted under a connection loop: its listeners are its own sockets, so
/// connections during the gap between the old process and the new one's first sync are refused
/// (the suite's one scenario this mode cannot pass, for that reason); once the new process has
/// synced, every connection is served again, by the same rules.
#[test]
fn userspace_restart_serves_again_once_synced() {
    let Some(bed) = Bed::three_pods(&format!("usrestart-{}", std::process::id())) else {
        return;
    };
    let dir = manifests(&bed, &web(&["10.244.1.11"]));
    let old = daemon(&bed, &dir, Userspace, &bed.dir.join("a.log"));
    wait_for("the node port", || node_port(&bed).pod() == Some("pod-a"));
    let before = bed.rules("nft");
    stop(old);
    let _new = daemon(&bed, &dir, Userspace, &bed.dir.join("b.log"));
    wait_for("the node port after the restart", || {
        node_port(&bed).pod() == Some("pod-a")
    });
    let failures = Arc::new(Mutex::new(0));
    for _ in 0..20 {
        if node_port(&bed).pod() != Some("pod-a") {
            *failures.lock().unwrap() += 1;
        }
    }
    assert_eq!(*failures.lock().unwrap(), 0);
    // The listeners are numbered from the same range in the same order: the same rules.
    assert_eq!(bed.rules("nft"), before);
}
