//! Snapshot of the state built from the bundled examples, as `kproxy state` prints it.

use proxy_core::{
    describe, EndpointSliceHandler, IpFamily, NodeHandler, NodeInfo, PendingChanges, ProxyState,
    ServiceFilter, ServiceHandler,
};

fn state_of_examples(family: IpFamily) -> ProxyState {
    let m = fixtures::examples();
    let mut p = PendingChanges::new(family, fixtures::EXAMPLE_NODE, ServiceFilter::default());
    m.services.iter().for_each(|s| p.on_service_add(s));
    m.endpoint_slices
        .iter()
        .for_each(|s| p.on_endpoint_slice_add(s));
    m.nodes.iter().for_each(|n| p.on_node_change(n));
    let mut s = ProxyState::new(family, NodeInfo::named(fixtures::EXAMPLE_NODE));
    s.apply(&mut p);
    s
}

#[test]
fn examples_ipv4() {
    insta::assert_snapshot!(describe(&state_of_examples(IpFamily::V4)));
}

#[test]
fn examples_ipv6() {
    insta::assert_snapshot!(describe(&state_of_examples(IpFamily::V6)));
}
