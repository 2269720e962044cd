//! IPVS mode's one-endpoint sync at 5,000 and 20,000 Services × 10 endpoints, inside the
//! user-mode-linux kernel (this machine's kernel has no IPVS): a partial sync that adds one real
//! server, and one that takes it away again (weight 0, a check of its connections, delete).
//! The bench boots the UML kernel and runs itself inside; without the kernel it says why and
//! does nothing. Loading the table from empty is measured by the `ipvs_scale` example.
//!
//! Run: `cargo bench -p kproxy-benches --bench ipvs_sync`.

use std::time::Duration;

use criterion::Criterion;
use kproxy_benches::ipvs_bed;
use proxy_core::Proxier;

fn one_endpoint_change(c: &mut Criterion) {
    let mut group = c.benchmark_group("ipvs_one_endpoint_change");
    group.sample_size(30);
    for n in [5_000usize, 20_000] {
        ipvs_bed::prepare_node();
        let manifests = kproxy_benches::cluster(n, 10);
        let (mut pending, mut state) = kproxy_benches::build_state(&manifests);
        let mut p = ipvs_bed::proxier();
        p.sync(&state, &state.resync_diff()).expect("load");
        let i = n / 2;
        let old = manifests.endpoint_slices[i].clone();
        let new = ipvs_bed::with_extra_endpoint(&old, i);
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

fn main() {
    if !uml_testbed::inside() {
        let kernel = match uml_testbed::UmlKernel::find() {
            Ok(k) => k,
            Err(why) => {
                eprintln!("ipvs_sync bench skipped: {why}");
                return;
            }
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut spec = uml_testbed::RunSpec::new(std::env::current_exe().expect("exe"), args);
        spec.mem_mib = 3072;
        spec.timeout = Duration::from_secs(3600);
        let out = kernel.run(&spec).expect("UML run");
        print!("{}", out.output);
        std::process::exit(out.status);
    }
    let mut c = Criterion::default().configure_from_args();
    one_endpoint_change(&mut c);
    c.final_summary();
}
