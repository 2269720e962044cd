//! Prints the time and peak RSS of building the proxy-core state for N services × M endpoints.
//!
//! Run: `cargo run --release -p kproxy-benches --example peak_rss -- 20000 10`. The figure includes
//! the generated API objects themselves (which a real proxy also holds, in its watch caches).

use std::time::Instant;

use kproxy_benches::{build_state, cluster, peak_rss_kib};

fn main() {
    let mut args = std::env::args().skip(1);
    let services: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let endpoints: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let before = peak_rss_kib().unwrap_or(0);
    let manifests = cluster(services, endpoints);
    let after_generate = peak_rss_kib().unwrap_or(0);
    let start = Instant::now();
    let (_pending, state) = build_state(&manifests);
    let elapsed = start.elapsed();
    let after_build = peak_rss_kib().unwrap_or(0);
    println!(
        "{services} services x {endpoints} endpoints: {} service ports; build {:.1} ms; \
         peak RSS: start {} MiB, after generating objects {} MiB, after building state {} MiB",
        state.len(),
        elapsed.as_secs_f64() * 1e3,
        before / 1024,
        after_generate / 1024,
        after_build / 1024
    );
}
