//! Property: any sequence of add/update/delete events, applied through the trackers and diffs with
//! syncs at random points, ends in the same state as building it from scratch from the final objects;
//! and the diffs, replayed on a mirror, reproduce the state after every sync; and the address-level
//! view, updated from each diff, equals the view computed from scratch, its lists being exactly the
//! set differences.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use fixtures::builder::{EndpointBuilder, NodeBuilder, ServiceBuilder, SliceBuilder};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proptest::prelude::*;
use proxy_core::{
    AddressTracker, EndpointSliceHandler, Frontend, FrontendAddress, IpFamily, NodeHandler,
    NodeInfo, PendingChanges, ProxyState, ServiceFilter, ServiceHandler, ServicePortEntry,
    ServicePortName, StateDiff,
};

const NODE: &str = "n0";
const SERVICES: usize = 4;
const SLICES: usize = 6;

#[derive(Clone, Debug)]
struct ServiceVariant {
    ports: u8,
    policy: u8,
    affinity: bool,
    /// External IPs: none, one shared by every Service, or that one and the Service's own.
    external: u8,
}

#[derive(Clone, Debug)]
struct EndpointVariant {
    ip: u8,
    node: u8,
    condition: u8,
    hint: u8,
}

#[derive(Clone, Debug)]
struct SliceVariant {
    service: usize,
    ports: u8,
    endpoints: Vec<EndpointVariant>,
}

#[derive(Clone, Debug)]
enum Event {
    Service(usize, Option<ServiceVariant>),
    Slice(usize, Option<SliceVariant>),
    Node(u8),
    Sync,
}

fn build_service(i: usize, v: &ServiceVariant) -> Service {
    let name = format!("s{i}");
    let ip = format!("172.30.0.{}", i + 1);
    let mut b = ServiceBuilder::new("ns", &name, &ip);
    if v.policy == 2 {
        b = b.type_("NodePort").external_traffic_local();
    }
    let np = |k: i32| 30000 + (i as i32) * 10 + k;
    let add = |b: ServiceBuilder, pname: &str, port: i32, proto: &str, k: i32| {
        if v.policy == 2 {
            b.node_port(pname, port, proto, np(k))
        } else {
            b.port(pname, port, proto)
        }
    };
    b = match v.ports {
        0 => add(b, "p80", 80, "TCP", 0),
        1 => add(add(b, "p80", 80, "TCP", 0), "dns", 53, "UDP", 1),
        2 => add(b, "dns", 53, "UDP", 1),
        _ => add(add(b, "bad", 0, "TCP", 2), "p80", 80, "TCP", 0), // one invalid port
    };
    if v.policy == 1 {
        b = b.internal_traffic_local();
    }
    if v.affinity {
        b = b.client_ip_affinity(Some(60));
    }
    let own = format!("192.0.2.{}", 10 + i);
    b = match v.external {
        0 => b,
        1 => b.external_ips(&["192.0.2.1"]),
        2 => b.external_ips(&["192.0.2.1", &own]),
        // s0's cluster IP: refused while s0 exists (frontend ownership), its own for s0.
        _ => b.external_ips(&["172.30.0.1", &own]),
    };
    b.build()
}

fn build_slice(j: usize, v: &SliceVariant) -> EndpointSlice {
    let mut b = SliceBuilder::new("ns", &format!("sl{j}"), &format!("s{}", v.service));
    b = match v.ports {
        0 => b.port("p80", 8080, "TCP"),
        1 => b.port("p80", 8080, "TCP").port("dns", 5353, "UDP"),
        _ => b.port("dns", 5353, "UDP"),
    };
    for e in &v.endpoints {
        let ip = format!("10.0.0.{}", e.ip);
        let mut eb = match e.condition {
            0 | 1 => EndpointBuilder::ready(&ip),
            2 => EndpointBuilder::with_conditions(&ip, false, true, true),
            _ => EndpointBuilder::with_conditions(&ip, false, false, false),
        };
        eb = eb.node(&format!("n{}", e.node));
        eb = match e.hint {
            0 => eb,
            1 => eb.zone_hints(&["z1"]),
            _ => eb.zone_hints(&["z2"]),
        };
        b = b.endpoint(eb);
    }
    b.build()
}

fn build_node(v: u8) -> Node {
    match v {
        0 => NodeBuilder::new(NODE).build(),
        1 => NodeBuilder::new(NODE).zone("z1").build(),
        _ => NodeBuilder::new(NODE)
            .zone("z2")
            .address("InternalIP", "192.168.0.1")
            .build(),
    }
}

fn service_variant() -> impl Strategy<Value = ServiceVariant> {
    (0u8..4, 0u8..3, any::<bool>(), 0u8..4).prop_map(|(ports, policy, affinity, external)| {
        ServiceVariant {
            ports,
            policy,
            affinity,
            external,
        }
    })
}

fn slice_variant() -> impl Strategy<Value = SliceVariant> {
    let endpoint =
        (0u8..6, 0u8..3, 0u8..4, 0u8..3).prop_map(|(ip, node, condition, hint)| EndpointVariant {
            ip,
            node,
            condition,
            hint,
        });
    (0..SERVICES, 0u8..3, prop::collection::vec(endpoint, 0..4)).prop_map(
        |(service, ports, endpoints)| SliceVariant {
            service,
            ports,
            endpoints,
        },
    )
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (0..SERVICES, prop::option::weighted(0.8, service_variant()))
            .prop_map(|(i, v)| Event::Service(i, v)),
        5 => (0..SLICES, prop::option::weighted(0.8, slice_variant()))
            .prop_map(|(j, v)| Event::Slice(j, v)),
        1 => (0u8..3).prop_map(Event::Node),
        2 => Just(Event::Sync),
    ]
}

type Entries = BTreeMap<ServicePortName, ServicePortEntry>;

fn entries(state: &ProxyState) -> Entries {
    state
        .service_ports()
        .map(|(n, e)| (n.clone(), e.clone()))
        .collect()
}

/// Replays a diff on the mirror, checking each `previous` against what the mirror holds.
fn replay(mirror: &mut Entries, diff: &StateDiff, state: &ProxyState) -> Result<(), TestCaseError> {
    for name in &diff.added {
        prop_assert!(!mirror.contains_key(name), "added {name} was already there");
        mirror.insert(name.clone(), state.get(name).unwrap().clone());
    }
    for change in &diff.changed {
        prop_assert_eq!(mirror.get(&change.name), Some(&change.previous));
        mirror.insert(
            change.name.clone(),
            state.get(&change.name).unwrap().clone(),
        );
    }
    for change in &diff.removed {
        let removed = mirror.remove(&change.name);
        prop_assert_eq!(removed.as_ref(), Some(&change.previous));
    }
    Ok(())
}

/// The address-level view after `diff` equals one computed from scratch, and its lists are exactly
/// the set differences of the views before and after.
fn check_addresses(
    tracker: &mut AddressTracker,
    state: &ProxyState,
    diff: &StateDiff,
) -> Result<(), TestCaseError> {
    let set = |t: &AddressTracker| -> (BTreeSet<IpAddr>, BTreeSet<Frontend>) {
        (t.addresses().collect(), t.frontends().collect())
    };
    let (addrs_before, fronts_before) = set(tracker);
    let ad = tracker.update(state, diff);
    let scratch = AddressTracker::from_state(state);
    prop_assert_eq!(&*tracker, &scratch, "incremental view differs from scratch");
    let (addrs_after, fronts_after) = set(tracker);
    prop_assert_eq!(
        &ad.addresses_added,
        &addrs_after
            .difference(&addrs_before)
            .copied()
            .collect::<Vec<_>>()
    );
    prop_assert_eq!(
        &ad.addresses_removed,
        &addrs_before
            .difference(&addrs_after)
            .copied()
            .collect::<Vec<_>>()
    );
    prop_assert_eq!(
        &ad.frontends_added,
        &fronts_after
            .difference(&fronts_before)
            .copied()
            .collect::<Vec<_>>()
    );
    prop_assert_eq!(
        &ad.frontends_removed,
        &fronts_before
            .difference(&fronts_after)
            .copied()
            .collect::<Vec<_>>()
    );
    // A changed frontend is one present before and after that belongs to a changed port.
    let mut expected_changed = BTreeSet::new();
    for f in fronts_before.intersection(&fronts_after) {
        let of_changed_port = ad.full
            || diff.changed.iter().any(|c| {
                let e = state.get(&c.name).unwrap();
                e.service.protocol == f.protocol
                    && match f.address {
                        FrontendAddress::Service(ip) => {
                            e.service.port == f.port && e.service.service_ips().any(|a| a == ip)
                        }
                        FrontendAddress::NodePort => e.service.node_port == Some(f.port),
                    }
            });
        if of_changed_port {
            expected_changed.insert(*f);
        }
    }
    prop_assert_eq!(
        ad.frontends_changed
            .iter()
            .copied()
            .collect::<BTreeSet<_>>(),
        expected_changed
    );
    Ok(())
}

fn run(events: Vec<Event>) -> Result<(), TestCaseError> {
    let mut services: HashMap<usize, Service> = HashMap::new();
    let mut slices: HashMap<usize, EndpointSlice> = HashMap::new();
    let mut node: Option<Node> = None;
    let mut pending = PendingChanges::new(IpFamily::V4, NODE, ServiceFilter::default());
    let mut state = ProxyState::new(IpFamily::V4, NodeInfo::named(NODE));
    let mut mirror = Entries::new();
    let mut addresses = AddressTracker::new();

    for ev in events.into_iter().chain([Event::Sync]) {
        match ev {
            Event::Service(i, v) => {
                let new = v.map(|v| build_service(i, &v));
                match (services.remove(&i), new) {
                    (None, Some(n)) => {
                        pending.on_service_add(&n);
                        services.insert(i, n);
                    }
                    (Some(o), Some(n)) => {
                        pending.on_service_update(&o, &n);
                        services.insert(i, n);
                    }
                    (Some(o), None) => pending.on_service_delete(&o),
                    (None, None) => {}
                }
            }
            Event::Slice(j, v) => {
                let new = v.map(|v| build_slice(j, &v));
                match (slices.remove(&j), new) {
                    (None, Some(n)) => {
                        pending.on_endpoint_slice_add(&n);
                        slices.insert(j, n);
                    }
                    (Some(o), Some(n)) => {
                        pending.on_endpoint_slice_update(&o, &n);
                        slices.insert(j, n);
                    }
                    (Some(o), None) => pending.on_endpoint_slice_delete(&o),
                    (None, None) => {}
                }
            }
            Event::Node(v) => {
                let n = build_node(v);
                pending.on_node_change(&n);
                node = Some(n);
            }
            Event::Sync => {
                let diff = state.apply(&mut pending);
                check_addresses(&mut addresses, &state, &diff)?;
                replay(&mut mirror, &diff, &state)?;
                prop_assert_eq!(&mirror, &entries(&state));
                let counted: usize = mirror.values().map(|e| e.endpoints.len()).sum();
                prop_assert_eq!(state.total_endpoints(), counted);
            }
        }
    }

    let mut fresh_pending = PendingChanges::new(IpFamily::V4, NODE, ServiceFilter::default());
    for s in services.values() {
        fresh_pending.on_service_add(s);
    }
    for s in slices.values() {
        fresh_pending.on_endpoint_slice_add(s);
    }
    if let Some(n) = &node {
        fresh_pending.on_node_change(n);
    }
    let mut fresh = ProxyState::new(IpFamily::V4, NodeInfo::named(NODE));
    fresh.apply(&mut fresh_pending);
    prop_assert_eq!(entries(&state), entries(&fresh));
    prop_assert_eq!(state.node(), fresh.node());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn incremental_state_equals_state_built_from_scratch(
        events in prop::collection::vec(event(), 0..60)
    ) {
        run(events)?;
    }
}
