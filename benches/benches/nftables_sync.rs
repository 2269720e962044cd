//! nftables mode's one-endpoint sync at 5,000 and 20,000 Services × 10 endpoints, on this
//! machine's kernel in a network namespace of the bench's own: a partial sync that adds one
//! endpoint, and one that takes it away again (each rewrites the Service port's ranges in its
//! endpoint map: three messages, one transaction). Also the whole plan of a state (what every
//! full load computes before it sends anything). Loading the table from empty, the kernel's
//! floors and `nft -f` of the same ruleset are measured by the `nft_scale` example.
//!
//! Run (root): `cargo bench -p kproxy-benches --bench nftables_sync`.

use backend_nftables::{NftablesProxier, NftablesSettings};
use criterion::Criterion;
use proxy_core::datapath::DetectLocalMode;
use proxy_core::Proxier;

fn settings() -> NftablesSettings {
    NftablesSettings::new(DetectLocalMode::ClusterCidr(vec!["10.0.0.0/8"
        .parse()
        .expect("cidr")]))
}

fn one_endpoint_change(c: &mut Criterion) {
    let mut group = c.benchmark_group("nftables_one_endpoint_change");
    group.sample_size(30);
    for n in [5_000usize, 20_000] {
        let manifests = kproxy_benches::cluster(n, 10);
        let (mut pending, mut state) = kproxy_benches::build_state(&manifests);
        let mut p = NftablesProxier::open(proxy_core::IpFamily::V4, settings())
            .expect("proxier")
            .with_node_addresses(vec!["192.168.0.1".parse().expect("ip")]);
        p.sync(&state, &state.resync_diff()).expect("load");
        let i = n / 2;
        let old = manifests.endpoint_slices[i].clone();
        let new = kproxy_benches::with_extra_endpoint(&old, i);
        // Each iteration adds the endpoint and removes it again; each sync is timed alone, the
        // state updates (proxy-core's, measured elsewhere) are not.
        group.bench_function(format!("add_then_remove/{n}"), |b| {
            b.iter_custom(|iters| {
                kproxy_benches::time_add_then_remove(
                    iters,
                    &mut pending,
                    &mut state,
                    &old,
                    &new,
                    |state, diff| {
                        p.sync(state, diff).expect("sync");
                    },
                )
            })
        });
        p.cleanup().expect("cleanup");
    }
    group.finish();
}

fn whole_plan(c: &mut Criterion) {
    let mut group = c.benchmark_group("nftables_plan");
    group.sample_size(10);
    for n in [5_000usize, 20_000] {
        let (_, state) = kproxy_benches::build_state(&kproxy_benches::cluster(n, 10));
        let ctx = backend_nftables::proxier::plan_context(
            proxy_core::IpFamily::V4,
            &settings(),
            &state,
            Some(&["192.168.0.1".parse().expect("ip")]),
        );
        group.bench_function(format!("all_ports/{n}"), |b| {
            b.iter(|| backend_nftables::render::plans(&state, &ctx))
        });
    }
    group.finish();
}

fn main() {
    let root = fixtures::running_as_root();
    let mut c = Criterion::default().configure_from_args();
    whole_plan(&mut c);
    if root {
        // A network namespace of the bench's own (this thread is the only one yet).
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
        one_endpoint_change(&mut c);
    } else {
        eprintln!("nftables_one_endpoint_change skipped: needs root for a network namespace");
    }
    c.final_summary();
}
