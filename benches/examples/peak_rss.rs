//! Prints the time and peak RSS of building the proxy-core state for N services × M endpoints and,
//! with `render`, of an iptables full render of it.
//!
//! Run: `cargo run --release -p kproxy-benches --example peak_rss -- 20000 10 [render]`.
//! The generated API objects are dropped before the render is measured, so the render's figure is
//! the state plus the renderer (what a running proxy holds), not the test input.

use std::time::Instant;

use backend_iptables::Renderer;
use kproxy_benches::{build_state, build_state_streaming, cluster, iptables_config, peak_rss_kib};

fn mib(kib: Option<u64>) -> u64 {
    kib.unwrap_or(0) / 1024
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let services: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let endpoints: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let render = args.iter().any(|a| a == "render");
    if render {
        return render_only(services, endpoints);
    }

    let manifests = cluster(services, endpoints);
    let after_generate = peak_rss_kib();
    let start = Instant::now();
    let (_pending, state) = build_state(&manifests);
    let elapsed = start.elapsed();
    let after_build = peak_rss_kib();
    println!(
        "{services} services x {endpoints} endpoints: {} service ports; state build {:.1} ms; \
         peak RSS after generating objects {} MiB, after building state {} MiB",
        state.len(),
        elapsed.as_secs_f64() * 1e3,
        mib(after_generate),
        mib(after_build),
    );
}

/// The render's figure, in a process that never held all API objects at once (a fresh process,
/// since freed memory is not returned to the kernel and would hide the render's own peak).
fn render_only(services: usize, endpoints: usize) {
    let (_pending, state) = build_state_streaming(services, endpoints);
    let before = peak_rss_kib();
    let mut renderer = Renderer::new(iptables_config()).expect("valid config");
    let start = Instant::now();
    let len = renderer
        .render_full_to(&state, &mut std::io::sink())
        .expect("sink")
        .bytes;
    let cold = start.elapsed();
    let start = Instant::now();
    let len2 = renderer
        .render_full_to(&state, &mut std::io::sink())
        .expect("sink")
        .bytes;
    let warm = start.elapsed();
    assert_eq!(len, len2);
    let after = peak_rss_kib();
    println!(
        "{services} services x {endpoints} endpoints, full render: {len} bytes, {:.1} ms cold, \
         {:.1} ms warm; peak RSS with the state {} MiB, after rendering {} MiB",
        cold.as_secs_f64() * 1e3,
        warm.as_secs_f64() * 1e3,
        mib(before),
        mib(after),
    );
}
