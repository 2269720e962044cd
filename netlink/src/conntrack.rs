//! Listing and deleting conntrack entries over ctnetlink, without the conntrack CLI.
//!
//! The kernel deletes entries only by exact tuple, so cleanup is: dump the family's entries of one
//! protocol (`IPCTNL_MSG_CT_GET` with `NLM_F_DUMP`, filtered in the kernel by `CTA_FILTER`), judge
//! each as it arrives ([`proxy_core::datapath::StaleFlows`]), delete the stale ones by their
//! original tuple (`IPCTNL_MSG_CT_DELETE`). A node's table is mostly TCP: the kernel sends only the
//! UDP entries, and nothing is collected but what is deleted. Messages are
//! `netlink-packet-netfilter`'s; the conntrack zone and the dump filter, which that crate does not
//! model, travel as raw attributes (`CTA_ZONE`, `CTA_FILTER`).

use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{
    DefaultNla, Emitable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLA_F_NESTED, NLM_F_ACK,
    NLM_F_DUMP, NLM_F_REQUEST,
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

/// `CTA_TUPLE_ORIG`: the original direction's tuple.
const CTA_TUPLE_ORIG: u16 = 1;
/// `CTA_ZONE`: the conntrack zone of an entry.
const CTA_ZONE: u16 = 18;
/// `IPCTNL_MSG_CT_GET`.
const IPCTNL_MSG_CT_GET: u8 = 1;
/// `CTA_FILTER` (kernel 5.8+): which fields of `CTA_TUPLE_ORIG` a dump must match.
const CTA_FILTER: u16 = 25;
/// `CTA_FILTER_ORIG_FLAGS`, `CTA_FILTER_REPLY_FLAGS`: inside `CTA_FILTER`, native-endian u32s.
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
const CTA_FILTER_REPLY_FLAGS: u16 = 2;
/// `CTA_FILTER_FLAG_CTA_PROTO_NUM`: match the original tuple's protocol number.
const CTA_FILTER_FLAG_CTA_PROTO_NUM: u32 = 1 << 3;

/// Which entries a dump asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowFilter {
    /// The address family (the dump's `nfgen_family`).
    pub family: IpFamily,
    /// Only this protocol (IANA number), filtered by the kernel; `None`: every protocol.
    pub protocol: Option<u8>,
}

impl FlowFilter {
    /// The UDP entries of `family`: what Service cleanup looks at.
    pub fn udp(family: IpFamily) -> Self {
        Self {
            family,
            protocol: Some(proxy_core::datapath::IPPROTO_UDP),
        }
    }
}

/// A conntrack operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("conntrack: {0}")]
pub struct ConntrackError(#[from] pub SocketError);

/// Dumps and deletes conntrack entries. A trait so proxiers can be tested without a kernel.
pub trait ConntrackOps: Send + std::fmt::Debug {
    /// Calls `each` with every entry `filter` selects, as the kernel sends them: nothing is
    /// collected, so memory does not grow with the table.
    fn for_each_flow(
        &mut self,
        filter: FlowFilter,
        each: &mut dyn FnMut(Flow),
    ) -> Result<(), ConntrackError>;

    /// The entries `filter` selects, collected (for small tables and tests).
    fn flows(&mut self, filter: FlowFilter) -> Result<Vec<Flow>, ConntrackError> {
        let mut out = Vec::new();
        self.for_each_flow(filter, &mut |f| out.push(f))?;
        Ok(out)
    }

    /// Deletes one entry; `Ok(false)` if it was already gone.
    fn delete(&mut self, flow: &Flow) -> Result<bool, ConntrackError>;
}

/// Deletes the UDP entries of `family` that `is_stale` picks: the kernel sends only UDP entries,
/// each is judged as it arrives and only the stale ones are kept, so a node's million TCP entries
/// cost neither transfer nor memory. Every mode that NATs UDP calls this after a sync, with
/// proxy-core's `StaleFlows` as the judge. Returns how many were deleted; failures are logged
/// (a dump that fails deletes nothing).
pub fn delete_stale_udp(
    ct: &mut dyn ConntrackOps,
    family: IpFamily,
    is_stale: &dyn Fn(&Flow) -> bool,
) -> usize {
    let mut stale = Vec::new();
    if let Err(e) = ct.for_each_flow(FlowFilter::udp(family), &mut |f| {
        if is_stale(&f) {
            stale.push(f);
        }
    }) {
        tracing::warn!("cannot list conntrack entries: {e}");
        return 0;
    }
    let mut deleted = 0;
    for flow in &stale {
        match ct.delete(flow) {
            Ok(_) => {
                deleted += 1;
                tracing::debug!(
                    "deleted stale conntrack entry {} -> {} (via {})",
                    flow.orig_src,
                    flow.orig_dst,
                    flow.reply_src
                )
            }
            Err(e) => tracing::warn!("cannot delete conntrack entry {flow:?}: {e}"),
        }
    }
    deleted
}

/// ctnetlink over a `NETLINK_NETFILTER` socket of the current network namespace.
#[derive(Debug)]
pub struct NetlinkConntrack {
    socket: NetlinkSocket,
    /// Whether the kernel takes `CTA_FILTER` (until it refuses it once).
    kernel_filters: bool,
}

impl NetlinkConntrack {
    /// Opens the socket.
    pub fn open() -> Result<Self, ConntrackError> {
        Ok(Self {
            socket: NetlinkSocket::open(netlink_sys::protocols::NETLINK_NETFILTER)?,
            kernel_filters: true,
        })
    }
}

impl NetlinkConntrack {
    /// Creates an entry for `flow` (original tuple, and a reply from `flow.reply_src`) that
    /// expires after `timeout_secs`: how tests and benchmarks fill a table without the CLI.
    pub fn create(&mut self, flow: &Flow, timeout_secs: u32) -> Result<(), ConntrackError> {
        let what = format!("conntrack create {} -> {}", flow.orig_src, flow.orig_dst);
        self.socket
            .request(create_request(flow, timeout_secs), &what)?;
        Ok(())
    }
}

impl ConntrackOps for NetlinkConntrack {
    fn for_each_flow(
        &mut self,
        filter: FlowFilter,
        each: &mut dyn FnMut(Flow),
    ) -> Result<(), ConntrackError> {
        let mut judge = |m: NetfilterMessage| {
            // A kernel without CTA_FILTER (before 5.8) ignores it and sends every entry.
            if let Some(f) = decode_flow(&m) {
                if filter.protocol.is_none_or(|p| p == f.protocol) {
                    each(f);
                }
            }
        };
        if self.kernel_filters {
            match self.socket.request_each(
                filtered_dump_request(filter),
                "conntrack dump (filtered)",
                &mut judge,
            ) {
                // A kernel that refuses the filter before sending anything: dump unfiltered from
                // now on.
                Err(e) if e.errno() == Some(22) => {
                    tracing::warn!(
                        "the kernel refuses filtered conntrack dumps ({e}); dumping every entry"
                    );
                    self.kernel_filters = false;
                }
                other => return Ok(other?),
            }
        }
        self.socket
            .request_each(dump_request(filter.family), "conntrack dump", judge)?;
        Ok(())
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

/// The dump request for `filter`: the family in the header; a protocol as `CTA_TUPLE_ORIG` holding
/// only the protocol number plus `CTA_FILTER` saying to match just that (what libnetfilter_conntrack
/// sends for a tuple-filtered dump).
pub fn filtered_dump_request(filter: FlowFilter) -> NetlinkMessage<NetfilterMessage> {
    let Some(protocol) = filter.protocol else {
        return dump_request(filter.family);
    };
    let mut flags = Vec::with_capacity(16);
    for (kind, value) in [
        (CTA_FILTER_ORIG_FLAGS, CTA_FILTER_FLAG_CTA_PROTO_NUM),
        (CTA_FILTER_REPLY_FLAGS, 0),
    ] {
        flags.extend_from_slice(&8u16.to_ne_bytes());
        flags.extend_from_slice(&kind.to_ne_bytes());
        flags.extend_from_slice(&value.to_ne_bytes());
    }
    // The crate's `ConntrackAttribute::Other` drops NLA_F_NESTED, which the kernel's strict parse
    // of CTA_FILTER requires: the attributes go as raw ones, each keeping its flags.
    let proto = Tuple::Proto(vec![ProtoTuple::Protocol(Protocol::from(protocol))]);
    let mut tuple = vec![0; proto.buffer_len()];
    proto.emit(&mut tuple);
    message(
        NLM_F_REQUEST | NLM_F_DUMP,
        filter.family,
        ConntrackMessage::Other {
            message_type: IPCTNL_MSG_CT_GET,
            attributes: vec![
                DefaultNla::new(CTA_TUPLE_ORIG | NLA_F_NESTED, tuple),
                DefaultNla::new(CTA_FILTER | NLA_F_NESTED, flags),
            ],
        },
    )
}

fn tuple(src: SocketAddr, dst: SocketAddr, protocol: u8) -> Vec<Tuple> {
    vec![
        Tuple::Ip(vec![
            IPTuple::SourceAddress(src.ip()),
            IPTuple::DestinationAddress(dst.ip()),
        ]),
        Tuple::Proto(vec![
            ProtoTuple::Protocol(Protocol::from(protocol)),
            ProtoTuple::SourcePort(src.port()),
            ProtoTuple::DestinationPort(dst.port()),
        ]),
    ]
}

/// The create request for `flow` with a timeout (`IPCTNL_MSG_CT_NEW`, `NLM_F_CREATE`).
pub fn create_request(flow: &Flow, timeout_secs: u32) -> NetlinkMessage<NetfilterMessage> {
    let family = IpFamily::of(&flow.orig_src.ip());
    message(
        NLM_F_REQUEST | NLM_F_ACK | netlink_packet_core::NLM_F_CREATE,
        family,
        ConntrackMessage::New(vec![
            ConntrackAttribute::CtaTupleOrig(tuple(flow.orig_src, flow.orig_dst, flow.protocol)),
            ConntrackAttribute::CtaTupleReply(tuple(flow.reply_src, flow.orig_src, flow.protocol)),
            ConntrackAttribute::CtaTimeout(timeout_secs),
        ]),
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

    /// The UDP-only dump: `CTA_TUPLE_ORIG { CTA_TUPLE_PROTO { CTA_PROTO_NUM 17 } }` and
    /// `CTA_FILTER { ORIG_FLAGS = PROTO_NUM, REPLY_FLAGS = 0 }`, field by field; and back.
    #[rustfmt::skip]
    #[test]
    fn filtered_dump_request_bytes_both_ways() {
        let expected: Vec<u8> = [
            &56u32.to_ne_bytes()[..],   // nlmsghdr.len
            &0x0101u16.to_ne_bytes(),   // CTNETLINK << 8 | IPCTNL_MSG_CT_GET
            &0x0301u16.to_ne_bytes(),   // NLM_F_REQUEST | NLM_F_DUMP
            &4u32.to_ne_bytes(), &0u32.to_ne_bytes(),
            &[2, 0, 0, 0],              // nfgenmsg: AF_INET
            &16u16.to_ne_bytes(), &0x8001u16.to_ne_bytes(), // CTA_TUPLE_ORIG, nested
            &12u16.to_ne_bytes(), &0x8002u16.to_ne_bytes(), //   CTA_TUPLE_PROTO, nested
            &5u16.to_ne_bytes(), &1u16.to_ne_bytes(), &[17, 0, 0, 0], // CTA_PROTO_NUM udp + pad
            &20u16.to_ne_bytes(), &0x8019u16.to_ne_bytes(), // CTA_FILTER (25), nested
            &8u16.to_ne_bytes(), &1u16.to_ne_bytes(), &8u32.to_ne_bytes(), // ORIG_FLAGS: PROTO_NUM
            &8u16.to_ne_bytes(), &2u16.to_ne_bytes(), &0u32.to_ne_bytes(), // REPLY_FLAGS: none
        ].concat();
        let filter = FlowFilter::udp(IpFamily::V4);
        assert_eq!(bytes(filtered_dump_request(filter), 4), expected);
        let unfiltered = FlowFilter { protocol: None, ..filter };
        assert_eq!(bytes(filtered_dump_request(unfiltered), 4), bytes(dump_request(IpFamily::V4), 4));

        let parsed = NetlinkMessage::<NetfilterMessage>::deserialize(&expected).unwrap();
        let NetlinkPayload::InnerMessage(inner) = parsed.payload else {
            panic!("not an inner message");
        };
        let NetfilterMessageInner::Conntrack(ConntrackMessage::Get(attrs)) = inner.inner else {
            panic!("not a get: {:?}", inner.inner);
        };
        let ConntrackAttribute::CtaTupleOrig(t) = &attrs[0] else {
            panic!("no original tuple");
        };
        assert_eq!(decode_tuple(t).protocol, Some(17));
        let ConntrackAttribute::Other(f) = &attrs[1] else {
            panic!("no filter");
        };
        assert_eq!(nla_kind(f), CTA_FILTER);
        assert_eq!(nla_value(f)[4..8], 8u32.to_ne_bytes());
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

/// The lifecycle's conntrack cleanup ([`proxy_core::StaleFlowCleaner`]) over any
/// [`ConntrackOps`], ctnetlink in the daemon: [`delete_stale_udp`] with the mode's judge.
#[derive(Debug)]
pub struct ConntrackCleaner(pub Box<dyn ConntrackOps>);

impl ConntrackCleaner {
    /// Opens ctnetlink in the current network namespace.
    pub fn open() -> Result<Self, ConntrackError> {
        Ok(Self(Box::new(NetlinkConntrack::open()?)))
    }
}

impl proxy_core::StaleFlowCleaner for ConntrackCleaner {
    fn delete_stale_udp(&mut self, family: IpFamily, is_stale: &dyn Fn(&Flow) -> bool) -> usize {
        delete_stale_udp(self.0.as_mut(), family, is_stale)
    }
}
