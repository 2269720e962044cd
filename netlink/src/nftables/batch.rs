//! One nf_tables transaction: commands serialized into one datagram between
//! `NFNL_MSG_BATCH_BEGIN` and `NFNL_MSG_BATCH_END`, which the kernel applies atomically — all of
//! it or, on any error, none of it.
//!
//! Commands are serialized as they are pushed, so a transaction of 600,000 commands holds one
//! buffer, not 600,000 message trees. Only the last command asks for an acknowledgement: the
//! kernel reports every failing command anyway, and it handles the datagram before `send`
//! returns, so reading what is queued afterwards sees every answer.

use std::fmt;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_sys::protocols::NETLINK_NETFILTER;

use super::expr::Verdict;
use super::objects::{Command, Element};
use super::wire::{emit_attributes, NftMessage, NftMessageType};
use crate::socket::{NetlinkSocket, SocketError};

/// Commands waiting to be committed as one batch.
#[derive(Clone, Default)]
pub struct Transaction {
    buf: Vec<u8>,
    /// Where each message (batch begin first) starts in `buf`.
    offsets: Vec<u32>,
}

impl fmt::Debug for Transaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("commands", &self.len())
            .field("bytes", &self.buf.len())
            .finish()
    }
}

impl Transaction {
    /// An empty transaction.
    pub fn new() -> Self {
        let mut t = Self::default();
        t.write(&NftMessage::batch_begin(), 0);
        t
    }

    /// Appends one message: the netlink header (sequence number 0 until [`Self::finish`]), the
    /// nfgenmsg header and the attributes, in one pass over the attribute tree.
    fn write(&mut self, message: &NftMessage, flags: u16) {
        let at = self.buf.len();
        self.offsets.push(at as u32);
        let buf = &mut self.buf;
        buf.extend_from_slice(&[0; 4]); // length, patched below
        buf.extend_from_slice(&message.message_type.netlink_type().to_ne_bytes());
        buf.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        buf.extend_from_slice(&[0; 8]); // sequence number, port id
        buf.push(message.family);
        buf.push(0);
        buf.extend_from_slice(&message.resource_id.to_be_bytes());
        emit_attributes(&message.attributes, buf);
        let len = (buf.len() - at) as u32;
        buf[at..at + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// Adds a command.
    pub fn push(&mut self, command: Command) {
        self.write(&command.message, command.flags);
    }

    /// Adds elements to (`add`) or deletes them from a set, written straight into the buffer:
    /// the same bytes as pushing [`objects::add_elements`](super::objects::add_elements) /
    /// [`objects::delete_elements`](super::objects::delete_elements), without building their
    /// attribute trees (a full load sends 400,000 elements; the trees were most of its own
    /// cost). `set_id` is sent with additions only, as `nft` does.
    pub fn push_elements(
        &mut self,
        add: bool,
        family: u8,
        table: &str,
        set: &str,
        set_id: u32,
        elements: &[Element],
    ) {
        use super::wire::msg;
        let at = self.buf.len();
        self.offsets.push(at as u32);
        let (command, flags) = if add {
            (msg::NEWSETELEM, super::objects::NLM_F_CREATE)
        } else {
            (msg::DELSETELEM, 0)
        };
        let buf = &mut self.buf;
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(
            &NftMessageType::Command(command)
                .netlink_type()
                .to_ne_bytes(),
        );
        buf.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        buf.extend_from_slice(&[0; 8]);
        buf.extend_from_slice(&[family, 0, 0, 0]);
        put_string(buf, 1, table);
        put_string(buf, 2, set);
        if add {
            put(buf, 4, &set_id.to_be_bytes());
        }
        let list = nest_start(buf, 3);
        for (i, e) in elements.iter().enumerate() {
            let item = nest_start(buf, (i + 1) as u16);
            if e.interval_end {
                put(buf, 3, &1u32.to_be_bytes());
            }
            let key = nest_start(buf, 1);
            put(buf, 1, &e.key);
            nest_end(buf, key);
            if let Some(v) = &e.verdict {
                let data = nest_start(buf, 2);
                let verdict = nest_start(buf, 2);
                put(buf, 1, &v.code().to_be_bytes());
                if let Verdict::Jump(c) | Verdict::Goto(c) = v {
                    put_string(buf, 2, c);
                }
                nest_end(buf, verdict);
                nest_end(buf, data);
            } else if let Some(d) = &e.data {
                let data = nest_start(buf, 2);
                put(buf, 1, d);
                nest_end(buf, data);
            }
            nest_end(buf, item);
        }
        nest_end(buf, list);
        let len = (buf.len() - at) as u32;
        buf[at..at + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// The number of commands.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The serialized commands' size in bytes (without the batch delimiters).
    pub fn byte_len(&self) -> usize {
        self.buf.len().saturating_sub(20)
    }

    /// The commands as messages (parsed back from the buffer; for tests and error reports).
    pub fn messages(&self) -> Vec<(u16, NftMessage)> {
        (1..self.offsets.len())
            .filter_map(|i| self.parse_at(i))
            .collect()
    }

    fn parse_at(&self, index: usize) -> Option<(u16, NftMessage)> {
        let at = *self.offsets.get(index)? as usize;
        let m = NetlinkMessage::<NftMessage>::deserialize(&self.buf[at..]).ok()?;
        match m.payload {
            NetlinkPayload::InnerMessage(inner) => Some((m.header.flags, inner)),
            _ => None,
        }
    }

    /// Describes command `index` (1-based, as sequence offsets are) for an error message.
    fn describe(&self, index: usize) -> String {
        match self.parse_at(index) {
            Some((_, m)) => describe(&m),
            None => format!("command {index}"),
        }
    }

    /// Numbers the messages from `first_seq`, asks for an ACK of the last command, and closes
    /// the batch; returns the datagram.
    fn finish(&mut self, first_seq: u32) -> &[u8] {
        let last = self.offsets.len() - 1;
        for (i, &at) in self.offsets.iter().enumerate() {
            let at = at as usize;
            let seq = first_seq.wrapping_add(i as u32);
            self.buf[at + 8..at + 12].copy_from_slice(&seq.to_ne_bytes());
            if i == last && i > 0 {
                let flags = u16::from_ne_bytes([self.buf[at + 6], self.buf[at + 7]]) | NLM_F_ACK;
                self.buf[at + 6..at + 8].copy_from_slice(&flags.to_ne_bytes());
            }
        }
        let end_seq = first_seq.wrapping_add(self.offsets.len() as u32);
        let mut end = NetlinkMessage::new(
            {
                let mut h = NetlinkHeader::default();
                h.flags = NLM_F_REQUEST;
                h.sequence_number = end_seq;
                h
            },
            NetlinkPayload::InnerMessage(NftMessage::batch_end()),
        );
        end.finalize();
        let at = self.buf.len();
        self.buf.resize(at + end.buffer_len(), 0);
        end.serialize(&mut self.buf[at..]);
        &self.buf
    }
}

/// Appends an attribute.
fn put(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = (4 + value.len()) as u16;
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize((buf.len() + 3) & !3, 0);
}

/// Appends a NUL-terminated string attribute.
fn put_string(buf: &mut Vec<u8>, kind: u16, value: &str) {
    let len = (4 + value.len() + 1) as u16;
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value.as_bytes());
    buf.push(0);
    buf.resize((buf.len() + 3) & !3, 0);
}

/// Opens a nest (flagged `NLA_F_NESTED`, as `nft` sends it); returns where it starts.
fn nest_start(buf: &mut Vec<u8>, kind: u16) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&(kind | netlink_packet_core::NLA_F_NESTED).to_ne_bytes());
    at
}

/// Closes the nest opened at `at`.
fn nest_end(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at) as u16;
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

/// A short description of a command: what it does to which object.
pub fn describe(m: &NftMessage) -> String {
    use super::wire::msg;
    let verb = match m.message_type {
        NftMessageType::Command(c) => match c {
            msg::NEWTABLE => "add table",
            msg::DELTABLE => "delete table",
            msg::NEWCHAIN => "add chain",
            msg::DELCHAIN => "delete chain",
            msg::NEWRULE => "add rule to chain",
            msg::DELRULE => "flush chain",
            msg::NEWSET => "add set",
            msg::DELSET => "delete set",
            msg::NEWSETELEM => "add elements to",
            msg::DELSETELEM => "delete elements from",
            msg::NEWOBJ => "add counter",
            msg::DELOBJ => "delete counter",
            _ => "command",
        },
        NftMessageType::BatchBegin => "batch begin",
        NftMessageType::BatchEnd => "batch end",
    };
    let name = match m.message_type {
        NftMessageType::Command(msg::NEWTABLE | msg::DELTABLE) => m.attribute(1),
        NftMessageType::Command(msg::NEWCHAIN | msg::DELCHAIN) => m.attribute(3),
        _ => m.attribute(2),
    }
    .and_then(|a| a.as_string())
    .unwrap_or_default();
    format!("{verb} {name}")
}

/// Why a transaction was not applied.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The socket failed, or an answer did not parse.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The kernel refused commands; nothing of the transaction was applied.
    #[error("nf_tables transaction of {commands} commands refused: {}", .refused.iter().map(|(what, e)| format!("{what}: {e}")).collect::<Vec<_>>().join("; "))]
    Refused {
        /// The size of the transaction.
        commands: usize,
        /// Each refused command (described) with the kernel's error.
        refused: Vec<(String, std::io::Error)>,
    },
    /// The kernel did not acknowledge the transaction (its answer was lost).
    #[error("nf_tables transaction of {commands} commands: no acknowledgement")]
    Unacknowledged {
        /// The size of the transaction.
        commands: usize,
    },
}

impl CommitError {
    /// The first refused command's errno, if the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            CommitError::Socket(e) => e.errno(),
            CommitError::Refused { refused, .. } => refused.first()?.1.raw_os_error(),
            CommitError::Unacknowledged { .. } => None,
        }
    }
}

/// A netfilter netlink socket for nf_tables: commits transactions and dumps objects.
#[derive(Debug)]
pub struct NftSocket {
    socket: NetlinkSocket,
}

impl NftSocket {
    /// Opens one in the caller's network namespace.
    pub fn open() -> Result<Self, SocketError> {
        Ok(Self {
            socket: NetlinkSocket::open(NETLINK_NETFILTER)?,
        })
    }

    /// Sends the transaction as one batch and waits for the kernel's verdict. An empty
    /// transaction is not sent.
    pub fn commit(&mut self, mut tx: Transaction) -> Result<(), CommitError> {
        if tx.is_empty() {
            return Ok(());
        }
        let commands = tx.len();
        let first = self.socket.reserve_sequence(tx.offsets.len() as u32 + 1);
        let last = first.wrapping_add(commands as u32);
        let datagram = tx.finish(first);
        self.socket.send_datagram(datagram, "nf_tables batch")?;
        let mut refused = Vec::new();
        let mut acknowledged = false;
        self.socket
            .drain_queued::<NftMessage>("nf_tables batch", |reply| {
                let index = reply.header.sequence_number.wrapping_sub(first) as usize;
                if index > commands {
                    return Ok(()); // not ours
                }
                if let NetlinkPayload::Error(e) = reply.payload {
                    if e.code.is_some() {
                        refused.push((index, e.to_io()));
                    }
                    if reply.header.sequence_number == last {
                        acknowledged = true;
                    }
                }
                Ok(())
            })?;
        if !refused.is_empty() {
            return Err(CommitError::Refused {
                commands,
                refused: refused
                    .into_iter()
                    .map(|(i, e)| (tx.describe(i), e))
                    .collect(),
            });
        }
        if !acknowledged {
            return Err(CommitError::Unacknowledged { commands });
        }
        Ok(())
    }

    /// The ruleset's generation (`NFT_MSG_GETGEN`): a number the kernel changes at every
    /// committed nf_tables transaction, whoever sends it (`nft`, iptables-nft, another
    /// program). Reading it after a commit of one's own and again later tells whether anyone
    /// else changed anything in between, without listing a single object.
    pub fn generation(&mut self) -> Result<u32, SocketError> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | netlink_packet_core::NLM_F_ACK;
        let request = NftMessage::command(super::wire::msg::GETGEN, 0, Vec::new());
        let message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
        let mut id = None;
        self.socket
            .request_each(message, "get the nf_tables generation", |m| {
                if let Some(v) = m.attribute(1).and_then(|a| a.as_u32()) {
                    id = Some(v);
                }
            })?;
        id.ok_or_else(|| SocketError::Io {
            operation: "get the nf_tables generation".into(),
            source: std::io::Error::other("the kernel answered without NFTA_GEN_ID"),
        })
    }

    /// Dumps objects (`request` is a GET command) and hands each answer to `each`. A missing
    /// table answers `ENOENT`.
    pub fn dump(
        &mut self,
        request: NftMessage,
        operation: &str,
        each: impl FnMut(NftMessage),
    ) -> Result<(), SocketError> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
        self.socket.request_each(message, operation, each)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nftables::expr::{Expr, ImmediateData, Verdict, REG_1, REG_VERDICT};
    use crate::nftables::objects::{new_chain, new_rule, new_table, NFPROTO_IPV4};

    /// Elements written straight into the buffer are the bytes of the element messages built
    /// as trees: verdicts, data, interval ends, additions and deletions.
    #[test]
    fn direct_elements_match_the_built_messages() {
        use crate::nftables::objects::{add_elements, delete_elements};
        let elements = [
            Element {
                key: vec![10, 0, 0, 1, 6, 0, 0, 0, 0, 80, 0, 0],
                verdict: Some(Verdict::Goto("service-x".into())),
                data: None,
                interval_end: false,
            },
            Element {
                key: vec![0, 0, 0x80, 0],
                verdict: None,
                data: Some(vec![10, 0, 0, 2, 0x1f, 0x90, 0, 0]),
                interval_end: false,
            },
            Element {
                key: vec![0, 1, 0, 0],
                verdict: None,
                data: None,
                interval_end: true,
            },
            Element {
                key: vec![1, 2, 3, 4],
                verdict: Some(Verdict::Drop),
                data: None,
                interval_end: false,
            },
        ];
        for add in [true, false] {
            let mut direct = Transaction::new();
            direct.push_elements(add, NFPROTO_IPV4, "t", "m", 7, &elements);
            let mut built = Transaction::new();
            built.push(if add {
                add_elements(NFPROTO_IPV4, "t", "m", 7, &elements)
            } else {
                delete_elements(NFPROTO_IPV4, "t", "m", &elements)
            });
            assert_eq!(direct.buf, built.buf, "add: {add}");
        }
    }

    /// The one-pass writer and netlink-packet-core's `Emitable` give the same bytes.
    #[test]
    fn one_pass_writer_matches_emitable() {
        let commands = [
            new_table(NFPROTO_IPV4, "t", Some("a comment")),
            new_chain(NFPROTO_IPV4, "t", "c", None),
            new_rule(
                NFPROTO_IPV4,
                "t",
                "c",
                &[
                    Expr::Meta {
                        key: 16,
                        dreg: REG_1,
                    },
                    Expr::Immediate {
                        dreg: REG_VERDICT,
                        data: ImmediateData::Verdict(Verdict::Jump("d".into())),
                    },
                ],
                Some("x"),
            ),
        ];
        for c in commands {
            let mut tx = Transaction::new();
            tx.push(c.clone());
            let ours = &tx.buf[tx.offsets[1] as usize..];
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST | c.flags;
            let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(c.message));
            m.finalize();
            let mut theirs = vec![0; m.buffer_len()];
            m.serialize(&mut theirs);
            assert_eq!(ours, &theirs[..]);
        }
    }
}
