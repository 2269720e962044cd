//! The iptables proxier driven in-process, the way the daemon drives it: a full sync, then partial
//! syncs from diffs, recovery from a failed partial restore, and a full resync when the canary chain
//! is flushed away — all checked with real packets. Runs with both iptables variants.

mod testbed;

use std::sync::mpsc;

use backend_iptables::{IptablesProxier, RenderConfig, Renderer};
use fixtures::builder::{EndpointBuilder, ServiceBuilder, SliceBuilder};
use iptables_tool::{IptablesCmd, Variant};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_netlink::ConntrackCleaner;
use proxy_core::{
    EndpointSliceHandler, IpFamily, ManagedProxier, NodeInfo, PendingChanges, Proxier, ProxyState,
    ServiceFilter, ServiceHandler, SyncReport,
};
use testbed::{Bed, Reply, NODE_IP};

const SVC: &str = "172.30.0.20:80";

fn slice(ips: &[&str]) -> EndpointSlice {
    let mut b = SliceBuilder::new("ns1", "web-1", "web")
        .port("http", 8080, "TCP")
        .port("dns", 5353, "UDP");
    for ip in ips {
        b = b.endpoint(EndpointBuilder::ready(ip).node("node-a"));
    }
    b.build()
}

/// Commands for the proxier thread, which lives in the node namespace (so do the iptables
/// processes it starts and its conntrack socket).
enum Step {
    Slice(Box<(EndpointSlice, EndpointSlice)>),
    Sync(mpsc::Sender<Result<SyncReport, String>>),
}

fn spawn_proxier(bed: &Bed, variant: Variant) -> mpsc::Sender<Step> {
    let ns = bed.node.name.clone();
    let (tx, rx) = mpsc::channel::<Step>();
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let config = RenderConfig::new(IpFamily::V4);
        let mut config = config.with_cluster_cidr(Some("10.244.0.0/16".parse().unwrap()));
        config.node_ips = vec![NODE_IP.parse().unwrap()];
        let proxier = IptablesProxier::new(
            Renderer::new(config).unwrap(),
            Box::new(IptablesCmd::new(variant, IpFamily::V4)),
        )
        .with_canary_interval(std::time::Duration::ZERO)
        .with_route_localnet(false);
        // Through the lifecycle the daemon uses, which owns the UDP conntrack cleanup.
        let mut proxier = ManagedProxier::new(Box::new(proxier), IpFamily::V4)
            .with_conntrack(Box::new(ConntrackCleaner::open().unwrap()));
        let mut pending = PendingChanges::new(IpFamily::V4, "node-a", ServiceFilter::default());
        let mut state = ProxyState::new(IpFamily::V4, NodeInfo::named("node-a"));
        pending.on_service_add(
            &ServiceBuilder::new("ns1", "web", "172.30.0.20")
                .port("http", 80, "TCP")
                .port("dns", 53, "UDP")
                .build(),
        );
        for step in rx {
            match step {
                Step::Slice(pair) => pending.on_endpoint_slice_update(&pair.0, &pair.1),
                Step::Sync(reply) => {
                    let diff = state.apply(&mut pending);
                    let result = proxier.sync(&state, &diff).map_err(|e| {
                        let mut s = e.to_string();
                        let mut src = std::error::Error::source(&e);
                        while let Some(e) = src {
                            s.push_str(&format!(": {e}"));
                            src = e.source();
                        }
                        s
                    });
                    let _ = reply.send(result);
                }
            }
        }
    });
    tx
}

fn sync(tx: &mpsc::Sender<Step>) -> Result<SyncReport, String> {
    let (rtx, rrx) = mpsc::channel();
    tx.send(Step::Sync(rtx)).unwrap();
    rrx.recv().unwrap()
}

fn pods_seen(bed: &Bed, n: usize) -> std::collections::BTreeSet<String> {
    bed.tcp_many("client", SVC, n)
        .into_iter()
        .map(|r| {
            r.pod()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{r:?}"))
        })
        .collect()
}

fn run(variant: Variant) {
    let Some(bed) = Bed::new(
        "proxier",
        &[
            ("pod-a", "10.244.1.11"),
            ("pod-b", "10.244.1.12"),
            ("pod-c", "10.244.1.13"),
        ],
    ) else {
        return;
    };
    let iptables = format!("iptables-{variant}");
    let tx = spawn_proxier(&bed, variant);

    // Full sync with pod-a and pod-b.
    let ab = slice(&["10.244.1.11", "10.244.1.12"]);
    tx.send(Step::Slice(Box::new((slice(&[]), ab.clone()))))
        .unwrap();
    let first = sync(&tx).unwrap();
    assert!(first.full, "the first sync is full");
    let seen = pods_seen(&bed, 30);
    assert_eq!(
        seen,
        ["pod-a", "pod-b"].map(String::from).into(),
        "{seen:?}"
    );

    // Partial: pod-b replaced by pod-c.
    let ac = slice(&["10.244.1.11", "10.244.1.13"]);
    tx.send(Step::Slice(Box::new((ab.clone(), ac.clone()))))
        .unwrap();
    let second = sync(&tx).unwrap();
    assert!(!second.full, "an endpoint change is a partial sync");
    let seen = pods_seen(&bed, 30);
    assert_eq!(
        seen,
        ["pod-a", "pod-c"].map(String::from).into(),
        "{seen:?}"
    );

    // Someone deletes kproxy's service dispatch rules: the next partial restore's `-D` fails, the
    // sync reports it, and the one after is full and repairs everything.
    bed.node
        .exec(&[&iptables, "-t", "nat", "-F", "KUBE-SERVICES"])
        .unwrap();
    tx.send(Step::Slice(Box::new((ac.clone(), ab.clone()))))
        .unwrap();
    // A partial sync that does not touch KUBE-SERVICES succeeds; make one that must: no endpoints.
    let empty = slice(&[]);
    tx.send(Step::Slice(Box::new((ab.clone(), empty.clone()))))
        .unwrap();
    let failed = sync(&tx);
    assert!(
        failed.is_err(),
        "a -D of a rule that is gone must fail: {failed:?}"
    );
    let repaired = sync(&tx).unwrap();
    assert!(repaired.full, "after a failure the next sync is full");
    assert_eq!(
        bed.tcp("client", SVC),
        Reply::Refused,
        "no endpoints: REJECT"
    );

    // The canary disappears (tables flushed by someone): the next sync is full.
    tx.send(Step::Slice(Box::new((empty, ab.clone())))).unwrap();
    bed.node
        .exec(&[&iptables, "-t", "mangle", "-X", "KUBE-PROXY-CANARY"])
        .unwrap();
    let after_flush = sync(&tx).unwrap();
    assert!(after_flush.full, "a lost canary forces a full sync");
    let seen = pods_seen(&bed, 30);
    assert_eq!(
        seen,
        ["pod-a", "pod-b"].map(String::from).into(),
        "{seen:?}"
    );
    assert!(bed
        .saved(variant.to_string().as_str())
        .contains(":KUBE-PROXY-CANARY"));
}

#[test]
fn nft_full_partial_failure_and_canary() {
    run(Variant::Nft);
}

#[test]
fn legacy_full_partial_failure_and_canary() {
    run(Variant::Legacy);
}
