//! nf_tables objects — tables, chains, rules, sets and maps, their elements, named counters — as
//! the messages that create, delete or flush them, with the attributes and flags `nft` sends for
//! the same statement, plus readers for what the kernel's dumps answer.

use super::expr::{data_value, Expr, Verdict};
use super::wire::{msg, NftAttribute, NftMessage};

/// `NFPROTO_IPV4`: an `ip` table.
pub const NFPROTO_IPV4: u8 = 2;
/// `NFPROTO_IPV6`: an `ip6` table.
pub const NFPROTO_IPV6: u8 = 10;

/// `NLM_F_CREATE`.
pub const NLM_F_CREATE: u16 = 0x400;
/// `NLM_F_EXCL`.
pub const NLM_F_EXCL: u16 = 0x200;
/// `NLM_F_APPEND`.
pub const NLM_F_APPEND: u16 = 0x800;

/// A message with the netlink flags it must be sent with (besides `NLM_F_REQUEST`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// The message.
    pub message: NftMessage,
    /// `NLM_F_CREATE`, `NLM_F_APPEND`, … as `nft` sets them for this command.
    pub flags: u16,
}

/// A TLV of libnftnl's user data (`NFTNL_UDATA_*`): one type byte, one length byte, the value.
fn udata(kind: u8, value: &[u8], out: &mut Vec<u8>) {
    out.push(kind);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

fn comment_udata(kind: u8, comment: &str) -> Vec<u8> {
    let mut c = comment.as_bytes().to_vec();
    c.push(0);
    let mut out = Vec::new();
    udata(kind, &c, &mut out);
    out
}

fn table_chain(table: &str, chain: &str) -> Vec<NftAttribute> {
    vec![
        NftAttribute::string(1, table),
        NftAttribute::string(2, chain),
    ]
}

/// A table.
pub fn new_table(family: u8, name: &str, comment: Option<&str>) -> Command {
    let mut attrs = vec![NftAttribute::string(1, name), NftAttribute::u32(2, 0)];
    if let Some(c) = comment {
        attrs.push(NftAttribute::bytes(6, comment_udata(0, c)));
    }
    Command {
        message: NftMessage::command(msg::NEWTABLE, family, attrs),
        flags: 0,
    }
}

/// Deletes a table with everything in it.
pub fn delete_table(family: u8, name: &str) -> Command {
    Command {
        message: NftMessage::command(msg::DELTABLE, family, vec![NftAttribute::string(1, name)]),
        flags: 0,
    }
}

/// Where a base chain hooks in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BaseChain {
    /// `filter` or `nat`.
    pub chain_type: &'static str,
    /// `NF_INET_*` hook number (prerouting 0, input 1, forward 2, output 3, postrouting 4).
    pub hook: u32,
    /// Priority (dstnat is -100, srcnat 100).
    pub priority: i32,
}

/// A chain; with `base`, a base chain with policy accept.
pub fn new_chain(family: u8, table: &str, name: &str, base: Option<&BaseChain>) -> Command {
    let mut attrs = vec![
        NftAttribute::string(1, table),
        NftAttribute::string(3, name),
    ];
    if let Some(b) = base {
        attrs.push(NftAttribute::string(7, b.chain_type));
        attrs.push(NftAttribute::u32(5, 1));
        attrs.push(NftAttribute::nested(
            4,
            vec![
                NftAttribute::u32(1, b.hook),
                NftAttribute::bytes(2, b.priority.to_be_bytes()),
            ],
        ));
    }
    Command {
        message: NftMessage::command(msg::NEWCHAIN, family, attrs),
        flags: NLM_F_CREATE,
    }
}

/// Deletes a chain (it must have no rules and no references).
pub fn delete_chain(family: u8, table: &str, name: &str) -> Command {
    Command {
        message: NftMessage::command(
            msg::DELCHAIN,
            family,
            vec![
                NftAttribute::string(1, table),
                NftAttribute::string(3, name),
            ],
        ),
        flags: 0,
    }
}

/// Deletes every rule of a chain (`flush chain`).
pub fn flush_chain(family: u8, table: &str, chain: &str) -> Command {
    Command {
        message: NftMessage::command(msg::DELRULE, family, table_chain(table, chain)),
        flags: 0,
    }
}

/// Appends a rule to a chain.
pub fn new_rule(
    family: u8,
    table: &str,
    chain: &str,
    exprs: &[Expr],
    comment: Option<&str>,
) -> Command {
    let mut attrs = table_chain(table, chain);
    attrs.push(NftAttribute::nested(
        4,
        exprs.iter().map(Expr::to_attribute).collect(),
    ));
    if let Some(c) = comment {
        attrs.push(NftAttribute::bytes(7, comment_udata(0, c)));
    }
    Command {
        message: NftMessage::command(msg::NEWRULE, family, attrs),
        flags: NLM_F_CREATE | NLM_F_APPEND,
    }
}

/// nft's data types (`enum datatypes`), 6 bits each in a concatenation.
pub mod datatype {
    /// `verdict` (a map's value type).
    pub const VERDICT: u32 = 0xffff_ff00;
    /// `integer` (a `typeof numgen` key).
    pub const INTEGER: u32 = 4;
    /// `ipv4_addr`.
    pub const IPV4_ADDR: u32 = 7;
    /// `ipv6_addr`.
    pub const IPV6_ADDR: u32 = 8;
    /// `inet_proto`.
    pub const INET_PROTO: u32 = 12;
    /// `inet_service`.
    pub const INET_SERVICE: u32 = 13;

    /// The type of a concatenation, and its key length (each part padded to 4 bytes).
    pub fn concat(parts: &[(u32, u32)]) -> (u32, u32) {
        let mut t = 0;
        let mut len = 0;
        for &(part, part_len) in parts {
            t = (t << 6) | part;
            len += part_len.div_ceil(4) * 4;
        }
        (t, len)
    }
}

/// `NFT_SET_*` flags.
pub mod set_flags {
    /// A map (elements have values).
    pub const MAP: u32 = 0x8;
    /// Elements time out.
    pub const TIMEOUT: u32 = 0x10;
    /// Updated from the packet path (`dynamic`).
    pub const EVAL: u32 = 0x20;
    /// A concatenated key.
    pub const CONCAT: u32 = 0x80;
    /// Keys are ranges (`flags interval`).
    pub const INTERVAL: u32 = 0x4;
}

/// A named set or map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetSpec<'a> {
    /// The table.
    pub table: &'a str,
    /// The set's name.
    pub name: &'a str,
    /// `NFT_SET_*` flags.
    pub flags: u32,
    /// Key data type and length.
    pub key: (u32, u32),
    /// For a map: value data type and length.
    pub data: Option<(u32, u32)>,
    /// Element timeout in milliseconds.
    pub timeout_ms: Option<u64>,
    /// What `nft` records about the set in its user data (byte orders, typeof, comment).
    pub user_data: SetUserData<'a>,
    /// The transaction-local id `nft` gives each new set.
    pub id: u32,
}

/// The user data `nft` attaches to a set: opaque to the kernel, read back by `nft list` to print
/// the set's type, byte order and comment. Reproduced for the shapes kproxy creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetUserData<'a> {
    /// A set of addresses (big-endian key).
    Addresses {
        /// A comment.
        comment: Option<&'a str>,
    },
    /// A set with a concatenated key (`type ipv4_addr . ipv4_addr`).
    Concat {
        /// A comment.
        comment: Option<&'a str>,
    },
    /// A verdict map with a concatenated key (`type ipv4_addr . inet_proto . inet_service :
    /// verdict`).
    ConcatVerdictMap {
        /// A comment.
        comment: Option<&'a str>,
    },
    /// A verdict map keyed by `numgen random mod 1` (`typeof`): host-order integers.
    NumgenVerdictMap {
        /// A comment.
        comment: Option<&'a str>,
    },
    /// `typeof meta random : ip daddr . th dport` (or `ip6 daddr`), `flags interval`: NAT
    /// targets by range of a random number.
    RandomRangeAddressPortMap {
        /// IPv6 addresses.
        ipv6: bool,
        /// A comment.
        comment: Option<&'a str>,
    },
    /// `typeof numgen random mod 1 : ip daddr . tcp dport` (or `ip6 daddr`): a NAT target
    /// (address and port) per slot.
    NumgenAddressPortMap {
        /// IPv6 addresses.
        ipv6: bool,
        /// A comment.
        comment: Option<&'a str>,
    },
}

/// libnftnl's user-data ids: a set's byte orders, typeof expressions, comment.
mod udata_kind {
    pub(super) const KEY_BYTEORDER: u8 = 0;
    pub(super) const DATA_BYTEORDER: u8 = 1;
    pub(super) const KEY_TYPEOF: u8 = 3;
    pub(super) const DATA_TYPEOF: u8 = 4;
    pub(super) const DATA_INTERVAL: u8 = 6;
    pub(super) const COMMENT: u8 = 7;
    /// Byte orders.
    pub(super) const HOST: u32 = 1;
    pub(super) const BIG: u32 = 2;
    /// nft's expression ids in a typeof: payload, concatenation, numgen.
    pub(super) const EXPR_PAYLOAD: u32 = 7;
    pub(super) const EXPR_CONCAT: u32 = 13;
    pub(super) const EXPR_NUMGEN: u32 = 23;
    pub(super) const EXPR_META: u32 = 9;
    pub(super) const META_PRANDOM: u32 = 24;
    /// nft's protocol descriptions and their fields, for payload typeofs.
    pub(super) const DESC_TCP: u32 = 8;
    /// The transport header whatever the protocol (`th`).
    pub(super) const DESC_TH: u32 = 11;
    pub(super) const TCP_DPORT: u32 = 2;
    pub(super) const DESC_IP: u32 = 12;
    pub(super) const IP_DADDR: u32 = 12;
    pub(super) const DESC_IP6: u32 = 13;
    pub(super) const IP6_DADDR: u32 = 9;
}

/// A typeof expression: its id and its own user data.
fn typeof_expr(id: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    udata(0, &id.to_ne_bytes(), &mut out);
    udata(1, data, &mut out);
    out
}

fn typeof_payload(desc: u32, field: u32) -> Vec<u8> {
    let mut d = Vec::new();
    udata(0, &desc.to_ne_bytes(), &mut d);
    udata(1, &field.to_ne_bytes(), &mut d);
    typeof_expr(udata_kind::EXPR_PAYLOAD, &d)
}

fn typeof_numgen_random_mod_1() -> Vec<u8> {
    // numgen's own data: type (random: 1), modulus 1, offset 0.
    let mut d = Vec::new();
    udata(0, &1u32.to_ne_bytes(), &mut d);
    udata(1, &1u32.to_ne_bytes(), &mut d);
    udata(2, &0u32.to_ne_bytes(), &mut d);
    typeof_expr(udata_kind::EXPR_NUMGEN, &d)
}

impl SetUserData<'_> {
    fn encode(&self) -> Vec<u8> {
        use udata_kind::*;
        let mut out = Vec::new();
        let comment = match *self {
            SetUserData::Addresses { comment } => {
                udata(KEY_BYTEORDER, &BIG.to_ne_bytes(), &mut out);
                comment
            }
            SetUserData::Concat { comment } => {
                udata(KEY_BYTEORDER, &0u32.to_ne_bytes(), &mut out);
                udata(KEY_TYPEOF, &typeof_expr(EXPR_CONCAT, &[]), &mut out);
                comment
            }
            SetUserData::ConcatVerdictMap { comment } => {
                udata(KEY_BYTEORDER, &0u32.to_ne_bytes(), &mut out);
                udata(DATA_BYTEORDER, &0u32.to_ne_bytes(), &mut out);
                udata(KEY_TYPEOF, &typeof_expr(EXPR_CONCAT, &[]), &mut out);
                udata(DATA_INTERVAL, &0u32.to_ne_bytes(), &mut out);
                comment
            }
            SetUserData::NumgenVerdictMap { comment } => {
                udata(KEY_BYTEORDER, &HOST.to_ne_bytes(), &mut out);
                udata(DATA_BYTEORDER, &0u32.to_ne_bytes(), &mut out);
                udata(KEY_TYPEOF, &typeof_numgen_random_mod_1(), &mut out);
                // The verdict's typeof: a verdict expression (1) without data.
                udata(DATA_TYPEOF, &typeof_expr(1, &[]), &mut out);
                udata(DATA_INTERVAL, &0u32.to_ne_bytes(), &mut out);
                comment
            }
            SetUserData::NumgenAddressPortMap { ipv6, comment }
            | SetUserData::RandomRangeAddressPortMap { ipv6, comment } => {
                let random = matches!(self, SetUserData::RandomRangeAddressPortMap { .. });
                if random {
                    udata(KEY_BYTEORDER, &BIG.to_ne_bytes(), &mut out);
                    udata(DATA_BYTEORDER, &0u32.to_ne_bytes(), &mut out);
                    let mut key = Vec::new();
                    udata(0, &META_PRANDOM.to_ne_bytes(), &mut key);
                    udata(KEY_TYPEOF, &typeof_expr(EXPR_META, &key), &mut out);
                } else {
                    udata(KEY_BYTEORDER, &HOST.to_ne_bytes(), &mut out);
                    udata(DATA_BYTEORDER, &0u32.to_ne_bytes(), &mut out);
                    udata(KEY_TYPEOF, &typeof_numgen_random_mod_1(), &mut out);
                }
                let address = if ipv6 {
                    typeof_payload(DESC_IP6, IP6_DADDR)
                } else {
                    typeof_payload(DESC_IP, IP_DADDR)
                };
                // `tcp dport` for the slot map; `th dport` for the range map, which TCP, UDP
                // and SCTP Services share (nft refuses `tcp dport` next to a UDP rule).
                let port_desc = if random { DESC_TH } else { DESC_TCP };
                let mut parts = Vec::new();
                udata(0, &address, &mut parts);
                udata(1, &typeof_payload(port_desc, TCP_DPORT), &mut parts);
                udata(DATA_TYPEOF, &typeof_expr(EXPR_CONCAT, &parts), &mut out);
                udata(DATA_INTERVAL, &0u32.to_ne_bytes(), &mut out);
                comment
            }
        };
        if let Some(c) = comment {
            let mut v = c.as_bytes().to_vec();
            v.push(0);
            udata(COMMENT, &v, &mut out);
        }
        out
    }
}

/// Creates a set or map.
pub fn new_set(family: u8, spec: &SetSpec<'_>) -> Command {
    let mut attrs = vec![
        NftAttribute::string(1, spec.table),
        NftAttribute::string(2, spec.name),
        NftAttribute::u32(3, spec.flags),
        NftAttribute::u32(4, spec.key.0),
        NftAttribute::u32(5, spec.key.1),
    ];
    if let Some((t, l)) = spec.data {
        attrs.push(NftAttribute::u32(6, t));
        attrs.push(NftAttribute::u32(7, l));
    }
    attrs.push(NftAttribute::u32(10, spec.id));
    if let Some(t) = spec.timeout_ms {
        attrs.push(NftAttribute::u64(11, t));
    }
    attrs.push(NftAttribute::bytes(13, spec.user_data.encode()));
    Command {
        message: NftMessage::command(msg::NEWSET, family, attrs),
        flags: NLM_F_CREATE,
    }
}

/// Deletes a set.
pub fn delete_set(family: u8, table: &str, name: &str) -> Command {
    Command {
        message: NftMessage::command(
            msg::DELSET,
            family,
            vec![
                NftAttribute::string(1, table),
                NftAttribute::string(2, name),
            ],
        ),
        flags: 0,
    }
}

/// One element: its key bytes and, in a map, its verdict or its data.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element {
    /// The key as the kernel compares it (concatenation parts padded to 4 bytes).
    pub key: Vec<u8>,
    /// The verdict, in a verdict map.
    pub verdict: Option<Verdict>,
    /// The value, in a data map (concatenation parts padded to 4 bytes).
    pub data: Option<Vec<u8>>,
    /// `NFT_SET_ELEM_INTERVAL_END`: in an interval set, the key where the range before ends
    /// (exclusive); such an element has no value.
    pub interval_end: bool,
}

impl Element {
    /// The element as item `index` (1-based, as `nft` numbers them) of an element list.
    fn to_attribute(&self, index: usize) -> NftAttribute {
        let mut v = Vec::with_capacity(3);
        if self.interval_end {
            // NFTA_SET_ELEM_FLAGS, before the key as nft sends it.
            v.push(NftAttribute::u32(3, 1));
        }
        v.push(data_value(1, &self.key));
        if let Some(verdict) = &self.verdict {
            v.push(NftAttribute::nested(2, vec![verdict.data_attribute()]));
        } else if let Some(data) = &self.data {
            v.push(data_value(2, data));
        }
        NftAttribute::nested(index as u16, v)
    }

    /// Reads one `NFTA_LIST_ELEM` of a dump.
    pub fn from_attribute(attr: &NftAttribute) -> Option<Self> {
        let children = attr.children().ok()?;
        let key = children
            .iter()
            .find(|a| a.kind == 1)?
            .children()
            .ok()?
            .into_iter()
            .find(|a| a.kind == 1)?
            .value_bytes()
            .to_vec();
        let value = children
            .iter()
            .find(|a| a.kind == 2)
            .and_then(|d| d.children().ok());
        let verdict = value.as_ref().and_then(|inner| {
            let v = inner.iter().find(|a| a.kind == 2)?;
            Verdict::from_data(&v.children().ok()?)
        });
        let data = value
            .as_ref()
            .and_then(|inner| Some(inner.iter().find(|a| a.kind == 1)?.value_bytes().to_vec()));
        let interval_end = children
            .iter()
            .find(|a| a.kind == 3)
            .and_then(NftAttribute::as_u32)
            .is_some_and(|f| f & 1 != 0);
        Some(Self {
            key,
            verdict,
            data,
            interval_end,
        })
    }
}

fn elements_message(
    command: u8,
    family: u8,
    table: &str,
    set: &str,
    set_id: Option<u32>,
    elements: &[Element],
) -> NftMessage {
    let mut attrs = vec![NftAttribute::string(1, table), NftAttribute::string(2, set)];
    if let Some(id) = set_id {
        attrs.push(NftAttribute::u32(4, id));
    }
    attrs.push(NftAttribute::nested(
        3,
        elements
            .iter()
            .enumerate()
            .map(|(i, e)| e.to_attribute(i + 1))
            .collect(),
    ));
    NftMessage::command(command, family, attrs)
}

/// Adds elements to a set or map, in one message. `set_id` is the set's transaction id (see
/// [`super::expr::Expr::Lookup`]).
pub fn add_elements(
    family: u8,
    table: &str,
    set: &str,
    set_id: u32,
    elements: &[Element],
) -> Command {
    Command {
        message: elements_message(msg::NEWSETELEM, family, table, set, Some(set_id), elements),
        flags: NLM_F_CREATE,
    }
}

/// Deletes elements (by key) from a set or map, in one message.
pub fn delete_elements(family: u8, table: &str, set: &str, elements: &[Element]) -> Command {
    Command {
        message: elements_message(msg::DELSETELEM, family, table, set, None, elements),
        flags: 0,
    }
}

/// `NFT_OBJECT_COUNTER`.
pub const OBJECT_COUNTER: u32 = 1;

/// A named counter.
pub fn new_counter(family: u8, table: &str, name: &str) -> Command {
    Command {
        message: NftMessage::command(
            msg::NEWOBJ,
            family,
            vec![
                NftAttribute::string(1, table),
                NftAttribute::string(2, name),
                NftAttribute::u32(3, OBJECT_COUNTER),
                NftAttribute::nested(4, vec![NftAttribute::u64(1, 0), NftAttribute::u64(2, 0)]),
            ],
        ),
        flags: NLM_F_CREATE,
    }
}

/// Deletes a named counter.
pub fn delete_counter(family: u8, table: &str, name: &str) -> Command {
    Command {
        message: NftMessage::command(
            msg::DELOBJ,
            family,
            vec![
                NftAttribute::string(1, table),
                NftAttribute::string(2, name),
                NftAttribute::u32(3, OBJECT_COUNTER),
            ],
        ),
        flags: 0,
    }
}

/// A dump request for the objects of `command` (GETCHAIN, GETSET, GETOBJ, …) of one table.
pub fn dump_request(command: u8, family: u8, table: &str) -> NftMessage {
    NftMessage::command(command, family, vec![NftAttribute::string(1, table)])
}

/// A dump request for one set's elements.
pub fn dump_elements_request(family: u8, table: &str, set: &str) -> NftMessage {
    NftMessage::command(
        msg::GETSETELEM,
        family,
        vec![NftAttribute::string(1, table), NftAttribute::string(2, set)],
    )
}

/// The name (`NFTA_*_NAME`, kind 3 for chains, 2 for sets and objects) of a dumped object.
pub fn dumped_name(message: &NftMessage) -> Option<String> {
    let kind = match message.message_type {
        super::wire::NftMessageType::Command(msg::NEWCHAIN) => 3,
        _ => 2,
    };
    message.attribute(kind)?.as_string()
}

/// The elements of one dumped `NEWSETELEM` answer.
pub fn dumped_elements(message: &NftMessage) -> Vec<Element> {
    let Some(list) = message.attribute(3) else {
        return Vec::new();
    };
    list.children()
        .unwrap_or_default()
        .iter()
        .filter_map(Element::from_attribute)
        .collect()
}

/// A dumped counter: its name, packets and bytes.
pub fn dumped_counter(message: &NftMessage) -> Option<(String, u64, u64)> {
    let name = message.attribute(2)?.as_string()?;
    let data = message.attribute(4)?.children().ok()?;
    let bytes = data.iter().find(|a| a.kind == 1)?.as_u64()?;
    let packets = data.iter().find(|a| a.kind == 2)?.as_u64()?;
    Some((name, packets, bytes))
}
