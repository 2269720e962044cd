//! `IptablesProxier` against the faithful fake: which syncs are full, that jumps are added once,
//! that a failed restore leads to a full resync, and what the kernel ends up with — without root.

mod common;

use backend_iptables::jumps::jump_rules;
use backend_iptables::{IptablesProxier, Renderer};
use iptables_tool::fake::Call;
use iptables_tool::ruleset::Ruleset;
use proxy_core::{EndpointSliceHandler, IpFamily, Proxier};

use iptables_tool::fake::SharedFake as Shared;

/// What the kernel must hold after a full sync: a fresh full render, the jumps and the canary.
fn expected_kernel(
    config: &backend_iptables::RenderConfig,
    state: &proxy_core::ProxyState,
) -> Ruleset {
    let mut expected = Ruleset::new();
    expected
        .apply_restore(
            &Renderer::new(config.clone())
                .unwrap()
                .render_full_string(state),
        )
        .unwrap();
    expected.add_jumps(&jump_rules(true)).unwrap();
    for table in backend_iptables::proxier::CANARY_TABLES {
        expected
            .command(&["-t", table, "-N", "KUBE-PROXY-CANARY"])
            .unwrap();
    }
    expected
}

/// A proxier on `config` applying to `fake`, leaving the host's sysctls alone.
fn fake_proxier(config: &backend_iptables::RenderConfig, fake: Shared) -> IptablesProxier {
    IptablesProxier::new(Renderer::new(config.clone()).unwrap(), Box::new(fake))
        .with_route_localnet(false)
}

fn count_jumps(rules: &Ruleset, table: &str, from: &str, to: &str) -> usize {
    rules
        .table(table)
        .unwrap()
        .chain(from)
        .unwrap()
        .iter()
        .filter(|r| r.jump_target() == Some(to))
        .count()
}

#[test]
fn full_then_partial_then_recovery() {
    let m = fixtures::examples();
    let (mut pending, mut state) = common::state_of(&m, IpFamily::V4, fixtures::EXAMPLE_NODE);
    let config = common::examples_config(IpFamily::V4, &state);
    let fake = Shared::default();
    let mut proxier =
        fake_proxier(&config, fake.clone()).with_canary_interval(std::time::Duration::ZERO);

    // First sync: full; the kernel holds exactly a full render plus the jumps and the canary.
    let report = proxier.sync(&state, &state.resync_diff()).unwrap();
    assert!(report.full);
    {
        let f = fake.0.lock().unwrap();
        f.rules
            .equivalent_to(&expected_kernel(&config, &state))
            .unwrap();
    }

    // A second full sync (periodic resync) adds no jump twice.
    proxier.sync(&state, &state.resync_diff()).unwrap();
    {
        let f = fake.0.lock().unwrap();
        assert_eq!(
            count_jumps(&f.rules, "nat", "PREROUTING", "KUBE-SERVICES"),
            1
        );
        assert_eq!(count_jumps(&f.rules, "filter", "INPUT", "KUBE-FIREWALL"), 1);
    }

    // An endpoint change: one small partial restore.
    let slice = m
        .endpoint_slices
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("web-x7k2p"))
        .unwrap();
    let mut changed = slice.clone();
    changed.endpoints.as_mut().unwrap()[1].addresses = vec!["10.244.2.99".into()];
    pending.on_endpoint_slice_update(slice, &changed);
    let diff = state.apply(&mut pending);
    let before = fake.0.lock().unwrap().calls.len();
    let report = proxier.sync(&state, &diff).unwrap();
    assert!(!report.full);
    {
        let f = fake.0.lock().unwrap();
        let new_calls = &f.calls[before..];
        let restores: Vec<&String> = new_calls
            .iter()
            .filter_map(|c| match c {
                Call::Restore(t) => Some(t),
                _ => None,
            })
            .collect();
        assert_eq!(restores.len(), 1, "{new_calls:?}");
        assert!(restores[0].len() < 2048, "{}", restores[0]);
        assert!(
            !new_calls.iter().any(|c| matches!(c, Call::Save(_))),
            "no save on a partial sync"
        );
    }

    // A failing restore: the sync errors with context, and the next one is full.
    changed.endpoints.as_mut().unwrap()[1].addresses = vec!["10.244.2.98".into()];
    pending.on_endpoint_slice_update(slice, &changed);
    let diff = state.apply(&mut pending);
    fake.0.lock().unwrap().fail_next_restore = true;
    let err = proxier.sync(&state, &diff).unwrap_err();
    assert!(
        err.to_string()
            .contains("iptables-restore of the partial update"),
        "{err}"
    );
    let diff = state.apply(&mut pending);
    let report = proxier.sync(&state, &diff).unwrap();
    assert!(report.full, "the sync after a failure is full");
    {
        let f = fake.0.lock().unwrap();
        f.rules
            .equivalent_to(&expected_kernel(&config, &state))
            .unwrap();
    }

    // The canary disappears: the next sync is full even with an empty diff.
    fake.0
        .lock()
        .unwrap()
        .rules
        .command(&["-t", "mangle", "-X", "KUBE-PROXY-CANARY"])
        .unwrap();
    let diff = state.apply(&mut pending);
    let report = proxier.sync(&state, &diff).unwrap();
    assert!(report.full);

    // Cleanup leaves nothing of ours.
    proxier.cleanup().unwrap();
    let f = fake.0.lock().unwrap();
    for table in ["filter", "nat", "mangle"] {
        let saved = f.rules.save(table).unwrap();
        assert!(!saved.contains("KUBE-"), "{saved}");
    }
}

#[test]
fn restart_deletes_chains_a_previous_run_left() {
    let m = fixtures::examples();
    let (_, state) = common::state_of(&m, IpFamily::V4, fixtures::EXAMPLE_NODE);
    let config = common::examples_config(IpFamily::V4, &state);
    let fake = Shared::default();
    // A previous run left a chain for a Service that no longer exists.
    fake.0
        .lock()
        .unwrap()
        .rules
        .apply_restore("*nat\n:KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]\n-A KUBE-SVC-AAAAAAAAAAAAAAAA -j RETURN\nCOMMIT\n")
        .unwrap();
    let mut proxier = fake_proxier(&config, fake.clone());
    proxier.sync(&state, &state.resync_diff()).unwrap();
    let saved = fake.0.lock().unwrap().rules.save("nat").unwrap();
    assert!(!saved.contains("KUBE-SVC-AAAAAAAAAAAAAAAA"), "{saved}");
    assert!(saved.contains("KUBE-SVC-"), "current chains are there");
}

/// A Node update (new address, new pod CIDR, new label) reaches the rules through the state: the
/// same proxier — its name cache, what it learned at start — renders the new node-derived rules.
#[test]
fn a_node_update_is_applied_without_a_new_proxier() {
    use proxy_core::datapath::{DetectLocalMode, NodePortAddressSpec};
    use proxy_core::NodeHandler;

    let m = fixtures::examples();
    let (mut pending, mut state) = common::state_of(&m, IpFamily::V4, fixtures::EXAMPLE_NODE);
    let mut config = backend_iptables::RenderConfig::new(IpFamily::V4);
    config.detect_local = DetectLocalMode::NodeCidr;
    config.node_port_addresses = NodePortAddressSpec::parse(&["192.168.0.0/16"]).unwrap();
    let fake = Shared::default();
    let mut proxier = fake_proxier(&config, fake.clone());
    proxier.sync(&state, &state.resync_diff()).unwrap();
    let nat = || fake.0.lock().unwrap().rules.save("nat").unwrap();
    let before = nat();
    assert!(
        !before.contains("-d 192.168.77.7"),
        "the new address is not there yet"
    );

    let node = fixtures::builder::NodeBuilder::new(fixtures::EXAMPLE_NODE)
        .address("InternalIP", "192.168.77.7")
        .label("team", "blue")
        .build();
    let mut node = node;
    node.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
        pod_cidrs: Some(vec!["10.244.9.0/24".into()]),
        ..Default::default()
    });
    pending.on_node_change(&node);
    let diff = state.apply(&mut pending);
    assert!(diff.node_changed);
    let report = proxier.sync(&state, &diff).unwrap();
    assert!(report.full, "node-wide rules are rewritten");
    let after = nat();
    assert!(
        after.contains("-d 192.168.77.7/32 -j KUBE-NODEPORTS")
            || after.contains("-d 192.168.77.7 -j KUBE-NODEPORTS"),
        "NodePorts follow the Node's new address:\n{after}"
    );
    assert!(
        after.contains("! -s 10.244.9.0/24") && !before.contains("10.244.9.0/24"),
        "NodeCIDR detection follows the Node's pod CIDR:\n{after}"
    );
    fake.0
        .lock()
        .unwrap()
        .rules
        .equivalent_to(&expected_kernel(&config, &state))
        .unwrap();
}

/// Rules deleted behind kproxy's back come back at the next full sync (the periodic resync):
/// flushed built-in chains get their jumps again, lost canaries are recreated, and a per-service
/// chain kproxy did not write (a late predecessor's, or a hand-made one) is deleted.
#[test]
fn a_full_sync_repairs_what_was_tampered_with() {
    let m = fixtures::examples();
    let (_, state) = common::state_of(&m, IpFamily::V4, fixtures::EXAMPLE_NODE);
    let config = common::examples_config(IpFamily::V4, &state);
    let fake = Shared::default();
    let mut proxier = fake_proxier(&config, fake.clone());
    proxier.sync(&state, &state.resync_diff()).unwrap();

    {
        let mut f = fake.0.lock().unwrap();
        for args in [
            &["-t", "nat", "-F", "OUTPUT"][..],
            &["-t", "nat", "-F", "PREROUTING"],
            &["-t", "filter", "-F", "INPUT"],
            &["-t", "nat", "-X", "KUBE-PROXY-CANARY"],
        ] {
            f.rules.command(args).unwrap();
        }
        f.rules
            .apply_restore(
                "*nat\n:KUBE-SEP-ZZZZZZZZZZZZZZZZ - [0:0]\n-A KUBE-SEP-ZZZZZZZZZZZZZZZZ -j RETURN\nCOMMIT\n",
            )
            .unwrap();
    }
    let report = proxier.sync(&state, &state.resync_diff()).unwrap();
    assert!(report.full);
    let f = fake.0.lock().unwrap();
    f.rules
        .equivalent_to(&expected_kernel(&config, &state))
        .unwrap();
    assert!(!f
        .rules
        .save("nat")
        .unwrap()
        .contains("KUBE-SEP-ZZZZZZZZZZZZZZZZ"));
}

/// A partial sync notices a canary lost from nat or filter (not only mangle) and syncs fully.
#[test]
fn a_canary_lost_from_any_table_forces_a_full_sync() {
    let m = fixtures::examples();
    let (mut pending, mut state) = common::state_of(&m, IpFamily::V4, fixtures::EXAMPLE_NODE);
    let config = common::examples_config(IpFamily::V4, &state);
    let fake = Shared::default();
    let mut proxier =
        fake_proxier(&config, fake.clone()).with_canary_interval(std::time::Duration::ZERO);
    proxier.sync(&state, &state.resync_diff()).unwrap();
    for table in ["filter", "nat"] {
        fake.0
            .lock()
            .unwrap()
            .rules
            .command(&["-t", table, "-X", "KUBE-PROXY-CANARY"])
            .unwrap();
        let diff = state.apply(&mut pending);
        let report = proxier.sync(&state, &diff).unwrap();
        assert!(report.full, "a canary lost from {table}");
        fake.0
            .lock()
            .unwrap()
            .rules
            .equivalent_to(&expected_kernel(&config, &state))
            .unwrap();
    }
}

#[test]
fn scale_advice_is_given_from_its_threshold() {
    let m = fixtures::examples();
    let (_pending, state) = common::state_of(&m, IpFamily::V4, fixtures::EXAMPLE_NODE);
    let config = common::examples_config(IpFamily::V4, &state);
    assert!(state.len() > 1, "the examples hold several Service ports");
    let proxier = || fake_proxier(&config, Shared::default());

    let mut below = proxier().with_scale_advice(state.len() + 1);
    below.sync(&state, &state.resync_diff()).unwrap();
    assert!(!below.scale_advised(), "one Service port short: no advice");

    let mut at = proxier().with_scale_advice(state.len());
    assert!(!at.scale_advised(), "nothing advised before a sync");
    at.sync(&state, &state.resync_diff()).unwrap();
    assert!(at.scale_advised());

    let mut unset = proxier();
    unset.sync(&state, &state.resync_diff()).unwrap();
    assert!(!unset.scale_advised(), "no advice unless asked for");
}
