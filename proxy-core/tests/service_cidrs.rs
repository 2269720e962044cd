//! ServiceCIDR objects reach the state as the union of their ranges of the state's family, and a
//! change of that union is a node-wide change for proxiers.

use k8s_openapi::api::networking::v1::{ServiceCIDR, ServiceCIDRSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use proxy_core::{
    IpFamily, NodeInfo, PendingChanges, ProxyState, ServiceCidrHandler, ServiceFilter,
};

fn cidr(name: &str, ranges: &[&str]) -> ServiceCIDR {
    ServiceCIDR {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceCIDRSpec {
            cidrs: Some(ranges.iter().map(|s| (*s).to_owned()).collect()),
        }),
        status: None,
    }
}

#[test]
fn ranges_of_the_family_are_unioned_and_changes_are_node_wide() {
    let mut p = PendingChanges::new(IpFamily::V4, "n", ServiceFilter::default());
    let mut st = ProxyState::new(IpFamily::V4, NodeInfo::named("n"));
    st.apply(&mut p); // the first, full diff
    p.on_service_cidr_change(&cidr("kubernetes", &["10.96.0.0/16", "fd00:96::/112"]));
    p.on_service_cidr_change(&cidr("extra", &["10.97.0.0/16", "not-a-cidr"]));
    let diff = st.apply(&mut p);
    assert!(diff.node_changed);
    assert_eq!(
        st.service_cidrs(),
        &[
            "10.96.0.0/16".parse().unwrap(),
            "10.97.0.0/16".parse().unwrap()
        ]
    );
    assert_eq!(
        p.counters().conversion_warnings_total,
        1,
        "the bad range is reported"
    );
    // The same objects again: nothing changes.
    p.on_service_cidr_change(&cidr("extra", &["10.97.0.0/16", "not-a-cidr"]));
    assert!(!st.apply(&mut p).node_changed);
    p.on_service_cidr_delete(&cidr("extra", &[]));
    assert!(st.apply(&mut p).node_changed);
    assert_eq!(st.service_cidrs(), &["10.96.0.0/16".parse().unwrap()]);
    // The IPv6 state sees the IPv6 range only.
    let mut p6 = PendingChanges::new(IpFamily::V6, "n", ServiceFilter::default());
    let mut st6 = ProxyState::new(IpFamily::V6, NodeInfo::named("n"));
    p6.on_service_cidr_change(&cidr("kubernetes", &["10.96.0.0/16", "fd00:96::/112"]));
    st6.apply(&mut p6);
    assert_eq!(st6.service_cidrs(), &["fd00:96::/112".parse().unwrap()]);
}
