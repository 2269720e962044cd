//! kproxy's rules as a small language of matches and one action each, with two readings: the
//! `nft` syntax ([`Rule::render`], what `nft -f` takes and `kproxy render` prints) and the
//! netlink expressions ([`Rule::exprs`], what the proxier sends). Both come from the same value,
//! and a test feeds the text to `nft` and compares what it sends with the expressions, so the
//! two cannot drift apart.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use kproxy_netlink::nftables::expr::{
    ct, fib, meta, reg32, CmpOp, Expr, ImmediateData, PayloadBase, Verdict, REG_1, REG_2,
    REG_VERDICT,
};
use proxy_core::model::Protocol;
use proxy_core::IpFamily;

use crate::names::{endpoint_map, protocol_name, protocol_number, HAIRPIN};

/// Bits of `meta random` a region spreads over its endpoints: a range per endpoint, cut at
/// `⌊32768·i/N⌋`, so endpoints' shares differ by at most N/32768.
pub const RANDOM_BITS: u32 = 15;
/// The mask of those bits.
pub const RANDOM_MASK: u32 = (1 << RANDOM_BITS) - 1;

/// A condition of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Match {
    /// `ct state new`.
    CtStateNew,
    /// `ip daddr <ip>`.
    Daddr(IpAddr),
    /// `ip saddr <ip>`.
    Saddr(IpAddr),
    /// `ip saddr [!=] <net>`.
    SaddrNet {
        /// The network.
        net: IpNetwork,
        /// `!=`.
        negate: bool,
    },
    /// `ip daddr [!=] <net>`.
    DaddrNet {
        /// The network.
        net: IpNetwork,
        /// `!=`.
        negate: bool,
    },
    /// `tcp dport <port>` (the protocol and the port).
    Dport(Protocol, u16),
    /// `meta l4proto <protocol>`.
    L4Proto(Protocol),
    /// `iifname [!=] "<name>"`, or a prefix (`"<name>*"`).
    IifName {
        /// The name or prefix.
        name: String,
        /// A prefix match.
        prefix: bool,
        /// `!=`.
        negate: bool,
    },
    /// `fib saddr type local`: from the node itself.
    FibSaddrLocal,
    /// `fib daddr type local`: to one of the node's addresses.
    FibDaddrLocal,
    /// `ip daddr @<set>`.
    DaddrInSet(String),
    /// `ip saddr @<set>`.
    SaddrInSet(String),
    /// `meta mark & <bits> == 0`.
    MarkClear(u32),
    /// `numgen random mod <modulus> <value>`: true for one in `modulus` packets.
    Numgen {
        /// The modulus.
        modulus: u32,
        /// The value matched.
        value: u32,
    },
    /// `ip saddr . ip daddr @hairpin-endpoints`: a pod talking to itself through a Service.
    Hairpin,
}

/// What a rule does when its matches hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// `jump <chain>`.
    Jump(String),
    /// `goto <chain>`.
    Goto(String),
    /// `drop`.
    Drop,
    /// `return`.
    Return,
    /// `reject` (ICMP port unreachable).
    Reject,
    /// `meta mark set meta mark | <bits>`.
    MarkOr(u32),
    /// `meta mark set meta mark ^ <bits>`.
    MarkXor(u32),
    /// `masquerade fully-random`.
    Masquerade,
    /// `ip daddr . meta l4proto . th dport vmap @<map>`.
    VmapAddressPort(&'static str),
    /// `meta l4proto . th dport vmap @<map>`.
    VmapPort(&'static str),
    /// `dnat to <ip>:<port>`.
    Dnat(IpAddr, u16),
    /// `dnat ip to meta random & 0x7fff | <region << 15> map @service-endpoints-<map>`: to the
    /// endpoint whose range of the region holds a random number.
    DnatRandom {
        /// The endpoint map.
        map: u32,
        /// The port's region of it.
        region: u32,
    },
    /// `update @<set> { ip saddr }`: remember the client for session affinity.
    AffinityUpdate(String),
    /// `counter name "<name>"`.
    Counter(String),
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Conditions, all of which must hold.
    pub matches: Vec<Match>,
    /// The action.
    pub action: Action,
    /// A comment (`comment "…"`).
    pub comment: Option<&'static str>,
}

impl Rule {
    /// A rule.
    pub fn new(matches: Vec<Match>, action: Action) -> Self {
        Self {
            matches,
            action,
            comment: None,
        }
    }

    /// A rule without conditions.
    pub fn always(action: Action) -> Self {
        Self::new(Vec::new(), action)
    }

    /// With a comment.
    pub fn with_comment(mut self, comment: &'static str) -> Self {
        self.comment = Some(comment);
        self
    }

    /// Writes the rule in `nft` syntax (no indentation, no newline).
    pub fn render(&self, family: IpFamily, out: &mut String) {
        let ip = family_keyword(family);
        let mut first = true;
        let mut sep = |out: &mut String| {
            if !first {
                out.push(' ');
            }
            first = false;
        };
        for m in &self.matches {
            sep(out);
            match m {
                Match::CtStateNew => out.push_str("ct state new"),
                Match::Daddr(a) => {
                    let _ = write!(out, "{ip} daddr {a}");
                }
                Match::Saddr(a) => {
                    let _ = write!(out, "{ip} saddr {a}");
                }
                Match::SaddrNet { net, negate } => {
                    let _ = write!(out, "{ip} saddr {}{}", neq(*negate), net_text(net));
                }
                Match::DaddrNet { net, negate } => {
                    let _ = write!(out, "{ip} daddr {}{}", neq(*negate), net_text(net));
                }
                Match::Dport(p, port) => {
                    let _ = write!(out, "{} dport {port}", protocol_name(*p));
                }
                Match::L4Proto(p) => {
                    let _ = write!(out, "meta l4proto {}", protocol_name(*p));
                }
                Match::IifName {
                    name,
                    prefix,
                    negate,
                } => {
                    let star = if *prefix { "*" } else { "" };
                    let _ = write!(out, "iifname {}\"{name}{star}\"", neq(*negate));
                }
                Match::FibSaddrLocal => out.push_str("fib saddr type local"),
                Match::FibDaddrLocal => out.push_str("fib daddr type local"),
                Match::DaddrInSet(s) => {
                    let _ = write!(out, "{ip} daddr @{s}");
                }
                Match::SaddrInSet(s) => {
                    let _ = write!(out, "{ip} saddr @{s}");
                }
                Match::MarkClear(bits) => {
                    let _ = write!(out, "meta mark & {bits:#010x} == 0");
                }
                Match::Numgen { modulus, value } => {
                    let _ = write!(out, "numgen random mod {modulus} {value}");
                }
                Match::Hairpin => {
                    let _ = write!(out, "{ip} saddr . {ip} daddr @{HAIRPIN}");
                }
            }
        }
        sep(out);
        match &self.action {
            Action::Jump(c) => {
                let _ = write!(out, "jump {c}");
            }
            Action::Goto(c) => {
                let _ = write!(out, "goto {c}");
            }
            Action::Drop => out.push_str("drop"),
            Action::Return => out.push_str("return"),
            Action::Reject => out.push_str("reject"),
            Action::MarkOr(bits) => {
                let _ = write!(out, "meta mark set meta mark | {bits:#010x}");
            }
            Action::MarkXor(bits) => {
                let _ = write!(out, "meta mark set meta mark ^ {bits:#010x}");
            }
            Action::Masquerade => out.push_str("masquerade fully-random"),
            Action::VmapAddressPort(m) => {
                let _ = write!(out, "{ip} daddr . meta l4proto . th dport vmap @{m}");
            }
            Action::VmapPort(m) => {
                let _ = write!(out, "meta l4proto . th dport vmap @{m}");
            }
            Action::DnatRandom { map, region } => {
                let _ = write!(
                    out,
                    "dnat {ip} to meta random & {RANDOM_MASK:#010x} | {:#010x} map @{}",
                    region << RANDOM_BITS,
                    endpoint_map(*map)
                );
            }
            Action::Dnat(a, port) => match a {
                IpAddr::V4(a) => {
                    let _ = write!(out, "dnat to {a}:{port}");
                }
                IpAddr::V6(a) => {
                    let _ = write!(out, "dnat to [{a}]:{port}");
                }
            },
            Action::AffinityUpdate(s) => {
                let _ = write!(out, "update @{s} {{ {ip} saddr }}");
            }
            Action::Counter(name) => {
                let _ = write!(out, "counter name \"{name}\"");
            }
        }
        if let Some(c) = self.comment {
            let _ = write!(out, " comment \"{c}\"");
        }
    }

    /// The rule's netlink expressions. `set_ids` gives the transaction ids of sets created in
    /// the same transaction (what `nft` sends; the kernel finds sets by name either way).
    pub fn exprs(&self, family: IpFamily, set_ids: &HashMap<String, u32>) -> Vec<Expr> {
        let mut out = Vec::with_capacity(8);
        let set_id = |s: &str| set_ids.get(s).copied().unwrap_or(0);
        for m in &self.matches {
            match m {
                Match::CtStateNew => {
                    out.push(Expr::Ct {
                        key: ct::STATE,
                        dreg: REG_1,
                    });
                    out.push(Expr::Bitwise {
                        sreg: REG_1,
                        dreg: REG_1,
                        mask: ct::STATE_NEW.to_ne_bytes().to_vec(),
                        xor: vec![0; 4],
                        explicit_op: false,
                    });
                    out.push(cmp(CmpOp::Neq, vec![0; 4]));
                }
                Match::Daddr(a) => {
                    out.push(address(family, false));
                    out.push(cmp(CmpOp::Eq, ip_bytes(a)));
                }
                Match::Saddr(a) => {
                    out.push(address(family, true));
                    out.push(cmp(CmpOp::Eq, ip_bytes(a)));
                }
                Match::SaddrNet { net, negate } => {
                    prefix_match(&mut out, family, true, net, *negate)
                }
                Match::DaddrNet { net, negate } => {
                    prefix_match(&mut out, family, false, net, *negate)
                }
                Match::Dport(p, port) => {
                    l4proto(&mut out, *p);
                    out.push(Expr::Payload {
                        dreg: REG_1,
                        base: PayloadBase::Transport,
                        offset: 2,
                        len: 2,
                    });
                    out.push(cmp(CmpOp::Eq, port.to_be_bytes().to_vec()));
                }
                Match::L4Proto(p) => l4proto(&mut out, *p),
                Match::IifName {
                    name,
                    prefix,
                    negate,
                } => {
                    out.push(Expr::Meta {
                        key: meta::IIFNAME,
                        dreg: REG_1,
                    });
                    let mut bytes = name.as_bytes().to_vec();
                    if !prefix {
                        bytes.resize(16, 0);
                    }
                    out.push(cmp(op(*negate), bytes));
                }
                Match::FibSaddrLocal | Match::FibDaddrLocal => {
                    out.push(Expr::Fib {
                        dreg: REG_1,
                        result: fib::RESULT_ADDRTYPE,
                        flags: if matches!(m, Match::FibSaddrLocal) {
                            fib::F_SADDR
                        } else {
                            fib::F_DADDR
                        },
                    });
                    out.push(cmp(CmpOp::Eq, fib::RTN_LOCAL.to_ne_bytes().to_vec()));
                }
                Match::DaddrInSet(s) | Match::SaddrInSet(s) => {
                    out.push(address(family, matches!(m, Match::SaddrInSet(_))));
                    out.push(Expr::Lookup {
                        set: s.clone(),
                        set_id: set_id(s),
                        sreg: REG_1,
                        dreg: None,
                        invert: false,
                    });
                }
                Match::MarkClear(bits) => {
                    out.push(mark_load());
                    out.push(Expr::Bitwise {
                        sreg: REG_1,
                        dreg: REG_1,
                        mask: bits.to_ne_bytes().to_vec(),
                        xor: vec![0; 4],
                        explicit_op: true,
                    });
                    out.push(cmp(CmpOp::Eq, vec![0; 4]));
                }
                Match::Numgen { modulus, value } => {
                    out.push(Expr::Numgen {
                        dreg: REG_1,
                        modulus: *modulus,
                        offset: 0,
                    });
                    out.push(cmp(CmpOp::Eq, value.to_ne_bytes().to_vec()));
                }
                Match::Hairpin => {
                    let Expr::Payload {
                        base, offset, len, ..
                    } = address(family, false)
                    else {
                        unreachable!("address() is a payload load")
                    };
                    out.push(address(family, true));
                    out.push(Expr::Payload {
                        dreg: word_register(address_words(family)),
                        base,
                        offset,
                        len,
                    });
                    out.push(Expr::Lookup {
                        set: HAIRPIN.to_owned(),
                        set_id: set_id(HAIRPIN),
                        sreg: REG_1,
                        dreg: None,
                        invert: false,
                    });
                }
            }
        }
        match &self.action {
            Action::Jump(c) => out.push(verdict(Verdict::Jump(c.clone()))),
            Action::Goto(c) => out.push(verdict(Verdict::Goto(c.clone()))),
            Action::Drop => out.push(verdict(Verdict::Drop)),
            Action::Return => out.push(verdict(Verdict::Return)),
            Action::Reject => out.push(Expr::Reject {
                kind: 0,
                code: match family {
                    IpFamily::V4 => 3,
                    IpFamily::V6 => 4,
                },
            }),
            Action::MarkOr(bits) | Action::MarkXor(bits) => {
                let (mask, xor) = match self.action {
                    Action::MarkOr(_) => (!bits, *bits),
                    _ => (!0, *bits),
                };
                out.push(mark_load());
                out.push(Expr::Bitwise {
                    sreg: REG_1,
                    dreg: REG_1,
                    mask: mask.to_ne_bytes().to_vec(),
                    xor: xor.to_ne_bytes().to_vec(),
                    explicit_op: true,
                });
                out.push(Expr::MetaSet {
                    key: meta::MARK,
                    sreg: REG_1,
                });
            }
            Action::Masquerade => out.push(Expr::Masquerade { fully_random: true }),
            Action::VmapAddressPort(map) => {
                // The address fills 1 (IPv4) or 4 (IPv6) 32-bit registers; the protocol and the
                // port follow in the next ones.
                let words = address_words(family);
                out.push(address(family, false));
                out.push(Expr::Meta {
                    key: meta::L4PROTO,
                    dreg: word_register(words),
                });
                out.push(Expr::Payload {
                    dreg: word_register(words + 1),
                    base: PayloadBase::Transport,
                    offset: 2,
                    len: 2,
                });
                out.push(vmap(map, set_id(map)));
            }
            Action::VmapPort(map) => {
                out.push(Expr::Meta {
                    key: meta::L4PROTO,
                    dreg: REG_1,
                });
                out.push(Expr::Payload {
                    dreg: reg32(1),
                    base: PayloadBase::Transport,
                    offset: 2,
                    len: 2,
                });
                out.push(vmap(map, set_id(map)));
            }
            Action::DnatRandom { map, region } => {
                let name = endpoint_map(*map);
                out.push(Expr::Meta {
                    key: meta::PRANDOM,
                    dreg: REG_1,
                });
                out.push(Expr::Bitwise {
                    sreg: REG_1,
                    dreg: REG_1,
                    mask: RANDOM_MASK.to_be_bytes().to_vec(),
                    xor: (region << RANDOM_BITS).to_be_bytes().to_vec(),
                    explicit_op: true,
                });
                out.push(Expr::Lookup {
                    set: name.to_owned(),
                    set_id: set_id(name),
                    sreg: REG_1,
                    dreg: Some(REG_1),
                    invert: false,
                });
                out.push(Expr::Dnat {
                    family: u32::from(nfproto(family)),
                    addr: REG_1,
                    port: word_register(address_words(family)),
                    flags: None,
                });
            }
            Action::Dnat(a, port) => {
                out.push(Expr::Immediate {
                    dreg: REG_1,
                    data: ImmediateData::Value(ip_bytes(a)),
                });
                out.push(Expr::Immediate {
                    dreg: REG_2,
                    data: ImmediateData::Value(port.to_be_bytes().to_vec()),
                });
                out.push(Expr::Dnat {
                    family: u32::from(nfproto(family)),
                    addr: REG_1,
                    port: REG_2,
                    flags: Some(2),
                });
            }
            Action::AffinityUpdate(s) => {
                out.push(address(family, true));
                out.push(Expr::DynsetUpdate {
                    set: s.clone(),
                    set_id: set_id(s),
                    sreg: REG_1,
                });
            }
            Action::Counter(name) => out.push(Expr::CounterRef { name: name.clone() }),
        }
        out
    }
}

/// The register that starts at 32-bit word `word` of the register file, named as `nft` names
/// it: a word on a 128-bit boundary by its 128-bit register (`NFT_REG_1..4`), others by their
/// 32-bit one (`NFT_REG32_*`).
fn word_register(word: u32) -> u32 {
    if word.is_multiple_of(4) {
        REG_1 + word / 4
    } else {
        reg32(word)
    }
}

/// How many 32-bit registers an address fills.
fn address_words(family: IpFamily) -> u32 {
    match family {
        IpFamily::V4 => 1,
        IpFamily::V6 => 4,
    }
}

/// `ip` or `ip6`.
pub fn family_keyword(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

/// `NFPROTO_IPV4` / `NFPROTO_IPV6`.
pub fn nfproto(family: IpFamily) -> u8 {
    match family {
        IpFamily::V4 => kproxy_netlink::nftables::objects::NFPROTO_IPV4,
        IpFamily::V6 => kproxy_netlink::nftables::objects::NFPROTO_IPV6,
    }
}

/// An address's bytes as the kernel compares them.
pub fn ip_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn net_text(net: &IpNetwork) -> String {
    if net.prefix() == max_prefix(net) {
        net.ip().to_string()
    } else {
        format!("{}/{}", net.network(), net.prefix())
    }
}

fn max_prefix(net: &IpNetwork) -> u8 {
    match net {
        IpNetwork::V4(_) => 32,
        IpNetwork::V6(_) => 128,
    }
}

fn neq(negate: bool) -> &'static str {
    if negate {
        "!= "
    } else {
        ""
    }
}

fn op(negate: bool) -> CmpOp {
    if negate {
        CmpOp::Neq
    } else {
        CmpOp::Eq
    }
}

fn cmp(op: CmpOp, data: Vec<u8>) -> Expr {
    Expr::Cmp {
        sreg: REG_1,
        op,
        data,
    }
}

fn verdict(v: Verdict) -> Expr {
    Expr::Immediate {
        dreg: REG_VERDICT,
        data: ImmediateData::Verdict(v),
    }
}

fn vmap(map: &str, set_id: u32) -> Expr {
    Expr::Lookup {
        set: map.to_owned(),
        set_id,
        sreg: REG_1,
        dreg: Some(REG_VERDICT),
        invert: false,
    }
}

fn mark_load() -> Expr {
    Expr::Meta {
        key: meta::MARK,
        dreg: REG_1,
    }
}

fn l4proto(out: &mut Vec<Expr>, p: Protocol) {
    out.push(Expr::Meta {
        key: meta::L4PROTO,
        dreg: REG_1,
    });
    out.push(cmp(CmpOp::Eq, vec![protocol_number(p)]));
}

/// The payload load of the source or destination address (into register 1).
fn address(family: IpFamily, source: bool) -> Expr {
    let (offset, len) = match (family, source) {
        (IpFamily::V4, true) => (12, 4),
        (IpFamily::V4, false) => (16, 4),
        (IpFamily::V6, true) => (8, 16),
        (IpFamily::V6, false) => (24, 16),
    };
    Expr::Payload {
        dreg: REG_1,
        base: PayloadBase::Network,
        offset,
        len,
    }
}

/// A prefix match as `nft` compiles it: a byte-aligned prefix compares just its bytes; any
/// other loads the whole address and masks it.
fn prefix_match(
    out: &mut Vec<Expr>,
    family: IpFamily,
    source: bool,
    net: &IpNetwork,
    negate: bool,
) {
    let Expr::Payload {
        dreg,
        base,
        offset,
        len: full,
    } = address(family, source)
    else {
        unreachable!("address() is a payload load")
    };
    let prefix = u32::from(net.prefix());
    let network = ip_bytes(&net.network());
    if prefix % 8 == 0 {
        out.push(Expr::Payload {
            dreg,
            base,
            offset,
            len: prefix / 8,
        });
        out.push(cmp(op(negate), network[..(prefix / 8) as usize].to_vec()));
        return;
    }
    out.push(Expr::Payload {
        dreg,
        base,
        offset,
        len: full,
    });
    let mask: Vec<u8> = (0..full)
        .map(|i| {
            let bits = prefix.saturating_sub(i * 8).min(8);
            if bits == 0 {
                0
            } else {
                0xffu8 << (8 - bits)
            }
        })
        .collect();
    out.push(Expr::Bitwise {
        sreg: REG_1,
        dreg: REG_1,
        mask,
        xor: vec![0; full as usize],
        explicit_op: false,
    });
    out.push(cmp(op(negate), network));
}
