//! Walking a packet through a [`Ruleset`], the way netfilter would for its first packet.
//!
//! A packet arriving from outside (or from a pod) goes nat PREROUTING → filter INPUT (if its
//! destination, after DNAT, is local) or FORWARD → nat POSTROUTING. A packet from a local process
//! goes nat OUTPUT → filter OUTPUT → nat POSTROUTING. `-m statistic` forks the walk, so the result
//! is every possible outcome with its probability; `-m recent --rcheck` is answered from the
//! environment, and `--set` is reported in the outcome so a test can feed it back.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use super::rule::{Match, Rule, Target};
use super::Ruleset;

/// Where a packet comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Arrives on an interface: a pod, another node, an outside client.
    External,
    /// Sent by a process on the node itself.
    LocalProcess,
}

/// The first packet of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Source address.
    pub source: IpAddr,
    /// Destination address and port.
    pub destination: SocketAddr,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: &'static str,
    /// Where it comes from.
    pub origin: Origin,
}

/// What the walk needs to know about the node.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    /// The node's addresses (`addrtype LOCAL`); loopback is always local.
    pub local_addresses: Vec<IpAddr>,
    /// `-m recent` lists the packet's source is on (by list name).
    pub recent: BTreeSet<String>,
}

impl Environment {
    fn is_local(&self, ip: &IpAddr) -> bool {
        ip.is_loopback() || self.local_addresses.contains(ip)
    }
}

/// The fate of the packet.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Delivered; `dnat` is where it was translated to, if it was.
    Accepted {
        /// The DNAT destination.
        dnat: Option<SocketAddr>,
    },
    /// Rejected (ICMP unreachable / TCP reset): the client fails at once.
    Rejected,
    /// Dropped silently: the client times out.
    Dropped,
}

/// One possible outcome of the walk.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The verdict.
    pub verdict: Verdict,
    /// Whether the packet is masqueraded on the way out.
    pub masqueraded: bool,
    /// The probability of this outcome (statistic branches multiplied).
    pub probability: f64,
    /// `-m recent --set` lists the packet was added to.
    pub recent_set: Vec<String>,
}

#[derive(Clone, Debug)]
struct State {
    destination: SocketAddr,
    dnat: Option<SocketAddr>,
    mark: u32,
    masqueraded: bool,
    probability: f64,
    recent_set: Vec<String>,
}

enum End {
    /// Fell off the chain or hit RETURN.
    Continue(State),
    /// A terminating target.
    Done(Stop, State),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    Accept,
    Drop,
    Reject,
    /// DNAT or MASQUERADE: the nat chain traversal ends, the packet goes on.
    Nat,
}

const MAX_DEPTH: usize = 32;

impl Ruleset {
    /// Every possible outcome for `packet`, most probable first.
    pub fn evaluate(&self, packet: &Packet, env: &Environment) -> Vec<Outcome> {
        let start = State {
            destination: packet.destination,
            dnat: None,
            mark: 0,
            masqueraded: false,
            probability: 1.0,
            recent_set: Vec::new(),
        };
        let nat_chain = match packet.origin {
            Origin::External => "PREROUTING",
            Origin::LocalProcess => "OUTPUT",
        };
        let mut outcomes = Vec::new();
        for end in self.walk("nat", nat_chain, start, packet, env, 0) {
            let (stop, st) = match end {
                End::Continue(st) => (Stop::Accept, st),
                End::Done(stop, st) => (stop, st),
            };
            if matches!(stop, Stop::Drop | Stop::Reject) {
                outcomes.push(outcome(stop, st));
                continue;
            }
            let filter_chain = match packet.origin {
                Origin::LocalProcess => "OUTPUT",
                Origin::External if env.is_local(&st.destination.ip()) => "INPUT",
                Origin::External => "FORWARD",
            };
            for end in self.walk("filter", filter_chain, st, packet, env, 0) {
                let (stop, st) = match end {
                    End::Continue(st) => (Stop::Accept, st),
                    End::Done(stop, st) => (stop, st),
                };
                if stop != Stop::Accept {
                    outcomes.push(outcome(stop, st));
                    continue;
                }
                for end in self.walk("nat", "POSTROUTING", st, packet, env, 0) {
                    let st = match end {
                        End::Continue(st) | End::Done(_, st) => st,
                    };
                    outcomes.push(outcome(Stop::Accept, st));
                }
            }
        }
        outcomes.sort_by(|a, b| b.probability.total_cmp(&a.probability));
        outcomes
    }

    fn walk(
        &self,
        table: &str,
        chain: &str,
        start: State,
        packet: &Packet,
        env: &Environment,
        depth: usize,
    ) -> Vec<End> {
        let Some(rules) = self.table(table).and_then(|t| t.chain(chain)) else {
            return vec![End::Continue(start)];
        };
        if depth > MAX_DEPTH {
            return vec![End::Done(Stop::Drop, start)]; // a loop: the kernel would refuse the rules
        }
        let mut active = vec![start];
        let mut ends = Vec::new();
        for rule in rules {
            let mut next = Vec::new();
            for st in active {
                for (matched, st) in match_rule(rule, st, packet, env) {
                    if !matched {
                        next.push(st);
                        continue;
                    }
                    apply_target(
                        self, table, rule, st, packet, env, depth, &mut next, &mut ends,
                    );
                }
            }
            active = next;
            if active.is_empty() {
                break;
            }
        }
        ends.extend(active.into_iter().map(End::Continue));
        ends
    }
}

#[allow(clippy::too_many_arguments)]
fn apply_target(
    rules: &Ruleset,
    table: &str,
    rule: &Rule,
    mut st: State,
    packet: &Packet,
    env: &Environment,
    depth: usize,
    next: &mut Vec<State>,
    ends: &mut Vec<End>,
) {
    match &rule.target {
        Target::None => next.push(st),
        Target::Jump(chain) => {
            for end in rules.walk(table, chain, st, packet, env, depth + 1) {
                match end {
                    End::Continue(s) => next.push(s),
                    done => ends.push(done),
                }
            }
        }
        Target::Return => ends.push(End::Continue(st)),
        Target::Accept => ends.push(End::Done(Stop::Accept, st)),
        Target::Drop => ends.push(End::Done(Stop::Drop, st)),
        Target::Reject => ends.push(End::Done(Stop::Reject, st)),
        Target::Dnat(to) => {
            st.destination = *to;
            st.dnat = Some(*to);
            ends.push(End::Done(Stop::Nat, st));
        }
        Target::Redirect(port) => {
            // The evaluator keeps the address (it does not model which interface the packet
            // came in on); the port is what the userspace mode's rules choose.
            st.destination.set_port(*port);
            st.dnat = Some(st.destination);
            ends.push(End::Done(Stop::Nat, st));
        }
        Target::Masquerade { .. } => {
            st.masqueraded = true;
            ends.push(End::Done(Stop::Nat, st));
        }
        Target::MarkOr(v) => {
            st.mark |= v;
            next.push(st);
        }
        Target::MarkXor(v) => {
            st.mark ^= v;
            next.push(st);
        }
        Target::MarkSet { value, mask } => {
            st.mark = (st.mark & !mask) ^ value;
            next.push(st);
        }
    }
}

/// Evaluates a rule's matches: usually one branch, two for a statistic match.
fn match_rule(rule: &Rule, st: State, packet: &Packet, env: &Environment) -> Vec<(bool, State)> {
    let mut branches = vec![(true, st)];
    for m in &rule.matches {
        let mut out = Vec::new();
        for (ok, mut st) in branches {
            if !ok {
                out.push((false, st));
                continue;
            }
            let flip = |negated: bool, v: bool| v != negated;
            let result = match m {
                Match::Comment(_) | Match::Module(_) => true,
                Match::Protocol { negated, protocol } => {
                    flip(*negated, protocol == packet.protocol)
                }
                Match::Source { negated, net } => flip(*negated, net.contains(packet.source)),
                Match::Destination { negated, net } => {
                    flip(*negated, net.contains(st.destination.ip()))
                }
                Match::DestinationPort { negated, port } => {
                    flip(*negated, *port == st.destination.port())
                }
                Match::SourceLocal { negated } => flip(*negated, env.is_local(&packet.source)),
                Match::DestinationLocal { negated } => {
                    flip(*negated, env.is_local(&st.destination.ip()))
                }
                Match::Probability(p) => {
                    let p: f64 = p.parse().unwrap_or(0.0);
                    let mut miss = st.clone();
                    miss.probability *= 1.0 - p;
                    st.probability *= p;
                    out.push((false, miss));
                    true
                }
                Match::RecentCheck { name, .. } => env.recent.contains(name),
                Match::RecentSet { name } => {
                    st.recent_set.push(name.clone());
                    true
                }
                Match::Mark {
                    negated,
                    value,
                    mask,
                } => flip(*negated, st.mark & mask == *value),
                Match::ConnState { negated, states } => {
                    // The first packet: NEW, plus DNAT once translated.
                    let has = |s: &str| s == "NEW" || (s == "DNAT" && st.dnat.is_some());
                    flip(*negated, states.iter().any(|s| has(s)))
                }
            };
            out.push((result, st));
        }
        branches = out;
    }
    branches
}

fn outcome(stop: Stop, st: State) -> Outcome {
    let verdict = match stop {
        Stop::Accept | Stop::Nat => Verdict::Accepted { dnat: st.dnat },
        Stop::Drop => Verdict::Dropped,
        Stop::Reject => Verdict::Rejected,
    };
    Outcome {
        verdict,
        masqueraded: st.masqueraded,
        probability: st.probability,
        recent_set: st.recent_set,
    }
}
