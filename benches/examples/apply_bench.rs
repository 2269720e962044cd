//! Applying iptables rules for real, inside a throw-away network namespace: a full sync and a
//! one-endpoint-change partial sync through `IptablesProxier`, next to `iptables-restore` alone on
//! the same text (the floor kproxy cannot beat). Needs root.
//!
//! Run: `cargo run --release -p kproxy-benches --example apply_bench -- [5000 20000] [nft legacy]`
//! (`KPROXY_NFT_LIST_FIRST=0` measures iptables-nft without the chainless `-S`, as before.)

use std::fs::File;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use backend_iptables::{IptablesProxier, Renderer};
use iptables_tool::{IptablesCmd, Variant};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_benches::{build_state_streaming, iptables_config};
use kproxy_netlink::ConntrackCleaner;
use proxy_core::ManagedProxier;
use proxy_core::{EndpointSliceHandler, IpFamily, Proxier};

struct Netns(String);

impl Netns {
    fn enter_new(name: &str) -> Self {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        let ok = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .expect("ip");
        assert!(ok.success(), "ip netns add {name} (root needed)");
        let f = File::open(format!("/run/netns/{name}")).expect("netns");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        Netns(name.to_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn restore_time(variant: Variant, text: &[u8]) -> Duration {
    let start = Instant::now();
    let mut child = Command::new(format!("iptables-{variant}-restore"))
        .args(["--noflush", "--wait", "5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("iptables-restore");
    child.stdin.take().unwrap().write_all(text).unwrap();
    assert!(child.wait().unwrap().success(), "restore failed");
    start.elapsed()
}

/// Whether full restores start with `-S` (kproxy's default for iptables-nft).
fn list_first(variant: Variant) -> bool {
    variant == Variant::Nft && std::env::var("KPROXY_NFT_LIST_FIRST").as_deref() != Ok("0")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn first_endpoint(slice: &EndpointSlice, ip: &str) -> EndpointSlice {
    let mut s = slice.clone();
    s.endpoints.as_mut().unwrap()[0].addresses = vec![ip.to_owned()];
    s
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut sizes: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    if sizes.is_empty() {
        sizes = vec![5_000, 20_000];
    }
    let mut variants: Vec<Variant> = args
        .iter()
        .filter_map(|a| match a.as_str() {
            "nft" => Some(Variant::Nft),
            "legacy" => Some(Variant::Legacy),
            _ => None,
        })
        .collect();
    if variants.is_empty() {
        variants = vec![Variant::Nft, Variant::Legacy];
    }
    println!("| variant | services | full sync (kproxy) | iptables-restore alone, same text | partial sync (kproxy) | iptables-restore alone, same text | partial payload |");
    println!("|---|---|---|---|---|---|---|");
    for &services in &sizes {
        for &variant in &variants {
            let _ns = Netns::enter_new(&format!("kpx-bench-{}", std::process::id()));
            let (mut pending, mut state) = build_state_streaming(services, 10);
            let config = iptables_config();
            // Full syncs: each a fresh proxier (a start or restart), replacing the rules in place.
            let mut full = Vec::new();
            let mut proxier = None;
            let repeats = if services >= 10_000 { 2 } else { 3 };
            for _ in 0..repeats {
                let p = IptablesProxier::new(
                    Renderer::new(config.clone()).unwrap(),
                    Box::new(IptablesCmd::new(variant, IpFamily::V4)),
                )
                .with_route_localnet(false)
                .with_canary_interval(Duration::from_secs(3600))
                .with_list_first(list_first(variant));
                // Through the lifecycle, as the daemon runs it (conntrack cleanup included).
                let mut p = ManagedProxier::new(Box::new(p), IpFamily::V4);
                if let Ok(c) = ConntrackCleaner::open() {
                    p = p.with_conntrack(Box::new(c));
                }
                let start = Instant::now();
                let report = p.sync(&state, &state.resync_diff()).expect("full sync");
                full.push(start.elapsed());
                eprintln!("{variant} {services}: full sync {}", ms(start.elapsed()));
                assert!(report.full);
                proxier = Some(p);
            }
            let mut proxier = proxier.unwrap();
            let text = {
                let mut r = Renderer::new(config.clone()).unwrap();
                r.set_list_first(list_first(variant));
                r.render_full_string(&state)
            };
            let raw_full = median(
                (0..repeats)
                    .map(|_| restore_time(variant, text.as_bytes()))
                    .collect(),
            );
            eprintln!("{variant} {services}: raw full restore {}", ms(raw_full));
            drop(text);

            // Partial syncs: one endpoint replaced, back and forth.
            let original =
                fixtures::generate_one(&fixtures::ScaleConfig::new(services, 10), services / 2).1;
            let a = first_endpoint(&original, "11.0.0.1");
            let b = first_endpoint(&original, "11.0.0.2");
            pending.on_endpoint_slice_update(&original, &a);
            let diff = state.apply(&mut pending);
            proxier.sync(&state, &diff).expect("partial sync");
            let mut partial = Vec::new();
            let mut raw_partial = Vec::new();
            let mut payload = 0;
            let mut shadow = Renderer::new(config.clone()).unwrap();
            shadow.render_full_to(&state, &mut std::io::sink()).unwrap();
            let mut current_is_a = true;
            for _ in 0..6 {
                let (old, new) = if current_is_a { (&a, &b) } else { (&b, &a) };
                current_is_a = !current_is_a;
                pending.on_endpoint_slice_update(old, new);
                let diff = state.apply(&mut pending);
                let (text, summary) = shadow.render_string(&state, &diff);
                assert!(!summary.full);
                payload = summary.bytes;
                let start = Instant::now();
                let report = proxier.sync(&state, &diff).expect("partial sync");
                partial.push(start.elapsed());
                assert!(!report.full);
                drop(text);
            }
            // iptables-restore alone on partial payloads: a change and its reverse, so the kernel
            // ends where the proxier last left it.
            for _ in 0..3 {
                for _ in 0..2 {
                    let (old, new) = if current_is_a { (&a, &b) } else { (&b, &a) };
                    current_is_a = !current_is_a;
                    pending.on_endpoint_slice_update(old, new);
                    let diff = state.apply(&mut pending);
                    let (text, _) = shadow.render_string(&state, &diff);
                    raw_partial.push(restore_time(variant, text.as_bytes()));
                }
            }
            println!(
                "| {variant} | {services} | {} | {} | {} | {} | {payload} B |",
                ms(median(full)),
                ms(raw_full),
                ms(median(partial)),
                ms(median(raw_partial)),
            );
        }
    }
}
