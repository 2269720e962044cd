//! iptables mode at scale: full renders (warm: a periodic resync; cold: a fresh start) and the
//! partial render after one endpoint change.
//!
//! Run: `cargo bench -p kproxy-benches --bench iptables_render`.

use std::hint::black_box;
use std::io;

use backend_iptables::Renderer;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_benches::{build_state, cluster, iptables_config};
use proxy_core::EndpointSliceHandler;

const ENDPOINTS: usize = 10;

fn full_render(c: &mut Criterion) {
    let mut group = c.benchmark_group("iptables_full_render_warm");
    group.sample_size(10);
    for services in [1_000, 5_000, 10_000, 20_000] {
        let (_, state) = build_state(&cluster(services, ENDPOINTS));
        let mut renderer = Renderer::new(iptables_config()).unwrap();
        renderer.render_full_to(&state, &mut io::sink()).unwrap();
        group.bench_function(
            BenchmarkId::from_parameter(format!("{services}x{ENDPOINTS}")),
            |b| {
                b.iter(|| {
                    black_box(
                        renderer
                            .render_full_to(&state, &mut io::sink())
                            .unwrap()
                            .bytes,
                    )
                })
            },
        );
    }
    group.finish();

    let mut group = c.benchmark_group("iptables_full_render_cold");
    group.sample_size(10);
    for services in [5_000, 20_000] {
        let (_, state) = build_state(&cluster(services, ENDPOINTS));
        group.bench_function(
            BenchmarkId::from_parameter(format!("{services}x{ENDPOINTS}")),
            |b| {
                b.iter_batched(
                    || Renderer::new(iptables_config()).unwrap(),
                    |mut renderer| {
                        black_box(
                            renderer
                                .render_full_to(&state, &mut io::sink())
                                .unwrap()
                                .bytes,
                        )
                    },
                    BatchSize::PerIteration,
                )
            },
        );
    }
    group.finish();
}

fn with_first_endpoint(slice: &EndpointSlice, ip: &str) -> EndpointSlice {
    let mut s = slice.clone();
    s.endpoints.as_mut().unwrap()[0].addresses = vec![ip.to_owned()];
    s
}

fn partial_render(c: &mut Criterion) {
    let mut group = c.benchmark_group("iptables_one_endpoint_change");
    let services = 20_000;
    let manifests = cluster(services, ENDPOINTS);
    let (mut pending, mut state) = build_state(&manifests);
    let mut renderer = Renderer::new(iptables_config()).unwrap();
    renderer.render_full_to(&state, &mut io::sink()).unwrap();
    let original = manifests.endpoint_slices[services / 2].clone();
    let a = with_first_endpoint(&original, "11.0.0.1");
    let b = with_first_endpoint(&original, "11.0.0.2");
    pending.on_endpoint_slice_update(&original, &a);
    let diff = state.apply(&mut pending);
    renderer.render_to(&state, &diff, &mut io::sink()).unwrap();
    let mut current_is_a = true;
    group.bench_function(
        BenchmarkId::new("apply+partial_render", services),
        |bench| {
            bench.iter(|| {
                let (old, new) = if current_is_a { (&a, &b) } else { (&b, &a) };
                current_is_a = !current_is_a;
                pending.on_endpoint_slice_update(old, new);
                let diff = state.apply(&mut pending);
                let summary = renderer.render_to(&state, &diff, &mut io::sink()).unwrap();
                assert!(!summary.full);
                black_box(summary.bytes)
            })
        },
    );
    group.finish();
}

criterion_group!(benches, full_render, partial_render);
criterion_main!(benches);
