//! proxy-core at scale: building the state from the initial lists, the diff after one change, and
//! the address-level view and health-check ports built from a state and updated after one change.
//!
//! Run: `cargo bench -p kproxy-benches --bench proxy_core`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_benches::{build_state, cluster};
use proxy_core::EndpointSliceHandler;

const ENDPOINTS: usize = 10;

fn state_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("state_build");
    group.sample_size(10);
    for services in [1_000, 5_000, 10_000, 20_000] {
        let manifests = cluster(services, ENDPOINTS);
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{services}x{ENDPOINTS}")),
            &manifests,
            |b, m| b.iter(|| black_box(build_state(m))),
        );
    }
    group.finish();
}

/// Replaces the first endpoint's address: one endpoint removed, one added.
fn with_first_endpoint(slice: &EndpointSlice, ip: &str) -> EndpointSlice {
    let mut s = slice.clone();
    s.endpoints.as_mut().unwrap()[0].addresses = vec![ip.to_owned()];
    s
}

fn one_endpoint_change(c: &mut Criterion) {
    let mut group = c.benchmark_group("diff_one_endpoint_change");
    for services in [5_000, 20_000] {
        let manifests = cluster(services, ENDPOINTS);
        let (mut pending, mut state) = build_state(&manifests);
        let original = manifests.endpoint_slices[services / 2].clone();
        let a = with_first_endpoint(&original, "11.0.0.1");
        let b = with_first_endpoint(&original, "11.0.0.2");
        pending.on_endpoint_slice_update(&original, &a);
        state.apply(&mut pending);
        let mut current_is_a = true;
        group.bench_function(BenchmarkId::from_parameter(services), |bench| {
            bench.iter(|| {
                let (old, new) = if current_is_a { (&a, &b) } else { (&b, &a) };
                current_is_a = !current_is_a;
                pending.on_endpoint_slice_update(old, new);
                let diff = state.apply(&mut pending);
                assert_eq!(diff.changed.len(), 1);
                black_box(diff)
            })
        });
    }
    group.finish();
}

/// The address-level view and the health-check ports: built from a whole state (first sync,
/// periodic resync), and updated after one endpoint change (every other sync).
fn address_view(c: &mut Criterion) {
    use proxy_core::service_health::ServiceHealthPorts;
    use proxy_core::AddressTracker;

    let mut group = c.benchmark_group("address_view");
    group.sample_size(10);
    for services in [5_000, 20_000] {
        let manifests = cluster(services, ENDPOINTS);
        let (mut pending, mut state) = build_state(&manifests);
        group.bench_function(BenchmarkId::new("from_state", services), |b| {
            b.iter(|| black_box(AddressTracker::from_state(&state)))
        });
        group.bench_function(BenchmarkId::new("health_ports_from_state", services), |b| {
            b.iter(|| black_box(ServiceHealthPorts::new(&state)))
        });
        let mut tracker = AddressTracker::from_state(&state);
        let mut health = ServiceHealthPorts::new(&state);
        let original = manifests.endpoint_slices[services / 2].clone();
        let a = with_first_endpoint(&original, "11.0.0.1");
        let b = with_first_endpoint(&original, "11.0.0.2");
        pending.on_endpoint_slice_update(&original, &a);
        let diff = state.apply(&mut pending);
        tracker.update(&state, &diff);
        let mut current_is_a = true;
        group.bench_function(BenchmarkId::new("one_endpoint_change", services), |bench| {
            bench.iter(|| {
                let (old, new) = if current_is_a { (&a, &b) } else { (&b, &a) };
                current_is_a = !current_is_a;
                pending.on_endpoint_slice_update(old, new);
                let diff = state.apply(&mut pending);
                let addresses = tracker.update(&state, &diff);
                assert_eq!(addresses.frontends_changed.len(), 1);
                black_box(health.update(&state, &diff));
                black_box(addresses)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, state_build, one_endpoint_change, address_view);
criterion_main!(benches);
