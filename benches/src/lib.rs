//! Shared setup for kproxy's criterion benches: building states from generated clusters.
//!
//! The benches themselves live in `benches/`; this library keeps their setup in one place so every
//! bench (and the `peak_rss` example) measures the same thing.
#![warn(missing_docs)]

use fixtures::{generate, Manifests, ScaleConfig};
use proxy_core::{
    EndpointSliceHandler, IpFamily, NodeInfo, PendingChanges, ProxyState, ServiceFilter,
    ServiceHandler,
};

/// The node the benches run as; the generator puts no endpoint on it.
pub const BENCH_NODE: &str = "bench-node";

/// Generates the default-shape cluster of `services` × `endpoints`.
pub fn cluster(services: usize, endpoints: usize) -> Manifests {
    generate(&ScaleConfig::new(services, endpoints))
}

/// Feeds every object to fresh handlers and applies them to a fresh state: what a starting proxy
/// does after its initial lists.
pub fn build_state(manifests: &Manifests) -> (PendingChanges, ProxyState) {
    let mut pending = PendingChanges::new(IpFamily::V4, BENCH_NODE, ServiceFilter::default());
    for s in &manifests.services {
        pending.on_service_add(s);
    }
    for s in &manifests.endpoint_slices {
        pending.on_endpoint_slice_add(s);
    }
    let mut state = ProxyState::new(IpFamily::V4, NodeInfo::named(BENCH_NODE));
    state.apply(&mut pending);
    (pending, state)
}

/// Like [`build_state`], but generating and feeding one Service at a time, so the API objects never
/// all exist at once: what a proxy's memory looks like after its initial lists.
pub fn build_state_streaming(services: usize, endpoints: usize) -> (PendingChanges, ProxyState) {
    let config = ScaleConfig::new(services, endpoints);
    let mut pending = PendingChanges::new(IpFamily::V4, BENCH_NODE, ServiceFilter::default());
    for i in 0..services {
        let (service, slice) = fixtures::generate_one(&config, i);
        pending.on_service_add(&service);
        pending.on_endpoint_slice_add(&slice);
    }
    let mut state = ProxyState::new(IpFamily::V4, NodeInfo::named(BENCH_NODE));
    state.apply(&mut pending);
    (pending, state)
}

/// The peak resident set size of this process so far, in KiB (`VmHWM`), if the kernel reports it.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The iptables render settings the benches use: a pod network, one node IP, defaults otherwise.
pub fn iptables_config() -> backend_iptables::RenderConfig {
    let c = backend_iptables::RenderConfig::new(IpFamily::V4);
    let mut c = c.with_cluster_cidr(Some("10.0.0.0/8".parse().expect("valid CIDR")));
    c.node_ips = vec!["192.168.0.1".parse().expect("valid IP")];
    c
}
