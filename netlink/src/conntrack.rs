//! Listing and deleting conntrack entries over ctnetlink, without the conntrack CLI.
//!
//! The kernel deletes entries only by exact tuple, so cleanup is: dump the family's entries
//! (`IPCTNL_MSG_CT_GET` with `NLM_F_DUMP`), pick the stale ones
//! ([`proxy_core::datapath::stale_after_sync`]), delete each by its original tuple
//! (`IPCTNL_MSG_CT_DELETE`). Messages are `netlink-packet-netfilter`'s; the conntrack zone, which
//! that crate does not model, travels as a raw `CTA_ZONE` attribute (big-endian u16).

use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{
    DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use proxy_core::datapath::Flow;
use proxy_core::IpFamily;

use crate::socket::{NetlinkSocket, SocketError};

/// `CTA_ZONE`: the conntrack zone of an entry.
const CTA_ZONE: u16 = 18;

/// A conntrack operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("conntrack: {0}")]
pub struct ConntrackError(#[from] pub SocketError);

/// Dumps and deletes conntrack entries. A trait so proxiers can be tested without a kernel.
pub trait ConntrackOps: Send + std::fmt::Debug {
    /// Every entry of `family`.
    fn flows(&mut self, family: IpFamily) -> Result<Vec<Flow>, ConntrackError>;
    /// Deletes one entry; `Ok(false)` if it was already gone.
    fn delete(&mut self, flow: &Flow) -> Result<bool, ConntrackError>;
}

/// ctnetlink over a `NETLINK_NETFILTER` socket of the current network namespace.
#[derive(Debug)]
pub struct NetlinkConntrack {
    socket: NetlinkSocket,
}

impl NetlinkConntrack {
    /// Opens the socket.
    pub fn open() -> Result<Self, ConntrackError> {
        Ok(Self {
            socket: NetlinkSocket::open(netlink_sys::protocols::NETLINK_NETFILTER)?,
        })
    }
}

impl ConntrackOps for NetlinkConntrack {
    fn flows(&mut self, family: IpFamily) -> Result<Vec<Flow>, ConntrackError> {
        let answers = self
            .socket
            .request(dump_request(family), "conntrack dump")?;
        Ok(answers.iter().filter_map(decode_flow).collect())
    }

    fn delete(&mut self, flow: &Flow) -> Result<bool, ConntrackError> {
        let what = format!(
            "conntrack delete {} -> {} (zone {})",
            flow.orig_src, flow.orig_dst, flow.zone
        );
        match self.socket.request(delete_request(flow), &what) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc_enoent()) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

fn libc_enoent() -> i32 {
    2 // ENOENT on Linux
}

fn proto_family(family: IpFamily) -> NetfilterProtoFamily {
    match family {
        IpFamily::V4 => NetfilterProtoFamily::IPv4,
        IpFamily::V6 => NetfilterProtoFamily::IPv6,
    }
}

fn message(
    flags: u16,
    family: IpFamily,
    inner: ConntrackMessage,
) -> NetlinkMessage<NetfilterMessage> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut msg = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(NetfilterMessage::new(
            NetfilterHeader::new(proto_family(family), 0, 0),
            inner,
        )),
    );
    msg.finalize();
    msg
}

/// The dump request for every entry of `family`.
pub fn dump_request(family: IpFamily) -> NetlinkMessage<NetfilterMessage> {
    message(
        NLM_F_REQUEST | NLM_F_DUMP,
        family,
        ConntrackMessage::Get(Vec::new()),
    )
}

/// The delete request for `flow`, by its original tuple (and zone, when not 0).
pub fn delete_request(flow: &Flow) -> NetlinkMessage<NetfilterMessage> {
    let family = IpFamily::of(&flow.orig_src.ip());
    let mut attributes = vec![ConntrackAttribute::CtaTupleOrig(vec![
        Tuple::Ip(vec![
            IPTuple::SourceAddress(flow.orig_src.ip()),
            IPTuple::DestinationAddress(flow.orig_dst.ip()),
        ]),
        Tuple::Proto(vec![
            ProtoTuple::Protocol(Protocol::from(flow.protocol)),
            ProtoTuple::SourcePort(flow.orig_src.port()),
            ProtoTuple::DestinationPort(flow.orig_dst.port()),
        ]),
    ])];
    if flow.zone != 0 {
        attributes.push(ConntrackAttribute::Other(DefaultNla::new(
            CTA_ZONE,
            flow.zone.to_be_bytes().to_vec(),
        )));
    }
    message(
        NLM_F_REQUEST | NLM_F_ACK,
        family,
        ConntrackMessage::Delete(attributes),
    )
}

/// The parts of one tuple cleanup needs.
#[derive(Default)]
struct Endpoints {
    protocol: Option<u8>,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    sport: Option<u16>,
    dport: Option<u16>,
}

fn decode_tuple(tuple: &[Tuple]) -> Endpoints {
    let mut out = Endpoints::default();
    for part in tuple {
        match part {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => out.src = Some(*a),
                        IPTuple::DestinationAddress(a) => out.dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(protos) => {
                for p in protos {
                    match p {
                        ProtoTuple::Protocol(p) => out.protocol = Some(u8::from(*p)),
                        ProtoTuple::SourcePort(port) => out.sport = Some(*port),
                        ProtoTuple::DestinationPort(port) => out.dport = Some(*port),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// A dumped entry as a [`Flow`]; `None` for entries without ports (ICMP, …) or other messages.
pub fn decode_flow(message: &NetfilterMessage) -> Option<Flow> {
    let NetfilterMessageInner::Conntrack(ConntrackMessage::New(attributes)) = &message.inner else {
        return None;
    };
    let (mut orig, mut reply, mut zone) = (None, None, 0u16);
    for a in attributes {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = Some(decode_tuple(t)),
            ConntrackAttribute::CtaTupleReply(t) => reply = Some(decode_tuple(t)),
            ConntrackAttribute::Other(nla) if nla_kind(nla) == CTA_ZONE => {
                let v = nla_value(nla);
                if v.len() >= 2 {
                    zone = u16::from_be_bytes([v[0], v[1]]);
                }
            }
            _ => {}
        }
    }
    let (o, r) = (orig?, reply?);
    Some(Flow {
        protocol: o.protocol?,
        orig_src: SocketAddr::new(o.src?, o.sport?),
        orig_dst: SocketAddr::new(o.dst?, o.dport?),
        reply_src: SocketAddr::new(r.src?, r.sport?),
        zone,
    })
}

fn nla_kind(nla: &DefaultNla) -> u16 {
    use netlink_packet_core::Nla;
    nla.kind() & !(netlink_packet_core::NLA_F_NESTED | netlink_packet_core::NLA_F_NET_BYTEORDER)
}

fn nla_value(nla: &DefaultNla) -> Vec<u8> {
    use netlink_packet_core::Nla;
    let mut v = vec![0; nla.value_len()];
    nla.emit_value(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_core::datapath::IPPROTO_UDP;

    fn flow() -> Flow {
        Flow {
            protocol: IPPROTO_UDP,
            orig_src: "10.244.1.99:40000".parse().unwrap(),
            orig_dst: "172.30.0.10:53".parse().unwrap(),
            reply_src: "10.244.2.10:5353".parse().unwrap(),
            zone: 0,
        }
    }

    fn bytes(mut msg: NetlinkMessage<NetfilterMessage>, seq: u32) -> Vec<u8> {
        msg.header.sequence_number = seq;
        msg.finalize();
        let mut out = vec![0; msg.buffer_len()];
        msg.serialize(&mut out);
        out
    }

    /// What `conntrack -D -p udp -s 10.244.1.99 -d 172.30.0.10 --sport 40000 --dport 53` asks,
    /// field by field (netlink integers native-endian, attribute payloads big-endian).
    #[rustfmt::skip]
    fn delete_bytes(seq: u32, tuple_kind: u16, with_zone: bool) -> Vec<u8> {
        let len: u32 = if with_zone { 80 } else { 72 };
        let mut v: Vec<u8> = [
            &len.to_ne_bytes()[..],                 // nlmsghdr.len
            &0x0102u16.to_ne_bytes(),               // CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE
            &0x0005u16.to_ne_bytes(),               // NLM_F_REQUEST | NLM_F_ACK
            &seq.to_ne_bytes(), &0u32.to_ne_bytes(), // seq, port id
            &[2, 0, 0, 0],                          // nfgenmsg: AF_INET, version 0, res_id 0
            &52u16.to_ne_bytes(), &tuple_kind.to_ne_bytes(), // CTA_TUPLE_ORIG|NESTED (or _REPLY)
            &20u16.to_ne_bytes(), &0x8001u16.to_ne_bytes(),   //   CTA_TUPLE_IP, nested
            &8u16.to_ne_bytes(), &1u16.to_ne_bytes(), &[10, 244, 1, 99],   // CTA_IP_V4_SRC
            &8u16.to_ne_bytes(), &2u16.to_ne_bytes(), &[172, 30, 0, 10],   // CTA_IP_V4_DST
            &28u16.to_ne_bytes(), &0x8002u16.to_ne_bytes(),   //   CTA_TUPLE_PROTO, nested
            &5u16.to_ne_bytes(), &1u16.to_ne_bytes(), &[17, 0, 0, 0],      // PROTO_NUM udp + pad
            &6u16.to_ne_bytes(), &2u16.to_ne_bytes(), &40000u16.to_be_bytes(), &[0, 0], // SRC_PORT
            &6u16.to_ne_bytes(), &3u16.to_ne_bytes(), &53u16.to_be_bytes(), &[0, 0],    // DST_PORT
        ].concat();
        if with_zone {
            v.extend_from_slice(&6u16.to_ne_bytes()); // CTA_ZONE
            v.extend_from_slice(&18u16.to_ne_bytes());
            v.extend_from_slice(&[0, 5, 0, 0]); // zone 5, big-endian, + pad
        }
        v
    }

    #[test]
    fn delete_request_bytes() {
        assert_eq!(
            bytes(delete_request(&flow()), 7),
            delete_bytes(7, 0x8001, false)
        );
        let zoned = Flow { zone: 5, ..flow() };
        assert_eq!(
            bytes(delete_request(&zoned), 9),
            delete_bytes(9, 0x8001, true)
        );
    }

    #[rustfmt::skip]
    #[test]
    fn dump_request_bytes() {
        let expected: Vec<u8> = [
            &20u32.to_ne_bytes()[..],   // nlmsghdr.len: header + nfgenmsg only
            &0x0101u16.to_ne_bytes(),   // CTNETLINK << 8 | IPCTNL_MSG_CT_GET
            &0x0301u16.to_ne_bytes(),   // NLM_F_REQUEST | NLM_F_DUMP
            &3u32.to_ne_bytes(), &0u32.to_ne_bytes(),
            &[10, 0, 0, 0],             // nfgenmsg: AF_INET6
        ].concat();
        assert_eq!(bytes(dump_request(IpFamily::V6), 3), expected);
    }

    /// A dump answer as the kernel sends it: `IPCTNL_MSG_CT_NEW` with the original tuple, the reply
    /// tuple (nested flag set, as the kernel sets it) and the zone.
    #[test]
    fn a_dumped_entry_decodes_to_the_flow() {
        let f = flow();
        let mut msg = delete_bytes(1, 0x8001, true);
        // Turn the delete into a dump answer: message type CT_NEW, flags MULTI.
        msg[4..6].copy_from_slice(&0x0100u16.to_ne_bytes());
        msg[6..8].copy_from_slice(&0x0002u16.to_ne_bytes());
        // Append the reply tuple: the endpoint answering the client.
        let reply = Flow {
            orig_src: f.reply_src,
            orig_dst: f.orig_src,
            ..f
        };
        let reply_tuple = bytes(delete_request(&reply), 1)[20..72].to_vec();
        let mut reply_tuple = reply_tuple;
        reply_tuple[2..4].copy_from_slice(&0x8002u16.to_ne_bytes()); // CTA_TUPLE_REPLY, nested
        msg.extend_from_slice(&reply_tuple);
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());

        let parsed = NetlinkMessage::<NetfilterMessage>::deserialize(&msg).unwrap();
        let NetlinkPayload::InnerMessage(inner) = parsed.payload else {
            panic!("not an inner message: {parsed:?}");
        };
        assert_eq!(decode_flow(&inner), Some(Flow { zone: 5, ..f }));
    }

    #[test]
    fn a_delete_request_parses_back_to_its_tuple() {
        let raw = bytes(delete_request(&flow()), 4);
        let parsed = NetlinkMessage::<NetfilterMessage>::deserialize(&raw).unwrap();
        let NetlinkPayload::InnerMessage(inner) = parsed.payload else {
            panic!("not an inner message");
        };
        let NetfilterMessageInner::Conntrack(ConntrackMessage::Delete(attrs)) = inner.inner else {
            panic!("not a delete");
        };
        let ConntrackAttribute::CtaTupleOrig(t) = &attrs[0] else {
            panic!("no original tuple");
        };
        let e = decode_tuple(t);
        assert_eq!(e.src, Some(flow().orig_src.ip()));
        assert_eq!(
            (e.sport, e.dport, e.protocol),
            (Some(40000), Some(53), Some(17))
        );
    }
}
