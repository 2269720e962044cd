//! A UDP conntrack cleanup on a node holding many entries, mostly TCP: the previous way (dump every
//! entry of the family into a `Vec`, then choose) against the current one (the kernel sends only
//! UDP entries, each judged as it arrives, only the stale kept). Time and peak heap of the
//! choosing, in a throw-away network namespace. Needs root.
//!
//! Run: `cargo run --release -p kproxy-benches --example conntrack_cleanup -- [100000 1000000]`
//!
//! Each table is 90 % TCP, 10 % UDP; 1,000 of the UDP entries go to a Service port whose endpoint
//! left (the diff's cleanup), and are what both ways must find.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kproxy_netlink::{ConntrackOps, FlowFilter, NetlinkConntrack};
use proxy_core::datapath::{Flow, StaleFlows};
use proxy_core::diff::{ConntrackCleanup, ConntrackTarget};
use proxy_core::{IpFamily, Protocol};

/// The system allocator, counting live and peak bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`, returning its result, its time and the heap it used at most beyond what was live.
fn measured<T>(f: impl FnOnce() -> T) -> (T, Duration, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    (out, took, PEAK.load(Ordering::Relaxed) - base)
}

const SERVICE: &str = "172.30.0.10";
const GONE_ENDPOINT: &str = "10.244.2.10";

fn entry(i: u32) -> Flow {
    let udp = i.is_multiple_of(10);
    let src = format!(
        "10.{}.{}.{}:{}",
        100 + (i >> 24),
        (i >> 16) & 0xff,
        (i >> 8) & 0xff,
        1024 + (i & 0xff)
    );
    // The first 1,000 UDP entries go to the endpoint that left.
    let stale = udp && i / 10 < 1000;
    Flow {
        protocol: if udp { 17 } else { 6 },
        orig_src: src.parse().unwrap(),
        orig_dst: format!("{SERVICE}:{}", if udp { 53 } else { 80 })
            .parse()
            .unwrap(),
        reply_src: if stale {
            format!("{GONE_ENDPOINT}:5353").parse().unwrap()
        } else if udp {
            "10.244.3.10:5353".parse().unwrap()
        } else {
            "10.244.3.10:8080".parse().unwrap()
        },
        zone: 0,
    }
}

fn main() {
    let sizes: Vec<u32> = {
        let v: Vec<u32> = std::env::args()
            .skip(1)
            .map(|a| a.parse().expect("entry count"))
            .collect();
        if v.is_empty() {
            vec![100_000, 1_000_000]
        } else {
            v
        }
    };
    let max_path = "/proc/sys/net/netfilter/nf_conntrack_max";
    let old_max = std::fs::read_to_string(max_path).expect("nf_conntrack_max");
    let need = sizes.iter().max().copied().unwrap_or(0) + 10_000;
    if old_max.trim().parse::<u32>().unwrap_or(0) < need {
        std::fs::write(max_path, need.to_string()).expect("raise nf_conntrack_max (root)");
    }
    let cleanups = [ConntrackCleanup {
        protocol: Protocol::Udp,
        target: ConntrackTarget::ServiceIp {
            ip: SERVICE.parse().unwrap(),
            port: 53,
        },
        endpoint: Some(GONE_ENDPOINT.parse().unwrap()),
    }];
    println!("| entries (UDP) | way | choose time | peak heap | stale found |");
    println!("|---|---|---|---|---|");
    for n in sizes {
        let name = format!("kpctb{}-{n}", std::process::id());
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip");
        assert!(ok.success(), "ip netns add (root needed)");
        let path = format!("/run/netns/{name}");
        std::thread::spawn(move || {
            let ns = std::fs::File::open(path).unwrap();
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let mut ct = NetlinkConntrack::open().unwrap();
            let start = Instant::now();
            for i in 0..n {
                ct.create(&entry(i), 600).expect("create");
            }
            eprintln!("{n} entries created in {:.1?}", start.elapsed());
            let policy = StaleFlows::for_diff(&cleanups);

            let (found, took, peak) = measured(|| {
                let all = ct
                    .flows(FlowFilter {
                        family: IpFamily::V4,
                        protocol: None,
                    })
                    .unwrap();
                all.iter().filter(|f| policy.is_stale(f)).count()
            });
            println!(
                "| {n} ({}) | every entry into a Vec, then choose | {took:.1?} | {:.1} MiB | {found} |",
                n / 10,
                peak as f64 / (1 << 20) as f64
            );
            let (found, took, peak) = measured(|| {
                let mut stale = Vec::new();
                ct.for_each_flow(FlowFilter::udp(IpFamily::V4), &mut |f| {
                    if policy.is_stale(&f) {
                        stale.push(f);
                    }
                })
                .unwrap();
                stale.len()
            });
            println!(
                "| {n} ({}) | UDP filtered by the kernel, judged as streamed | {took:.1?} | {:.1} KiB | {found} |",
                n / 10,
                peak as f64 / 1024.0
            );
        })
        .join()
        .expect("bench thread");
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .status();
    }
    let _ = std::fs::write(max_path, old_max.trim());
}
