//! Conformance with upstream kube-proxy's own expectation: the services of its
//! `TestOverallIPTablesRules` (re-created as manifests in `upstream/overall.yaml`) render to the
//! rules and chains its test expects (`upstream/overall.expected`, upstream's expected
//! iptables-restore input, kept as the oracle), nfacct counters included. Rule order within a
//! chain is compared too; the order of chains and of the per-service blocks is not (kproxy writes
//! each Service's chains together).

use std::collections::BTreeMap;

use backend_iptables::{RenderConfig, Renderer};
use proxy_core::{
    EndpointSliceHandler, IpFamily, NodeInfo, PendingChanges, ProxyState, ServiceFilter,
    ServiceHandler,
};

/// Per table: the declared chains (sorted) and each chain's rules in order.
type Tables = BTreeMap<String, (Vec<String>, BTreeMap<String, Vec<String>>)>;

fn parse(text: &str) -> Tables {
    let mut tables = Tables::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(t) = line.strip_prefix('*') {
            current = t.to_owned();
            tables.entry(current.clone()).or_default();
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap().to_owned();
            tables.get_mut(&current).unwrap().0.push(name);
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap().to_owned();
            tables
                .get_mut(&current)
                .unwrap()
                .1
                .entry(chain)
                .or_default()
                .push(line.to_owned());
        }
    }
    for (decls, _) in tables.values_mut() {
        decls.sort();
    }
    tables
}

#[test]
fn upstreams_overall_example_renders_as_upstream_expects() {
    let manifests =
        fixtures::load_str("overall.yaml", include_str!("upstream/overall.yaml")).unwrap();
    let mut pending = PendingChanges::new(IpFamily::V4, "test-node", ServiceFilter::default());
    for s in &manifests.services {
        pending.on_service_add(s);
    }
    for s in &manifests.endpoint_slices {
        pending.on_endpoint_slice_add(s);
    }
    let mut state = ProxyState::new(IpFamily::V4, NodeInfo::named("test-node"));
    state.apply(&mut pending);

    let mut config =
        RenderConfig::new(IpFamily::V4).with_cluster_cidr(Some("10.0.0.0/8".parse().unwrap()));
    config.node_ips = vec!["192.168.0.2".parse().unwrap()];
    config.nfacct = true;
    let rendered = Renderer::new(config).unwrap().render_full_string(&state);

    let got = parse(&rendered);
    let want = parse(include_str!("upstream/overall.expected"));
    for (table, (want_decls, want_rules)) in &want {
        let (got_decls, got_rules) = &got[table];
        assert_eq!(got_decls, want_decls, "{table}: declared chains");
        for (chain, rules) in want_rules {
            assert_eq!(got_rules.get(chain), Some(rules), "{table} {chain}");
        }
        assert_eq!(
            got_rules.keys().collect::<Vec<_>>(),
            want_rules.keys().collect::<Vec<_>>(),
            "{table}: chains with rules"
        );
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
}
