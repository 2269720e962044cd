//! `kproxy render --proxy-mode ipvs`: the whole plan as text an operator can review and compare
//! with the node — the virtual and real servers as `ipvsadm -S -n` prints them, the set members
//! as `ipset save` does, then the iptables-restore input.

use std::io::{self, Write};

use proxy_core::ProxyState;

use crate::plan::{Plan, PlanContext};
use crate::proxier::IpvsSettings;
use crate::rules::{self, RulesInput};

/// Writes the plan of `state` to `out`.
pub fn write_plan(
    state: &ProxyState,
    ctx: &PlanContext,
    settings: &IpvsSettings,
    out: &mut dyn Write,
) -> io::Result<()> {
    let plan = Plan::of_state(state, ctx);
    let mut text = String::with_capacity(256 + plan.services.len() * 160);
    text.push_str("# IPVS virtual and real servers (ipvsadm -S -n)\n");
    plan.write_ipvsadm(&mut text);
    text.push_str("# ipsets (ipset save)\n");
    plan.write_ipsets(ctx.family, &mut text);
    text.push_str("# iptables rules (iptables-restore --noflush)\n");
    out.write_all(text.as_bytes())?;
    let non_empty = plan.non_empty_sets();
    let detector = settings.detect_local.detector(ctx.family, state.node());
    let mut rules_text = String::new();
    rules::render(
        &RulesInput {
            family: ctx.family,
            non_empty: &non_empty,
            masquerade_all: settings.masquerade_all,
            detector: &detector,
            masquerade_bit: settings.masquerade_bit,
            no_node_access: &plan.no_node_access,
        },
        &mut rules_text,
    );
    out.write_all(rules_text.as_bytes())
}
