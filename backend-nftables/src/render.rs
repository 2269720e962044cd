//! The plan in `nft` syntax: what `nft -f` takes, laid out as `nft list table` shows a table
//! (`kproxy render --proxy-mode nftables`, snapshot tests, and the cross-check that feeds it to
//! `nft` and compares what `nft` sends with what the proxier sends).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use proxy_core::{IpFamily, ProxyState};

use crate::names::TABLE;
use crate::plan::{
    base_plan, port_plan, BasePlan, PlanContext, PlannedChain, PlannedElement, PlannedSet,
    PortPlan, SequentialRegions, SetKind,
};
use crate::program::TABLE_COMMENT;
use crate::rule::family_keyword;

/// Every port's plan for `state`, in state order (regions of the endpoint maps handed out in
/// that order, as a proxier's full load does).
pub fn plans(state: &ProxyState, ctx: &PlanContext) -> Vec<PortPlan> {
    let mut regions = SequentialRegions::default();
    state
        .service_ports()
        .map(|(name, entry)| port_plan(name, entry, ctx, &mut regions))
        .collect()
}

/// Writes the whole table for `state`.
pub fn write_ruleset(state: &ProxyState, ctx: &PlanContext, out: &mut String) {
    let base = base_plan(ctx);
    let ports = plans(state, ctx);
    write_plans(ctx.family, &base, &ports, out);
}

/// Writes a table from its plans.
pub fn write_plans(family: IpFamily, base: &BasePlan, ports: &[PortPlan], out: &mut String) {
    let ip = family_keyword(family);
    // An element several ports want (a cluster IP in `cluster-ips`; a frontend two Services
    // claim) goes in once; the first in state order wins, as in the proxier.
    let mut by_set: BTreeMap<&str, Vec<&PlannedElement>> = BTreeMap::new();
    let mut seen = ahash::AHashSet::new();
    for e in base
        .elements
        .iter()
        .chain(ports.iter().flat_map(|p| p.elements.iter()))
    {
        if seen.insert((e.set, &e.key)) {
            by_set.entry(e.set).or_default().push(e);
        }
    }
    let _ = writeln!(out, "table {ip} {TABLE} {{");
    let _ = writeln!(out, "\tcomment \"{TABLE_COMMENT}\"");
    for s in base
        .sets
        .iter()
        .chain(ports.iter().flat_map(|p| p.sets.iter()))
    {
        write_set(family, s, by_set.get(s.name.as_str()), out);
    }
    for p in ports {
        if let Some(c) = &p.counter {
            let _ = writeln!(out, "\tcounter {c} {{\n\t}}");
        }
    }
    for c in base
        .chains
        .iter()
        .chain(ports.iter().flat_map(|p| p.chains.iter()))
    {
        write_chain(family, c, out);
    }
    out.push_str("}\n");
}

fn write_element(e: &PlannedElement, out: &mut String) {
    e.key.render(out);
    if let Some((ip, port)) = e.target {
        let _ = write!(out, " : {ip} . {port}");
    }
    if let Some(v) = &e.verdict {
        out.push_str(" : ");
        write_verdict(v, out);
    }
}

fn write_verdict(v: &kproxy_netlink::nftables::expr::Verdict, out: &mut String) {
    use kproxy_netlink::nftables::expr::Verdict;
    let _ = match v {
        Verdict::Accept => write!(out, "accept"),
        Verdict::Drop => write!(out, "drop"),
        Verdict::Return => write!(out, "return"),
        Verdict::Jump(c) => write!(out, "jump {c}"),
        Verdict::Goto(c) => write!(out, "goto {c}"),
    };
}

fn write_set(
    family: IpFamily,
    s: &PlannedSet,
    elements: Option<&Vec<&PlannedElement>>,
    out: &mut String,
) {
    let addr = match family {
        IpFamily::V4 => "ipv4_addr",
        IpFamily::V6 => "ipv6_addr",
    };
    let (keyword, ty) = match s.kind {
        SetKind::Addresses | SetKind::Affinity(_) => ("set", format!("type {addr}")),
        SetKind::AddressPortMap => (
            "map",
            format!("type {addr} . inet_proto . inet_service : verdict"),
        ),
        SetKind::PortMap => ("map", "type inet_proto . inet_service : verdict".into()),
        SetKind::AddressPairs => ("set", format!("type {addr} . {addr}")),
        SetKind::EndpointRanges => (
            "map",
            format!(
                "typeof meta random : {} daddr . th dport",
                family_keyword(family)
            ),
        ),
    };
    let _ = writeln!(out, "\t{keyword} {} {{", s.name);
    let _ = writeln!(out, "\t\t{ty}");
    if let SetKind::Affinity(seconds) = s.kind {
        let _ = writeln!(out, "\t\tflags dynamic,timeout");
        let _ = writeln!(out, "\t\ttimeout {seconds}s");
    }
    if s.kind == SetKind::EndpointRanges {
        let _ = writeln!(out, "\t\tflags interval");
    }
    if let Some(c) = s.comment {
        let _ = writeln!(out, "\t\tcomment \"{c}\"");
    }
    if let Some(elements) = elements.filter(|e| !e.is_empty()) {
        out.push_str("\t\telements = { ");
        for (i, e) in elements.iter().enumerate() {
            if i > 0 {
                out.push_str(",\n\t\t\t     ");
            }
            write_element(e, out);
        }
        out.push_str(" }\n");
    }
    out.push_str("\t}\n");
}

fn write_chain(family: IpFamily, c: &PlannedChain, out: &mut String) {
    let _ = writeln!(out, "\tchain {} {{", c.name);
    if let Some(b) = &c.base {
        let hook = match b.hook {
            0 => "prerouting",
            1 => "input",
            2 => "forward",
            3 => "output",
            _ => "postrouting",
        };
        let _ = writeln!(
            out,
            "\t\ttype {} hook {hook} priority {}; policy accept;",
            b.chain_type, b.priority
        );
    }
    for r in &c.rules {
        out.push_str("\t\t");
        r.render(family, out);
        out.push('\n');
    }
    out.push_str("\t}\n");
}
