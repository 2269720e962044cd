//! The rendered ruleset of every bundled example, as text. A change to the output shows up here.

mod common;

use backend_iptables::Renderer;
use proxy_core::datapath::{DetectLocalMode, NodePortAddressSpec};
use proxy_core::IpFamily;

fn render(family: IpFamily, tweak: impl FnOnce(&mut backend_iptables::RenderConfig)) -> String {
    let state = common::examples_state(family);
    let mut config = common::examples_config(family, &state);
    tweak(&mut config);
    let mut r = Renderer::new(config).unwrap();
    r.render_full_string(&state)
}

#[test]
fn examples_ipv4() {
    insta::assert_snapshot!(render(IpFamily::V4, |_| {}));
}

#[test]
fn examples_ipv6() {
    insta::assert_snapshot!(render(IpFamily::V6, |_| {}));
}

#[test]
fn examples_ipv4_masquerade_all_no_localhost_node_ports() {
    insta::assert_snapshot!(render(IpFamily::V4, |c| {
        c.masquerade_all = true;
        c.detect_local = DetectLocalMode::ClusterCidr(Vec::new());
        c.localhost_node_ports = false;
        c.masquerade_random_fully = true;
    }));
}

#[test]
fn examples_ipv4_node_port_addresses() {
    insta::assert_snapshot!(render(IpFamily::V4, |c| {
        c.node_port_addresses =
            NodePortAddressSpec::parse(&["192.168.56.0/24", "127.0.0.0/8"]).unwrap();
    }));
}

#[test]
fn same_state_same_bytes() {
    let state = common::examples_state(IpFamily::V4);
    let config = common::examples_config(IpFamily::V4, &state);
    let a = Renderer::new(config.clone())
        .unwrap()
        .render_full_string(&state);
    let mut r = Renderer::new(config).unwrap();
    let b = r.render_full_string(&state);
    let c = r.render_full_string(&state);
    assert_eq!(a, b);
    assert_eq!(b, c, "a second render with warm caches is identical");
}
