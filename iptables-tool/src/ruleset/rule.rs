//! A parsed iptables rule: matches and a target.

use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;

/// One match of a rule. Equality is what `-D` uses to find a rule, so every field that iptables
/// compares is kept, comments included.
#[derive(Clone, Debug, PartialEq)]
pub enum Match {
    /// `-m comment --comment TEXT` (never affects evaluation).
    Comment(String),
    /// `-p PROTO` (possibly negated).
    Protocol {
        /// Preceded by `!`.
        negated: bool,
        /// `tcp`, `udp`, `sctp`.
        protocol: String,
    },
    /// `-s CIDR`.
    Source {
        /// Preceded by `!`.
        negated: bool,
        /// The network (a bare address is a /32 or /128).
        net: IpNetwork,
    },
    /// `-d CIDR`.
    Destination {
        /// Preceded by `!`.
        negated: bool,
        /// The network (a bare address is a /32 or /128).
        net: IpNetwork,
    },
    /// `--dport N` (of `-m tcp/udp/sctp`).
    DestinationPort {
        /// Preceded by `!`.
        negated: bool,
        /// The port.
        port: u16,
    },
    /// `-m addrtype --src-type LOCAL`.
    SourceLocal {
        /// Preceded by `!`.
        negated: bool,
    },
    /// `-m addrtype --dst-type LOCAL`.
    DestinationLocal {
        /// Preceded by `!`.
        negated: bool,
    },
    /// `-m statistic --mode random --probability P`, kept as text for exact comparison.
    Probability(String),
    /// `-m recent --name NAME --rcheck [--seconds S] [--reap]`.
    RecentCheck {
        /// The list name (kube-proxy uses the endpoint chain's name).
        name: String,
        /// `--seconds`.
        seconds: Option<u32>,
    },
    /// `-m recent --name NAME --set`.
    RecentSet {
        /// The list name.
        name: String,
    },
    /// `-m mark [!] --mark VALUE/MASK`.
    Mark {
        /// Preceded by `!`.
        negated: bool,
        /// The value after masking.
        value: u32,
        /// The mask.
        mask: u32,
    },
    /// `-m conntrack [!] --ctstate A,B`.
    ConnState {
        /// Preceded by `!`.
        negated: bool,
        /// States, any of which matches.
        states: Vec<String>,
    },
    /// A protocol module named with `-m tcp` etc. (implied by `-p`, kept for equality).
    Module(String),
}

/// What a rule does when it matches.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// No `-j`: the rule only counts packets.
    None,
    /// `-j CHAIN`.
    Jump(String),
    /// `-j ACCEPT`.
    Accept,
    /// `-j DROP`.
    Drop,
    /// `-j REJECT`.
    Reject,
    /// `-j RETURN`.
    Return,
    /// `-j DNAT --to-destination ADDR`.
    Dnat(SocketAddr),
    /// `-j REDIRECT --to-ports PORT` (userspace mode): to this port on the address the packet
    /// arrived on (loopback for the node's own traffic).
    Redirect(u16),
    /// `-j MASQUERADE [--random-fully]`.
    Masquerade {
        /// `--random-fully`.
        random_fully: bool,
    },
    /// `-j MARK --or-mark V`.
    MarkOr(u32),
    /// `-j MARK --xor-mark V`.
    MarkXor(u32),
    /// `-j MARK --set-xmark V/M`.
    MarkSet {
        /// The value.
        value: u32,
        /// The mask.
        mask: u32,
    },
}

/// A rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Matches, in the order written.
    pub matches: Vec<Match>,
    /// The target.
    pub target: Target,
}

impl Rule {
    /// The chain this rule jumps to, if any.
    pub fn jump_target(&self) -> Option<&str> {
        match &self.target {
            Target::Jump(c) => Some(c),
            _ => None,
        }
    }

    /// The destination address this rule matches on, if it names one.
    pub fn destination(&self) -> Option<IpAddr> {
        self.matches.iter().find_map(|m| match m {
            Match::Destination {
                negated: false,
                net,
            } => Some(net.ip()),
            _ => None,
        })
    }
}

impl std::fmt::Display for Rule {
    /// The rule spec in the form kproxy writes it (and iptables accepts): matches in order, then
    /// the target. Used by the fake iptables' `save`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let neg = |n: &bool| if *n { "! " } else { "" };
        let mut first = true;
        let mut sep = |f: &mut std::fmt::Formatter<'_>| -> std::fmt::Result {
            if !std::mem::take(&mut first) {
                f.write_str(" ")?;
            }
            Ok(())
        };
        for m in &self.matches {
            sep(f)?;
            match m {
                Match::Comment(c) => write!(f, "-m comment --comment \"{c}\"")?,
                Match::Module(m) => write!(f, "-m {m}")?,
                Match::Protocol { negated, protocol } => {
                    write!(f, "{}-p {protocol}", neg(negated))?
                }
                Match::Source { negated, net } => write!(f, "{}-s {net}", neg(negated))?,
                Match::Destination { negated, net } => write!(f, "{}-d {net}", neg(negated))?,
                Match::DestinationPort { negated, port } => {
                    write!(f, "{}--dport {port}", neg(negated))?
                }
                Match::SourceLocal { negated } => {
                    write!(f, "-m addrtype {}--src-type LOCAL", neg(negated))?
                }
                Match::DestinationLocal { negated } => {
                    write!(f, "-m addrtype {}--dst-type LOCAL", neg(negated))?
                }
                Match::Probability(p) => write!(f, "-m statistic --mode random --probability {p}")?,
                Match::RecentCheck { name, seconds } => {
                    write!(f, "-m recent --name {name} --rcheck")?;
                    if let Some(s) = seconds {
                        write!(f, " --seconds {s}")?;
                    }
                    f.write_str(" --reap")?;
                }
                Match::RecentSet { name } => write!(f, "-m recent --name {name} --set")?,
                Match::Mark {
                    negated,
                    value,
                    mask,
                } => write!(f, "-m mark {}--mark {value:#x}/{mask:#x}", neg(negated))?,
                Match::ConnState { negated, states } => write!(
                    f,
                    "-m conntrack {}--ctstate {}",
                    neg(negated),
                    states.join(",")
                )?,
            }
        }
        let target = match &self.target {
            Target::None => return Ok(()),
            Target::Jump(c) => format!("-j {c}"),
            Target::Accept => "-j ACCEPT".into(),
            Target::Drop => "-j DROP".into(),
            Target::Reject => "-j REJECT".into(),
            Target::Return => "-j RETURN".into(),
            Target::Dnat(to) => format!("-j DNAT --to-destination {to}"),
            Target::Redirect(port) => format!("-j REDIRECT --to-ports {port}"),
            Target::Masquerade { random_fully } => {
                format!(
                    "-j MASQUERADE{}",
                    if *random_fully { " --random-fully" } else { "" }
                )
            }
            Target::MarkOr(v) => format!("-j MARK --or-mark {v:#x}"),
            Target::MarkXor(v) => format!("-j MARK --xor-mark {v:#x}"),
            Target::MarkSet { value, mask } => format!("-j MARK --set-xmark {value:#x}/{mask:#x}"),
        };
        sep(f)?;
        f.write_str(&target)
    }
}
