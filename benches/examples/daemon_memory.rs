//! Where the daemon's memory goes at N Services × M endpoints: the live heap of each part a running
//! daemon holds (counted by a wrapping allocator, so fragmentation is not in these figures), to set
//! beside the RSS `scale_e2e` measures.
//!
//! Run: `cargo run --release -p kproxy-benches --example daemon_memory -- [N, default 20000] [M, default 10]`
//!
//! Parts, in the order a daemon builds them: the typed API objects its sources keep (one copy per
//! object, for old/new comparison — and a second while a re-list is in progress), the desired state
//! and change trackers, the iptables renderer after a full render, and the restore text of that
//! render.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use backend_iptables::Renderer;
use kproxy_benches::{iptables_config, BENCH_NODE};
use proxy_core::{
    EndpointSliceHandler, IpFamily, NodeInfo, PendingChanges, ProxyState, ServiceFilter,
    ServiceHandler,
};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_mib() -> f64 {
    LIVE.load(Ordering::Relaxed) as f64 / (1 << 20) as f64
}

fn main() {
    let mut args = std::env::args().skip(1);
    let services: usize = args.next().map_or(20_000, |a| a.parse().expect("N"));
    let endpoints: usize = args.next().map_or(10, |a| a.parse().expect("M"));
    let config = fixtures::ScaleConfig::new(services, endpoints);

    let base = live_mib();
    let mut svc_objects = BTreeMap::new();
    let mut slice_objects = BTreeMap::new();
    for i in 0..services {
        let (svc, slice) = fixtures::generate_one(&config, i);
        svc_objects.insert(format!("ns1/{i}"), svc);
        slice_objects.insert(format!("ns1/{i}"), slice);
    }
    let after_objects = live_mib();

    let mut pending = PendingChanges::new(IpFamily::V4, BENCH_NODE, ServiceFilter::default());
    svc_objects.values().for_each(|s| pending.on_service_add(s));
    slice_objects
        .values()
        .for_each(|s| pending.on_endpoint_slice_add(s));
    let mut state = ProxyState::new(IpFamily::V4, NodeInfo::named(BENCH_NODE));
    state.apply(&mut pending);
    let after_state = live_mib();

    let mut renderer = Renderer::new(iptables_config()).unwrap();
    let mut text = Vec::new();
    renderer.render_full_to(&state, &mut text).unwrap();
    let text_mib = text.len() as f64 / (1 << 20) as f64;
    drop(text);
    let after_render = live_mib();

    println!("{services} Services × {endpoints} endpoints, live heap by part:");
    println!(
        "| typed API objects kept by the sources (Services + EndpointSlices) | {:.1} MiB |",
        after_objects - base
    );
    println!(
        "| state + change trackers (proxy-core) | {:.1} MiB |",
        after_state - after_objects
    );
    println!(
        "| iptables renderer after a full render | {:.1} MiB |",
        after_render - after_state
    );
    println!("| one full restore text (transient) | {text_mib:.1} MiB |");
    drop((svc_objects, slice_objects));
    println!(
        "| everything above but the API objects | {:.1} MiB |",
        live_mib() - base
    );
    drop((state, pending, renderer));
}
