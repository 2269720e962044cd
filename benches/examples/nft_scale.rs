//! nftables mode at scale, on this machine's kernel, in a network namespace of its own: a full
//! load from empty, a full resync into the existing table (a restart: the table replaced in one
//! transaction), a periodic resync (every port diffed, nothing sent), one endpoint added and
//! removed (time, messages and bytes), and `nft -f` of the same ruleset for comparison.
//!
//! `cargo run --release -p kproxy-benches --example nft_scale -- 5000 20000 [--endpoints M]
//! [--no-nft]` (root).

use std::process::Command;
use std::time::{Duration, Instant};

use backend_nftables::{NftablesProxier, NftablesSettings};
use proxy_core::datapath::DetectLocalMode;
use proxy_core::Proxier;

fn main() {
    let mut sizes = Vec::new();
    let mut endpoints = 10;
    let mut with_nft = true;
    let mut counters = true;
    let mut floor = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--endpoints" => endpoints = args.next().expect("M").parse().expect("M"),
            "--no-nft" => with_nft = false,
            "--no-counters" => counters = false,
            "--floor" => floor = true,
            n => sizes.push(n.parse::<usize>().expect("a Service count")),
        }
    }
    if sizes.is_empty() {
        sizes = vec![5000, 20000];
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare (root?)");
    println!(
        "nftables mode over netlink, kernel {}, {endpoints} endpoints per Service",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!("| Services | chains | from empty | messages | MiB | replace table | periodic resync | +1 endpoint | messages | bytes | -1 endpoint | messages | bytes | `nft -f` of the same |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        let _ = backend_nftables::cleanup_node();
        let (mut pending, mut state) = kproxy_benches::build_state_streaming(n, endpoints);
        let config = fixtures::ScaleConfig::new(n, endpoints);
        let mut settings = NftablesSettings::new(DetectLocalMode::ClusterCidr(vec!["10.0.0.0/8"
            .parse()
            .expect("cidr")]));
        settings.counters = counters;
        let mut p = NftablesProxier::open(proxy_core::IpFamily::V4, settings.clone())
            .expect("proxier")
            .with_node_addresses(vec!["192.168.0.1".parse().expect("ip")]);

        let t = Instant::now();
        let r = p.sync(&state, &state.resync_diff()).expect("load");
        let load = t.elapsed();
        let (_, load_msgs, load_bytes) = p.last_sync();
        let chains = r
            .owned
            .iter()
            .find(|c| c.kind == "nftables/chains")
            .map_or(0, |c| c.count);
        eprintln!(
            "{n}: loaded in {:.2} s, of which the kernel's commit {:.2} s; RSS {} MiB, peak {} MiB",
            load.as_secs_f64(),
            p.last_commit_time().as_secs_f64(),
            kib("VmRSS:") / 1024,
            kib("VmHWM:") / 1024
        );

        if std::env::var_os("NFT_SCALE_PAUSE").is_some() {
            eprintln!("paused: nsenter -t {} -n …", std::process::id());
            std::thread::sleep(Duration::from_secs(300));
        }
        // A restart: a new proxier replaces the table in one transaction.
        let mut fresh = NftablesProxier::open(proxy_core::IpFamily::V4, settings.clone())
            .expect("proxier")
            .with_node_addresses(vec!["192.168.0.1".parse().expect("ip")]);
        let t = Instant::now();
        fresh.sync(&state, &state.resync_diff()).expect("replace");
        let replace = t.elapsed();
        drop(fresh);
        // The first proxier's books no longer describe the kernel: it replaces the table once.
        p.sync(&state, &state.resync_diff()).expect("re-replace");

        let t = Instant::now();
        p.sync(&state, &state.resync_diff()).expect("resync");
        let resync = t.elapsed();

        let mut add = Vec::new();
        let mut del = Vec::new();
        let (mut add_m, mut del_m) = ((0, 0), (0, 0));
        for k in 0..9 {
            let i = (k * 997) % n;
            let (_, old) = fixtures::generate_one(&config, i);
            let new = kproxy_benches::with_extra_endpoint(&old, i);
            let diff = kproxy_benches::change(&mut pending, &mut state, &old, &new);
            let t = Instant::now();
            p.sync(&state, &diff).expect("add");
            add.push(t.elapsed());
            let (_, m, b) = p.last_sync();
            add_m = (m, b);
            let diff = kproxy_benches::change(&mut pending, &mut state, &new, &old);
            let t = Instant::now();
            p.sync(&state, &diff).expect("remove");
            del.push(t.elapsed());
            let (_, m, b) = p.last_sync();
            del_m = (m, b);
        }
        add.sort();
        del.sort();

        if floor {
            floors(n);
        }
        let nft = if with_nft {
            nft_load(&p, &state)
        } else {
            "—".into()
        };
        println!(
            "| {n} | {chains} | {:.2} s | {load_msgs} | {:.0} | {:.2} s | {:.0} ms | {} ms | {} | {} | {} ms | {} | {} | {nft} |",
            load.as_secs_f64(),
            load_bytes as f64 / (1 << 20) as f64,
            replace.as_secs_f64(),
            resync.as_secs_f64() * 1e3,
            ms(add[add.len() / 2]),
            add_m.0,
            add_m.1,
            ms(del[del.len() / 2]),
            del_m.0,
            del_m.1,
        );
        let _ = backend_nftables::cleanup_node();
    }
}

/// The kernel's cost of one-command transactions into the loaded table, each committed and then
/// undone 9 times (median): an element of a plain set, a rule that holds nothing the kernel
/// validates (a counter), and a rule that does (a DNAT, which makes the kernel re-validate every
/// chain reachable from the base chains).
fn floors(n: usize) {
    use kproxy_netlink::nftables::batch::{NftSocket, Transaction};
    use kproxy_netlink::nftables::expr::{Expr, REG_1, REG_2};
    use kproxy_netlink::nftables::objects::{self, Element, NFPROTO_IPV4};
    let mut socket = NftSocket::open().expect("socket");
    let f = NFPROTO_IPV4;
    let t = "kube-proxy";
    let time = |socket: &mut NftSocket,
                make: &dyn Fn() -> Vec<objects::Command>,
                undo: &dyn Fn() -> Vec<objects::Command>| {
        let mut runs = Vec::new();
        for _ in 0..9 {
            let mut tx = Transaction::new();
            make().into_iter().for_each(|c| tx.push(c));
            let start = Instant::now();
            socket.commit(tx).expect("commit");
            runs.push(start.elapsed());
            let mut tx = Transaction::new();
            undo().into_iter().for_each(|c| tx.push(c));
            socket.commit(tx).expect("undo");
        }
        runs.sort();
        ms(runs[runs.len() / 2])
    };
    let element = || Element {
        key: vec![172, 31, 255, 254],
        verdict: None,
        data: None,
        interval_end: false,
    };
    let set_element = time(
        &mut socket,
        &|| vec![objects::add_elements(f, t, "cluster-ips", 0, &[element()])],
        &|| vec![objects::delete_elements(f, t, "cluster-ips", &[element()])],
    );
    let chain = || objects::new_chain(f, t, "floor-probe", None);
    let empty_chain = time(&mut socket, &|| vec![chain()], &|| {
        vec![objects::delete_chain(f, t, "floor-probe")]
    });
    let counter_rule = time(
        &mut socket,
        &|| {
            vec![
                chain(),
                objects::new_rule(
                    f,
                    t,
                    "floor-probe",
                    &[Expr::Payload {
                        dreg: REG_1,
                        base: kproxy_netlink::nftables::expr::PayloadBase::Network,
                        offset: 12,
                        len: 4,
                    }],
                    None,
                ),
            ]
        },
        &|| {
            vec![
                objects::flush_chain(f, t, "floor-probe"),
                objects::delete_chain(f, t, "floor-probe"),
            ]
        },
    );
    let dnat = [
        Expr::Meta {
            key: 16,
            dreg: REG_1,
        },
        Expr::Immediate {
            dreg: REG_1,
            data: kproxy_netlink::nftables::expr::ImmediateData::Value(vec![10, 0, 0, 1]),
        },
        Expr::Immediate {
            dreg: REG_2,
            data: kproxy_netlink::nftables::expr::ImmediateData::Value(vec![0, 80]),
        },
        Expr::Dnat {
            family: 2,
            addr: REG_1,
            port: REG_2,
            flags: Some(2),
        },
    ];
    let dnat_rule = time(
        &mut socket,
        &|| vec![chain(), objects::new_rule(f, t, "floor-probe", &dnat, None)],
        &|| {
            vec![
                objects::flush_chain(f, t, "floor-probe"),
                objects::delete_chain(f, t, "floor-probe"),
            ]
        },
    );
    // A data map of NAT targets looked up by `n` rules (as one shared map of every Service's
    // endpoints would be): the cost of one element.
    {
        use kproxy_netlink::nftables::objects::{datatype, set_flags, SetSpec, SetUserData};
        let mut tx = Transaction::new();
        tx.push(objects::new_chain(f, t, "floor-bindings", None));
        tx.push(objects::new_set(
            f,
            &SetSpec {
                table: t,
                name: "floor-targets",
                flags: set_flags::MAP,
                key: (datatype::INTEGER, 4),
                data: Some(datatype::concat(&[
                    (datatype::IPV4_ADDR, 4),
                    (datatype::INET_SERVICE, 2),
                ])),
                timeout_ms: None,
                user_data: SetUserData::NumgenAddressPortMap {
                    ipv6: false,
                    comment: None,
                },
                id: 1,
            },
        ));
        for i in 0..n as u32 {
            tx.push(objects::new_rule(
                f,
                t,
                "floor-bindings",
                &[
                    Expr::Numgen {
                        dreg: REG_1,
                        modulus: 2,
                        offset: i * 2,
                    },
                    Expr::Lookup {
                        set: "floor-targets".into(),
                        set_id: 1,
                        sreg: REG_1,
                        dreg: Some(REG_1),
                        invert: false,
                    },
                ],
                None,
            ));
        }
        socket.commit(tx).expect("bindings");
    }
    let target = || Element {
        key: 7u32.to_ne_bytes().to_vec(),
        verdict: None,
        data: Some(vec![10, 0, 0, 1, 0, 80, 0, 0]),
        interval_end: false,
    };
    let bound_element = time(
        &mut socket,
        &|| vec![objects::add_elements(f, t, "floor-targets", 0, &[target()])],
        &|| vec![objects::delete_elements(f, t, "floor-targets", &[target()])],
    );
    eprintln!("{n}: one element of a data map {n} rules look up: {bound_element} ms");
    eprintln!(
        "{n}: one-command transactions: set element {set_element} ms, empty chain {empty_chain} ms, chain + rule the kernel does not validate (payload load) {counter_rule} ms, chain + DNAT rule (table re-validated) {dnat_rule} ms"
    );
}

/// `nft -f` of the rendered ruleset into an empty namespace.
fn nft_load(p: &NftablesProxier, state: &proxy_core::ProxyState) -> String {
    let _ = backend_nftables::cleanup_node();
    let mut text = String::new();
    backend_nftables::render::write_ruleset(state, &p.plan_context(state), &mut text);
    let file = std::env::temp_dir().join(format!("nft-scale-{}.nft", std::process::id()));
    std::fs::write(&file, text).expect("write");
    let t = Instant::now();
    let status = Command::new("timeout")
        .args(["600", "nft", "-f"])
        .arg(&file)
        .status();
    let took = t.elapsed();
    let _ = std::fs::remove_file(&file);
    match status {
        Ok(s) if s.success() => format!("{:.2} s", took.as_secs_f64()),
        Ok(_) if took >= Duration::from_secs(599) => "> 600 s (killed)".into(),
        Ok(s) => format!("failed ({s})"),
        Err(e) => format!("not run ({e})"),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
