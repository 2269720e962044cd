//! The wire form of nf_tables messages: an nfgenmsg header and a tree of attributes.
//!
//! nf_tables nests attributes several levels deep (a rule's expressions, an expression's data, a
//! set element's key), and the tool and the kernel disagree on flags: `nft` marks nests with
//! `NLA_F_NESTED`, the kernel's dumps mostly do not. So an attribute keeps its flags as they came
//! and its value as bytes or as children; [`NftAttribute::children`] reads a value as a nest on
//! demand. Emitting a parsed message gives back exactly the bytes it was parsed from.

use netlink_packet_core::{
    DecodeError, Emitable, NetlinkDeserializable, NetlinkHeader, NetlinkSerializable, Nla,
    NlaBuffer, NlasIterator, NLA_F_NESTED, NLA_F_NET_BYTEORDER,
};

/// nfnetlink subsystem id of nf_tables (`NFNL_SUBSYS_NFTABLES`).
pub const NFNL_SUBSYS_NFTABLES: u8 = 10;
/// `NFNL_MSG_BATCH_BEGIN`: opens a transaction.
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
/// `NFNL_MSG_BATCH_END`: commits it.
pub const NFNL_MSG_BATCH_END: u16 = 0x11;

/// One attribute: a kind, its flag bits, and bytes or children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftAttribute {
    /// The kind without flag bits (`NFTA_*`).
    pub kind: u16,
    /// `NLA_F_NESTED` / `NLA_F_NET_BYTEORDER` as sent.
    pub flags: u16,
    /// The value.
    pub value: NftValue,
}

/// An attribute's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NftValue {
    /// Raw bytes (integers are big-endian in nf_tables, strings NUL-terminated).
    Bytes(Vec<u8>),
    /// Nested attributes.
    Nested(Vec<NftAttribute>),
}

impl NftAttribute {
    /// Raw bytes.
    pub fn bytes(kind: u16, value: impl Into<Vec<u8>>) -> Self {
        Self {
            kind,
            flags: 0,
            value: NftValue::Bytes(value.into()),
        }
    }

    /// A big-endian `u32` (nf_tables' integers are network byte order).
    pub fn u32(kind: u16, value: u32) -> Self {
        Self::bytes(kind, value.to_be_bytes())
    }

    /// A big-endian `u64`.
    pub fn u64(kind: u16, value: u64) -> Self {
        Self::bytes(kind, value.to_be_bytes())
    }

    /// A NUL-terminated string.
    pub fn string(kind: u16, value: &str) -> Self {
        let mut v = Vec::with_capacity(value.len() + 1);
        v.extend_from_slice(value.as_bytes());
        v.push(0);
        Self::bytes(kind, v)
    }

    /// A nest, flagged `NLA_F_NESTED` as `nft` sends it.
    pub fn nested(kind: u16, children: Vec<NftAttribute>) -> Self {
        Self {
            kind,
            flags: NLA_F_NESTED,
            value: NftValue::Nested(children),
        }
    }

    /// The value's bytes (empty for a nest built here).
    pub fn value_bytes(&self) -> &[u8] {
        match &self.value {
            NftValue::Bytes(b) => b,
            NftValue::Nested(_) => &[],
        }
    }

    /// The value as a big-endian `u32`.
    pub fn as_u32(&self) -> Option<u32> {
        let b = self.value_bytes();
        Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
    }

    /// The value as a big-endian `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        let b = self.value_bytes();
        Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
    }

    /// The value as a string (up to its NUL).
    pub fn as_string(&self) -> Option<String> {
        let b = self.value_bytes();
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        std::str::from_utf8(&b[..end]).ok().map(str::to_owned)
    }

    /// The value read as nested attributes, whether or not it was flagged as a nest (the
    /// kernel's dumps nest without `NLA_F_NESTED`).
    pub fn children(&self) -> Result<Vec<NftAttribute>, DecodeError> {
        match &self.value {
            NftValue::Nested(c) => Ok(c.clone()),
            NftValue::Bytes(b) => parse_attributes(b),
        }
    }
}

impl Nla for NftAttribute {
    fn value_len(&self) -> usize {
        match &self.value {
            NftValue::Bytes(b) => b.len(),
            NftValue::Nested(children) => children.as_slice().buffer_len(),
        }
    }

    fn kind(&self) -> u16 {
        self.kind | self.flags
    }

    fn emit_value(&self, buf: &mut [u8]) {
        match &self.value {
            NftValue::Bytes(b) => buf[..b.len()].copy_from_slice(b),
            NftValue::Nested(children) => children.as_slice().emit(buf),
        }
    }
}

/// Appends attributes to `out` in one pass, each nest's length patched after its children are
/// written (netlink-packet-core's `Emitable` asks every level for its length again, which costs
/// a full load of 300,000 messages a sixth of its time).
pub fn emit_attributes(attrs: &[NftAttribute], out: &mut Vec<u8>) {
    for a in attrs {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        match &a.value {
            NftValue::Bytes(b) => out.extend_from_slice(b),
            NftValue::Nested(children) => emit_attributes(children, out),
        }
        let len = (out.len() - at) as u16;
        out[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        out[at + 2..at + 4].copy_from_slice(&(a.kind | a.flags).to_ne_bytes());
        out.resize((out.len() + 3) & !3, 0);
    }
}

/// Parses a run of attributes; those flagged `NLA_F_NESTED` are parsed into children.
pub fn parse_attributes(bytes: &[u8]) -> Result<Vec<NftAttribute>, DecodeError> {
    let mut out = Vec::new();
    for nla in NlasIterator::new(bytes) {
        let nla = nla?;
        out.push(parse_attribute(&nla)?);
    }
    Ok(out)
}

fn parse_attribute(nla: &NlaBuffer<&[u8]>) -> Result<NftAttribute, DecodeError> {
    let kind = nla.kind();
    let mut flags = 0;
    if nla.nested_flag() {
        flags |= NLA_F_NESTED;
    }
    if nla.network_byte_order_flag() {
        flags |= NLA_F_NET_BYTEORDER;
    }
    let value = if flags & NLA_F_NESTED != 0 {
        NftValue::Nested(parse_attributes(nla.value())?)
    } else {
        NftValue::Bytes(nla.value().to_vec())
    };
    Ok(NftAttribute { kind, flags, value })
}

/// What a message is: an nf_tables command or a batch delimiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NftMessageType {
    /// `NFNL_MSG_BATCH_BEGIN`.
    BatchBegin,
    /// `NFNL_MSG_BATCH_END`.
    BatchEnd,
    /// `(NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_*`.
    Command(u8),
}

/// `NFT_MSG_*` numbers.
pub mod msg {
    /// Create a table.
    pub const NEWTABLE: u8 = 0;
    /// Get (dump) tables.
    pub const GETTABLE: u8 = 1;
    /// Delete a table.
    pub const DELTABLE: u8 = 2;
    /// Create a chain.
    pub const NEWCHAIN: u8 = 3;
    /// Get chains.
    pub const GETCHAIN: u8 = 4;
    /// Delete a chain.
    pub const DELCHAIN: u8 = 5;
    /// Create a rule.
    pub const NEWRULE: u8 = 6;
    /// Get rules.
    pub const GETRULE: u8 = 7;
    /// Delete a rule (or, with no handle, every rule of a chain).
    pub const DELRULE: u8 = 8;
    /// Create a set.
    pub const NEWSET: u8 = 9;
    /// Get sets.
    pub const GETSET: u8 = 10;
    /// Delete a set.
    pub const DELSET: u8 = 11;
    /// Add set elements.
    pub const NEWSETELEM: u8 = 12;
    /// Get set elements.
    pub const GETSETELEM: u8 = 13;
    /// Delete set elements (or, with none listed, all of them).
    pub const DELSETELEM: u8 = 14;
    /// The ruleset generation (answer).
    pub const NEWGEN: u8 = 15;
    /// Get the ruleset generation.
    pub const GETGEN: u8 = 16;
    /// Create a stateful object (a named counter).
    pub const NEWOBJ: u8 = 18;
    /// Get objects.
    pub const GETOBJ: u8 = 19;
    /// Delete an object.
    pub const DELOBJ: u8 = 20;
}

impl NftMessageType {
    /// The netlink message type.
    pub fn netlink_type(self) -> u16 {
        match self {
            Self::BatchBegin => NFNL_MSG_BATCH_BEGIN,
            Self::BatchEnd => NFNL_MSG_BATCH_END,
            Self::Command(c) => (u16::from(NFNL_SUBSYS_NFTABLES) << 8) | u16::from(c),
        }
    }

    /// The type of a netlink message type, if it is one of nf_tables'.
    pub fn from_netlink_type(t: u16) -> Option<Self> {
        match t {
            NFNL_MSG_BATCH_BEGIN => Some(Self::BatchBegin),
            NFNL_MSG_BATCH_END => Some(Self::BatchEnd),
            t if t >> 8 == u16::from(NFNL_SUBSYS_NFTABLES) => Some(Self::Command(t as u8)),
            _ => None,
        }
    }
}

/// One nf_tables message: what it is, the nfgenmsg header (family, version 0, resource id) and
/// its attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftMessage {
    /// Command or batch delimiter.
    pub message_type: NftMessageType,
    /// `NFPROTO_*` of the object (`AF_UNSPEC` for batch delimiters).
    pub family: u8,
    /// The nfgenmsg resource id, host order (batch delimiters carry the subsystem, 10; dumps
    /// answer with the ruleset generation's low 16 bits).
    pub resource_id: u16,
    /// Attributes.
    pub attributes: Vec<NftAttribute>,
}

impl NftMessage {
    /// A command about an object of `family`.
    pub fn command(command: u8, family: u8, attributes: Vec<NftAttribute>) -> Self {
        Self {
            message_type: NftMessageType::Command(command),
            family,
            resource_id: 0,
            attributes,
        }
    }

    /// `NFNL_MSG_BATCH_BEGIN` for nf_tables.
    pub fn batch_begin() -> Self {
        Self {
            message_type: NftMessageType::BatchBegin,
            family: 0,
            resource_id: u16::from(NFNL_SUBSYS_NFTABLES),
            attributes: Vec::new(),
        }
    }

    /// `NFNL_MSG_BATCH_END` for nf_tables.
    pub fn batch_end() -> Self {
        Self {
            message_type: NftMessageType::BatchEnd,
            ..Self::batch_begin()
        }
    }

    /// The first attribute of `kind`.
    pub fn attribute(&self, kind: u16) -> Option<&NftAttribute> {
        self.attributes.iter().find(|a| a.kind == kind)
    }
}

impl NetlinkSerializable for NftMessage {
    fn message_type(&self) -> u16 {
        self.message_type.netlink_type()
    }

    fn buffer_len(&self) -> usize {
        4 + self.attributes.as_slice().buffer_len()
    }

    fn serialize(&self, buf: &mut [u8]) {
        buf[0] = self.family;
        buf[1] = 0;
        buf[2..4].copy_from_slice(&self.resource_id.to_be_bytes());
        self.attributes.as_slice().emit(&mut buf[4..]);
    }
}

impl NetlinkDeserializable for NftMessage {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, Self::Error> {
        let message_type =
            NftMessageType::from_netlink_type(header.message_type).ok_or_else(|| {
                DecodeError::from(format!("not an nf_tables message: {}", header.message_type))
            })?;
        if payload.len() < 4 {
            return Err("nf_tables message shorter than its nfgenmsg header".into());
        }
        Ok(Self {
            message_type,
            family: payload[0],
            resource_id: u16::from_be_bytes([payload[2], payload[3]]),
            attributes: parse_attributes(&payload[4..])?,
        })
    }
}

impl From<NftMessage> for netlink_packet_core::NetlinkPayload<NftMessage> {
    fn from(m: NftMessage) -> Self {
        netlink_packet_core::NetlinkPayload::InnerMessage(m)
    }
}
