//! IPVS mode at scale, inside the user-mode-linux kernel (this machine's kernel has no IPVS):
//! programming N Services × M endpoints from empty, a full resync into the programmed table, and
//! one-endpoint changes, with the time and the number of IPVS netlink messages of each.
//!
//! Run: `cargo run --release -p kproxy-benches --example ipvs_scale -- 5000 20000 [--endpoints M]
//! [--no-estimation]`
//! (boots the UML kernel itself; needs root and the `user-mode-linux` package).

use std::time::{Duration, Instant};

use kproxy_benches::ipvs_bed;
use proxy_core::Proxier;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !uml_testbed::inside() {
        let kernel = match uml_testbed::UmlKernel::find() {
            Ok(k) => k,
            Err(why) => {
                eprintln!("ipvs_scale needs the UML kernel: {why}");
                std::process::exit(2);
            }
        };
        let mut spec =
            uml_testbed::RunSpec::new(std::env::current_exe().expect("exe"), args.clone());
        spec.mem_mib = 3072;
        spec.timeout = Duration::from_secs(3600);
        let out = kernel.run(&spec).expect("UML run");
        print!("{}", out.output);
        std::process::exit(out.status);
    }
    let mut sizes = Vec::new();
    let mut endpoints = 10;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--endpoints" => endpoints = it.next().expect("--endpoints M").parse().expect("M"),
            // The kernel's per-service and per-server rate estimators (a timer walking all of
            // them every 2 s before 6.2): switched off to show their share of a large load.
            "--no-estimation" => std::fs::write("/proc/sys/net/ipv4/vs/run_estimation", "0\n")
                .expect("run_estimation"),
            n => sizes.push(n.parse::<usize>().expect("a Service count")),
        }
    }
    if sizes.is_empty() {
        sizes = vec![5000, 20000];
    }
    println!(
        "IPVS mode inside UML (kernel {}, {} CPUs given to it), {endpoints} endpoints per Service",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| Services | real servers | from empty | messages | full resync | messages | +1 endpoint | messages | -1 endpoint | messages |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        ipvs_bed::prepare_node();
        // Streamed, so the typed objects never all exist at once: the process's memory is the
        // state's and the proxier's, as in the daemon.
        let (mut pending, mut state) = kproxy_benches::build_state_streaming(n, endpoints);
        let config = fixtures::ScaleConfig::new(n, endpoints);
        eprintln!("{n}: state built, RSS {} MiB", rss_kib("VmRSS:") / 1024);
        let mut p = ipvs_bed::proxier();
        let diff = state.resync_diff();
        let m0 = p.ipvs_messages_sent();
        let cpu0 = cpu_times();
        let t = Instant::now();
        let r = p.sync(&state, &diff).expect("full sync");
        let cpu1 = cpu_times();
        eprintln!(
            "{n}: from empty, kproxy's own CPU {:.2} s, kernel (UML) CPU {:.2} s",
            cpu1.0 - cpu0.0,
            cpu1.1 - cpu0.1
        );
        let load = t.elapsed();
        let load_msgs = p.ipvs_messages_sent() - m0;
        eprintln!(
            "{n}: after the first sync, RSS {} MiB, peak {} MiB",
            rss_kib("VmRSS:") / 1024,
            rss_kib("VmHWM:") / 1024
        );
        eprintln!("{n}: from empty, phases {:?}", p.last_full_sync_phases());
        let servers = r
            .owned
            .iter()
            .find(|c| c.kind == "ipvs/real-servers")
            .map_or(0, |c| c.count);

        let m0 = p.ipvs_messages_sent();
        let t = Instant::now();
        p.sync(&state, &state.resync_diff()).expect("resync");
        let resync = t.elapsed();
        let resync_msgs = p.ipvs_messages_sent() - m0;
        eprintln!("{n}: resync, phases {:?}", p.last_full_sync_phases());

        // One endpoint added and removed, a few times over different Services: the median.
        let mut add = Vec::new();
        let mut del = Vec::new();
        let (mut add_msgs, mut del_msgs) = (0, 0);
        for k in 0..9 {
            let i = (k * 997) % n;
            let (_, old) = fixtures::generate_one(&config, i);
            let old = &old;
            let new = ipvs_bed::with_extra_endpoint(old, i);
            let diff = ipvs_bed::change(&mut pending, &mut state, old, &new);
            let m0 = p.ipvs_messages_sent();
            let t = Instant::now();
            p.sync(&state, &diff).expect("add sync");
            add.push(t.elapsed());
            add_msgs = p.ipvs_messages_sent() - m0;
            let diff = ipvs_bed::change(&mut pending, &mut state, &new, old);
            let m0 = p.ipvs_messages_sent();
            let t = Instant::now();
            p.sync(&state, &diff).expect("remove sync");
            del.push(t.elapsed());
            del_msgs = p.ipvs_messages_sent() - m0;
        }
        add.sort();
        del.sort();
        eprintln!(
            "{n}: RSS {} MiB now, {} MiB peak",
            rss_kib("VmRSS:") / 1024,
            rss_kib("VmHWM:") / 1024
        );
        println!(
            "| {n} | {servers} | {:.2} s | {load_msgs} | {:.2} s | {resync_msgs} | {:.2} ms | {add_msgs} | {:.2} ms | {del_msgs} |",
            load.as_secs_f64(),
            resync.as_secs_f64(),
            add[add.len() / 2].as_secs_f64() * 1e3,
            del[del.len() / 2].as_secs_f64() * 1e3,
        );
        p.cleanup().expect("cleanup");
    }
}

/// This process's user and system CPU seconds so far. Inside UML, user time is kproxy's own
/// logic and system time the (slow, emulated) kernel's work on its behalf.
fn cpu_times() -> (f64, f64) {
    let u =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).expect("rusage");
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    (secs(u.user_time()), secs(u.system_time()))
}

/// A `/proc/self/status` field in KiB.
fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
