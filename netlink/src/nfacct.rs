//! nfacct objects over netlink (`NFNL_SUBSYS_ACCT`): the named packet/byte counters that
//! `-m nfacct --nfacct-name NAME` rules add to. kube-proxy counts two things with them since
//! v1.29 (dropped conntrack-INVALID packets, accepted localhost NodePort packets); an `nfacct`
//! object must exist before a rule can name it. No crate has these messages; the layout is the
//! kernel's `include/uapi/linux/netfilter/nfnetlink_acct.h`, checked against the `nfacct` CLI.

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable, Nla, NlaBuffer, NlasIterator, Parseable, NLM_F_ACK,
    NLM_F_REQUEST,
};

use crate::socket::{NetlinkSocket, SocketError};

/// nfnetlink subsystem id of nfacct.
pub const NFNL_SUBSYS_ACCT: u8 = 7;
/// The longest object name, without the NUL (`NFACCT_NAME_MAX` is 32 with it).
pub const MAX_NAME_LEN: usize = 31;

const NLM_F_CREATE: u16 = 0x400;
const KIND_MASK: u16 =
    !(netlink_packet_core::NLA_F_NESTED | netlink_packet_core::NLA_F_NET_BYTEORDER);

/// An nfacct command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NfacctCommand {
    /// 0: create (or, from the kernel, an object's description).
    New,
    /// 1: get one object, or dump all.
    Get,
    /// 2: get and zero.
    GetCtrZero,
    /// 3: delete.
    Del,
    /// Any other number.
    Other(u8),
}

impl From<NfacctCommand> for u8 {
    fn from(c: NfacctCommand) -> u8 {
        match c {
            NfacctCommand::New => 0,
            NfacctCommand::Get => 1,
            NfacctCommand::GetCtrZero => 2,
            NfacctCommand::Del => 3,
            NfacctCommand::Other(n) => n,
        }
    }
}

impl From<u8> for NfacctCommand {
    fn from(n: u8) -> Self {
        match n {
            0 => Self::New,
            1 => Self::Get,
            2 => Self::GetCtrZero,
            3 => Self::Del,
            n => Self::Other(n),
        }
    }
}

/// An nfacct attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NfacctAttribute {
    /// `NFACCT_NAME`.
    Name(String),
    /// `NFACCT_PKTS` (big-endian u64).
    Packets(u64),
    /// `NFACCT_BYTES` (big-endian u64).
    Bytes(u64),
    /// `NFACCT_USE`: how many rules use the object.
    Use(u32),
    /// Anything else.
    Other(DefaultNla),
}

impl Nla for NfacctAttribute {
    fn value_len(&self) -> usize {
        match self {
            Self::Name(n) => n.len() + 1,
            Self::Packets(_) | Self::Bytes(_) => 8,
            Self::Use(_) => 4,
            Self::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Self::Name(_) => 1,
            Self::Packets(_) => 2,
            Self::Bytes(_) => 3,
            Self::Use(_) => 4,
            Self::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            Self::Name(n) => {
                buf[..n.len()].copy_from_slice(n.as_bytes());
                buf[n.len()] = 0;
            }
            Self::Packets(v) | Self::Bytes(v) => buf[..8].copy_from_slice(&v.to_be_bytes()),
            Self::Use(v) => buf[..4].copy_from_slice(&v.to_be_bytes()),
            Self::Other(nla) => nla.emit_value(buf),
        }
    }
}

impl NfacctAttribute {
    fn parse(nla: &NlaBuffer<&[u8]>) -> Result<Self, DecodeError> {
        let v = nla.value();
        let short = || DecodeError::from("nfacct: short attribute");
        Ok(match nla.kind() & KIND_MASK {
            1 => {
                let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
                Self::Name(
                    String::from_utf8(v[..end].to_vec())
                        .map_err(|_| DecodeError::from("nfacct: name is not UTF-8"))?,
                )
            }
            2 => Self::Packets(u64::from_be_bytes(
                v.get(..8).ok_or_else(short)?.try_into().expect("8"),
            )),
            3 => Self::Bytes(u64::from_be_bytes(
                v.get(..8).ok_or_else(short)?.try_into().expect("8"),
            )),
            4 => Self::Use(u32::from_be_bytes(
                v.get(..4).ok_or_else(short)?.try_into().expect("4"),
            )),
            _ => Self::Other(DefaultNla::parse(nla)?),
        })
    }
}

/// One nfacct request or answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NfacctMessage {
    /// The command.
    pub command: NfacctCommand,
    /// The attributes.
    pub attributes: Vec<NfacctAttribute>,
}

impl NetlinkSerializable for NfacctMessage {
    fn message_type(&self) -> u16 {
        (u16::from(NFNL_SUBSYS_ACCT) << 8) | u16::from(u8::from(self.command))
    }

    fn buffer_len(&self) -> usize {
        4 + self.attributes.as_slice().buffer_len()
    }

    fn serialize(&self, buf: &mut [u8]) {
        buf[..4].copy_from_slice(&[0, 0, 0, 0]); // nfgenmsg: AF_UNSPEC, v0, res_id 0
        self.attributes.as_slice().emit(&mut buf[4..]);
    }
}

impl NetlinkDeserializable for NfacctMessage {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, Self::Error> {
        if header.message_type >> 8 != u16::from(NFNL_SUBSYS_ACCT) {
            return Err(DecodeError::from("not an nfacct message"));
        }
        let body = payload
            .get(4..)
            .ok_or_else(|| DecodeError::from("nfacct: no nfgenmsg header"))?;
        Ok(Self {
            command: NfacctCommand::from(header.message_type as u8),
            attributes: NlasIterator::new(body)
                .map(|nla| NfacctAttribute::parse(&nla?))
                .collect::<Result<_, _>>()?,
        })
    }
}

fn request(
    command: NfacctCommand,
    flags: u16,
    attributes: Vec<NfacctAttribute>,
) -> NetlinkMessage<NfacctMessage> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut m = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(NfacctMessage {
            command,
            attributes,
        }),
    );
    m.finalize();
    m
}

/// The request that creates `name` with zero counters, as `nfacct add` sends it.
pub fn new_request(name: &str) -> NetlinkMessage<NfacctMessage> {
    request(
        NfacctCommand::New,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
        vec![
            NfacctAttribute::Name(name.to_owned()),
            NfacctAttribute::Packets(0),
            NfacctAttribute::Bytes(0),
        ],
    )
}

/// The request that reads `name`'s counters, as `nfacct get` sends it.
pub fn get_request(name: &str) -> NetlinkMessage<NfacctMessage> {
    request(
        NfacctCommand::Get,
        NLM_F_REQUEST | NLM_F_ACK,
        vec![NfacctAttribute::Name(name.to_owned())],
    )
}

/// An nfacct operation that failed, naming the object.
#[derive(Debug, thiserror::Error)]
#[error("nfacct {name}: {source}")]
pub struct NfacctError {
    /// The object.
    pub name: String,
    /// What failed.
    #[source]
    pub source: SocketError,
}

/// What a proxier needs of nfacct; a trait so it can be faked.
pub trait NfacctOps: Send + std::fmt::Debug {
    /// Creates `name` unless it exists.
    fn ensure(&mut self, name: &str) -> Result<(), NfacctError>;
    /// `name`'s packet and byte counters.
    fn counters(&mut self, name: &str) -> Result<(u64, u64), NfacctError>;
    /// Deletes `name`; `Ok(false)` if it did not exist.
    fn delete(&mut self, name: &str) -> Result<bool, NfacctError>;
}

/// nfacct over a `NETLINK_NETFILTER` socket of the current network namespace.
#[derive(Debug)]
pub struct NetlinkNfacct {
    socket: NetlinkSocket,
}

impl NetlinkNfacct {
    /// Opens the socket.
    pub fn open() -> Result<Self, SocketError> {
        Ok(Self {
            socket: NetlinkSocket::open(netlink_sys::protocols::NETLINK_NETFILTER)?,
        })
    }
}

const EBUSY: i32 = 16;

impl NfacctOps for NetlinkNfacct {
    fn ensure(&mut self, name: &str) -> Result<(), NfacctError> {
        match self.socket.request(new_request(name), "nfacct new") {
            Ok(_) => Ok(()),
            // An object of that name exists (created earlier, or by a previous run).
            Err(e) if e.errno() == Some(EBUSY) => Ok(()),
            Err(source) => Err(NfacctError {
                name: name.to_owned(),
                source,
            }),
        }
    }

    fn counters(&mut self, name: &str) -> Result<(u64, u64), NfacctError> {
        let answers = self
            .socket
            .request(get_request(name), "nfacct get")
            .map_err(|source| NfacctError {
                name: name.to_owned(),
                source,
            })?;
        let (mut packets, mut bytes) = (0, 0);
        for a in answers.iter().flat_map(|m| &m.attributes) {
            match a {
                NfacctAttribute::Packets(p) => packets = *p,
                NfacctAttribute::Bytes(b) => bytes = *b,
                _ => {}
            }
        }
        Ok((packets, bytes))
    }

    fn delete(&mut self, name: &str) -> Result<bool, NfacctError> {
        let msg = request(
            NfacctCommand::Del,
            NLM_F_REQUEST | NLM_F_ACK,
            vec![NfacctAttribute::Name(name.to_owned())],
        );
        match self.socket.request(msg, "nfacct del") {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(2) => Ok(false), // ENOENT
            Err(source) => Err(NfacctError {
                name: name.to_owned(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(mut m: NetlinkMessage<NfacctMessage>, seq: u32) -> Vec<u8> {
        m.header.sequence_number = seq;
        m.finalize();
        let mut out = vec![0; m.buffer_len()];
        m.serialize(&mut out);
        out
    }

    const NAME: &[u8] = b"ct_state_invalid_dropped_pkts\0\0\0"; // 30 bytes + NUL, padded to 32

    /// `nfacct add ct_state_invalid_dropped_pkts`, captured (seq set to 1).
    #[rustfmt::skip]
    #[test]
    fn new_request_bytes() {
        let expected: Vec<u8> = [
            &80u32.to_ne_bytes()[..],                // nlmsghdr.len
            &0x0700u16.to_ne_bytes(),                // ACCT << 8 | NFNL_MSG_ACCT_NEW
            &0x0405u16.to_ne_bytes(),                // REQUEST | ACK | CREATE
            &1u32.to_ne_bytes(), &0u32.to_ne_bytes(),
            &[0, 0, 0, 0],                           // nfgenmsg: AF_UNSPEC, v0, res_id 0
            &34u16.to_ne_bytes(), &1u16.to_ne_bytes(), NAME,            // NFACCT_NAME
            &12u16.to_ne_bytes(), &2u16.to_ne_bytes(), &0u64.to_be_bytes(), // NFACCT_PKTS 0
            &12u16.to_ne_bytes(), &3u16.to_ne_bytes(), &0u64.to_be_bytes(), // NFACCT_BYTES 0
        ].concat();
        assert_eq!(bytes(new_request("ct_state_invalid_dropped_pkts"), 1), expected);
    }

    /// `nfacct get NAME` and the kernel's answer (`NFNL_MSG_ACCT_NEW`, MULTI, with the use count).
    #[rustfmt::skip]
    #[test]
    fn get_request_and_answer() {
        let expected: Vec<u8> = [
            &56u32.to_ne_bytes()[..], &0x0701u16.to_ne_bytes(), &0x0005u16.to_ne_bytes(),
            &1u32.to_ne_bytes(), &0u32.to_ne_bytes(), &[0, 0, 0, 0],
            &34u16.to_ne_bytes(), &1u16.to_ne_bytes(), NAME,
        ].concat();
        assert_eq!(bytes(get_request("ct_state_invalid_dropped_pkts"), 1), expected);

        let answer: Vec<u8> = [
            &88u32.to_ne_bytes()[..], &0x0700u16.to_ne_bytes(), &0x0002u16.to_ne_bytes(),
            &1u32.to_ne_bytes(), &0x1300u32.to_ne_bytes(), &[0, 0, 0, 0],
            &34u16.to_ne_bytes(), &1u16.to_ne_bytes(), NAME,
            &12u16.to_ne_bytes(), &2u16.to_ne_bytes(), &7u64.to_be_bytes(),   // 7 packets
            &12u16.to_ne_bytes(), &3u16.to_ne_bytes(), &420u64.to_be_bytes(), // 420 bytes
            &8u16.to_ne_bytes(), &4u16.to_ne_bytes(), &1u32.to_be_bytes(),    // used by 1 rule
        ].concat();
        let m = NetlinkMessage::<NfacctMessage>::deserialize(&answer).unwrap();
        let NetlinkPayload::InnerMessage(m) = m.payload else { panic!("{m:?}") };
        assert_eq!(m.command, NfacctCommand::New);
        assert_eq!(
            m.attributes,
            vec![
                NfacctAttribute::Name("ct_state_invalid_dropped_pkts".into()),
                NfacctAttribute::Packets(7),
                NfacctAttribute::Bytes(420),
                NfacctAttribute::Use(1),
            ]
        );
    }
}
