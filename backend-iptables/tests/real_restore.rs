//! The rendered text through the real iptables-restore (nft and legacy), in a throw-away network
//! namespace: full renders and partial ones (`-D`, `-I`, `-X`) must be accepted, and leave as many
//! rules per chain as the in-memory iptables predicts. Needs root and iptables; skips (saying why)
//! without them. The datapath itself (packets) is tested with the applier.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use backend_iptables::{RenderConfig, Renderer};
use fixtures::builder::{EndpointBuilder, SliceBuilder};
use iptables_tool::ruleset::Ruleset;
use proxy_core::{EndpointSliceHandler, IpFamily, ServiceHandler};

/// A network namespace deleted on drop, even when the test fails.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Option<Self> {
        let name = format!("kpx-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(Self(name))
    }

    fn run(&self, program: &str, args: &[&str], stdin: &str) -> Result<String, String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0, program])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn skip_reason(variant: &str) -> Option<String> {
    if !fixtures::running_as_root() {
        return Some("not root".into());
    }
    let tool = format!("iptables-{variant}-restore");
    (!fixtures::command_exists(&tool)).then(|| format!("{tool} not installed"))
}

/// Rules per (table, chain) in iptables-save output, for kproxy's chains.
fn count_saved(save: &str) -> BTreeMap<(String, String), usize> {
    let mut table = String::new();
    let mut counts = BTreeMap::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_owned();
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest.split_whitespace().next().unwrap_or_default();
            if chain.starts_with("KUBE-") {
                *counts.entry((table.clone(), chain.to_owned())).or_default() += 1;
            }
        }
    }
    counts
}

fn count_fake(rules: &Ruleset) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for table in ["filter", "nat"] {
        for (chain, list) in rules.table(table).unwrap().chains() {
            if chain.starts_with("KUBE-") && !list.is_empty() {
                counts.insert((table.to_owned(), chain.to_owned()), list.len());
            }
        }
    }
    counts
}

fn check_variant(variant: &str) {
    if let Some(why) = skip_reason(variant) {
        eprintln!("skipping real iptables-{variant} test: {why}");
        return;
    }
    let ns = Netns::new(variant).expect("create a network namespace");
    let restore = format!("iptables-{variant}-restore");
    let save = format!("iptables-{variant}-save");

    let m = fixtures::examples();
    let (mut pending, mut state) = common::state_of(&m, IpFamily::V4, fixtures::EXAMPLE_NODE);
    let config: RenderConfig = common::examples_config(IpFamily::V4, &state);
    let mut renderer = Renderer::new(config).unwrap();
    let mut fake = Ruleset::new();

    let full = renderer.render_full_string(&state);
    ns.run(&restore, &["--noflush"], &full)
        .unwrap_or_else(|e| panic!("{restore} rejected the full render: {e}"));
    fake.apply_restore(&full).unwrap();

    // A partial sync with every kind of edit: a service removed (-D, -X), endpoints changed
    // (chain rewrite, -X of an endpoint chain), a service gaining endpoints (filter -D, nat -I).
    let web = m
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("web"))
        .unwrap();
    pending.on_service_delete(web);
    let sticky_slice = m
        .endpoint_slices
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("sticky-h8i9j"))
        .unwrap();
    let mut changed = sticky_slice.clone();
    changed.endpoints.as_mut().unwrap()[0].addresses = vec!["10.244.1.61".into()];
    pending.on_endpoint_slice_update(sticky_slice, &changed);
    pending.on_endpoint_slice_add(
        &SliceBuilder::new("ns1", "empty-1", "empty")
            .port("http", 8080, "TCP")
            .endpoint(EndpointBuilder::ready("10.244.2.70").node("node-b"))
            .build(),
    );
    let diff = state.apply(&mut pending);
    let (partial, summary) = renderer.render_string(&state, &diff);
    assert!(!summary.full);
    ns.run(&restore, &["--noflush"], &partial)
        .unwrap_or_else(|e| panic!("{restore} rejected the partial render: {e}\n{partial}"));
    fake.apply_restore(&partial).unwrap();

    let saved = ns.run(&save, &[], "").expect("iptables-save");
    assert_eq!(count_saved(&saved), count_fake(&fake), "{saved}");

    // A stale -D must fail on the real tool as on the fake (the applier then resyncs fully).
    let bogus = "*nat\n-D KUBE-SERVICES -d 1.2.3.4/32 -j KUBE-MARK-MASQ\nCOMMIT\n";
    assert!(ns.run(&restore, &["--noflush"], bogus).is_err());
    assert!(fake.apply_restore(bogus).is_err());
}

#[test]
fn nft_accepts_full_and_partial_renders() {
    check_variant("nft");
}

#[test]
fn legacy_accepts_full_and_partial_renders() {
    check_variant("legacy");
}
