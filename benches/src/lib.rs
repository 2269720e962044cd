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

/// The slice of generated Service `i` with one more endpoint (`10.255.255.x`), for a
/// one-endpoint change.
pub fn with_extra_endpoint(
    slice: &k8s_openapi::api::discovery::v1::EndpointSlice,
    i: usize,
) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    let mut s = slice.clone();
    let extra = fixtures::builder::EndpointBuilder::ready(&format!(
        "10.255.{}.{}",
        (i >> 8) & 0xff,
        i & 0xff
    ))
    .node("node1")
    .build();
    s.endpoints.get_or_insert_with(Vec::new).push(extra);
    s
}

/// Replaces slice `old` with `new` and applies the change: the diff of a one-endpoint change.
pub fn change(
    pending: &mut PendingChanges,
    state: &mut ProxyState,
    old: &k8s_openapi::api::discovery::v1::EndpointSlice,
    new: &k8s_openapi::api::discovery::v1::EndpointSlice,
) -> proxy_core::StateDiff {
    pending.on_endpoint_slice_update(old, new);
    state.apply(pending)
}

/// Adds the endpoint of `new` to the Service of `old` and removes it again, `iters` times,
/// timing each `sync` of the resulting diff alone (the state updates, proxy-core's, are
/// measured elsewhere): a criterion `iter_custom` body for one-endpoint changes.
pub fn time_add_then_remove(
    iters: u64,
    pending: &mut PendingChanges,
    state: &mut ProxyState,
    old: &k8s_openapi::api::discovery::v1::EndpointSlice,
    new: &k8s_openapi::api::discovery::v1::EndpointSlice,
    mut sync: impl FnMut(&ProxyState, &proxy_core::StateDiff),
) -> std::time::Duration {
    let mut total = std::time::Duration::ZERO;
    for _ in 0..iters {
        for (from, to) in [(old, new), (new, old)] {
            let diff = change(pending, state, from, to);
            let t = std::time::Instant::now();
            sync(state, &diff);
            total += t.elapsed();
        }
    }
    total
}

/// IPVS mode's benchmark bed, for code running inside the user-mode-linux kernel
/// (`uml-testbed`): the node's routes, a proxier, and one endpoint to add and remove.
pub mod ipvs_bed {
    use std::process::Command;
    use std::time::Duration;

    use backend_ipvs::{IpvsProxier, IpvsSettings};
    use proxy_core::datapath::DetectLocalMode;

    pub use crate::{change, with_extra_endpoint};

    /// Cleans what an earlier run left and gives the generated pods (10.0.0.0/8) a route, which
    /// IPVS needs before it takes them as real servers.
    pub fn prepare_node() {
        backend_ipvs::cleanup_node().expect("cleanup");
        let _ = Command::new("sh")
            .arg("-c")
            .arg("ip link add pods type dummy; ip link set pods up; ip addr replace 10.0.0.1/8 dev pods")
            .status();
    }

    /// A proxier with upstream's defaults, its iptables rules through iptables-legacy (the UML
    /// kernel has no nf_tables for IPv4).
    pub fn proxier() -> IpvsProxier {
        let mut settings = IpvsSettings::new(DetectLocalMode::ClusterCidr(vec!["10.0.0.0/8"
            .parse()
            .expect("cidr")]));
        settings.drain_check_interval = Duration::from_secs(60);
        IpvsProxier::open(
            proxy_core::IpFamily::V4,
            settings,
            Box::new(iptables_tool::IptablesCmd::new(
                iptables_tool::Variant::Legacy,
                proxy_core::IpFamily::V4,
            )),
        )
        .expect("IPVS proxier")
    }
}
