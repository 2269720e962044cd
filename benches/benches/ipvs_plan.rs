//! IPVS mode's own logic at 20,000 Services × 10 endpoints, without a kernel: the whole plan a
//! full sync starts from, and one Service port's plan, which is what a one-endpoint sync
//! recomputes before diffing. Kernel time is measured inside UML by the `ipvs_sync` bench.
//!
//! Run: `cargo bench -p kproxy-benches --bench ipvs_plan`.

use backend_ipvs::plan::{port_plan, Plan, PlanContext};
use criterion::{criterion_group, criterion_main, Criterion};
use proxy_core::IpFamily;

fn context() -> PlanContext {
    PlanContext {
        family: IpFamily::V4,
        scheduler: "rr".into(),
        node_name: kproxy_benches::BENCH_NODE.into(),
        node_port_ips: vec!["192.168.56.10".parse().unwrap()],
        node_addresses: ["192.168.56.10".parse().unwrap()].into(),
        primary_ip: Some("192.168.56.10".parse().unwrap()),
    }
}

fn plans(c: &mut Criterion) {
    let mut group = c.benchmark_group("ipvs_plan");
    group.sample_size(20);
    let ctx = context();
    for n in [5_000usize, 20_000] {
        let (_, state) = kproxy_benches::build_state(&kproxy_benches::cluster(n, 10));
        group.bench_function(format!("whole_state/{n}"), |b| {
            b.iter(|| Plan::of_state(&state, &ctx))
        });
        let (_, entry) = state.service_ports().nth(n / 2).expect("a port");
        group.bench_function(format!("one_port/{n}"), |b| {
            b.iter(|| port_plan(entry, &ctx))
        });
    }
    group.finish();
}

criterion_group!(benches, plans);
criterion_main!(benches);
