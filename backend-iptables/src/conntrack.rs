//! Deleting stale UDP conntrack entries over netlink (ctnetlink), without the conntrack CLI.
//!
//! The kernel deletes conntrack entries only by exact tuple, so cleanup is: dump the family's
//! entries (`IPCTNL_MSG_CT_GET` with `NLM_F_DUMP`), pick the stale ones in userspace, delete each by
//! its original tuple (`IPCTNL_MSG_CT_DELETE`). Which ones are stale is decided by two pure
//! functions, [`stale_for_diff`] (a partial sync: the diff's cleanups) and [`stale_for_state`]
//! (a full sync, e.g. after a restart: every UDP flow to a service that does not go to one of its
//! serving endpoints).
//!
//! Wire layout of a request (all integers native-endian except inside netfilter attributes, which
//! are big-endian):
//!
//! ```text
//! nlmsghdr  | len u32 | type u16 = 1 << 8 | msg | flags u16 | seq u32 | pid u32 |
//! nfgenmsg  | family u8 | version u8 = 0 | res_id be16 = 0 |
//! attributes| len u16 | type u16 (0x8000 = nested) | payload, padded to 4 | ...
//! ```

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};

use proxy_core::{ConntrackCleanup, ConntrackTarget, IpFamily, ProxyState};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// IANA protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;

/// One conntrack entry, as much of it as cleanup needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    /// IP protocol number.
    pub protocol: u8,
    /// Original direction: the client.
    pub orig_src: SocketAddr,
    /// Original direction: where the client sent it (a service address before DNAT).
    pub orig_dst: SocketAddr,
    /// Reply direction source: where the packet really went (the endpoint after DNAT).
    pub reply_src: SocketAddr,
    /// Conntrack zone.
    pub zone: u16,
}

impl Flow {
    /// Whether the flow was translated (its reply comes from somewhere other than where it went).
    pub fn is_dnat(&self) -> bool {
        self.reply_src != self.orig_dst
    }
}

/// A conntrack operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// A socket call failed.
    #[error("conntrack netlink {operation}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The kernel answered something unparsable.
    #[error("conntrack netlink: malformed reply: {0}")]
    Malformed(String),
}

/// Dumps and deletes conntrack entries.
pub trait ConntrackOps: Send + std::fmt::Debug {
    /// Every entry of `family`.
    fn flows(&mut self, family: IpFamily) -> Result<Vec<Flow>, ConntrackError>;
    /// Deletes one entry; `Ok(false)` if it was already gone.
    fn delete(&mut self, flow: &Flow) -> Result<bool, ConntrackError>;
}

/// Entries the diff's cleanups name: flows to each target, all of them or only those translated to
/// the given endpoint. UDP only.
pub fn stale_for_diff(flows: &[Flow], cleanups: &[ConntrackCleanup]) -> Vec<Flow> {
    let mut by_ip: HashMap<(IpAddr, u16), Vec<Option<IpAddr>>> = HashMap::new();
    let mut by_node_port: HashMap<u16, Vec<Option<IpAddr>>> = HashMap::new();
    for c in cleanups {
        match c.target {
            ConntrackTarget::ServiceIp { ip, port } => {
                by_ip.entry((ip, port)).or_default().push(c.endpoint)
            }
            ConntrackTarget::NodePort { port } => {
                by_node_port.entry(port).or_default().push(c.endpoint)
            }
        }
    }
    let hit = |rules: Option<&Vec<Option<IpAddr>>>, flow: &Flow| {
        rules.is_some_and(|rules| {
            rules.iter().any(|ep| match ep {
                None => true,
                Some(ep) => flow.is_dnat() && flow.reply_src.ip() == *ep,
            })
        })
    };
    flows
        .iter()
        .filter(|f| f.protocol == IPPROTO_UDP)
        .filter(|f| {
            hit(by_ip.get(&(f.orig_dst.ip(), f.orig_dst.port())), f)
                || hit(by_node_port.get(&f.orig_dst.port()), f)
        })
        .copied()
        .collect()
}

/// Entries that contradict `state`: UDP flows to a service address or node port that were
/// translated to something that is not a serving endpoint of that service, or were not translated
/// although the service now has endpoints (created while it had none). Used on full syncs, when no
/// diff says what changed (a restart).
pub fn stale_for_state(flows: &[Flow], state: &ProxyState) -> Vec<Flow> {
    let mut by_ip = HashMap::new();
    let mut by_node_port = HashMap::new();
    for (name, entry) in state.service_ports() {
        if name.protocol != proxy_core::Protocol::Udp {
            continue;
        }
        for ip in entry.service.service_ips() {
            by_ip.insert((ip, entry.service.port), entry);
        }
        if let Some(np) = entry.service.node_port {
            by_node_port.insert(np, entry);
        }
    }
    let serving = |entry: &proxy_core::ServicePortEntry, to: SocketAddr| {
        entry
            .endpoints
            .binary_search_by(|e| (e.ip, e.port).cmp(&(to.ip(), to.port())))
            .is_ok_and(|i| entry.endpoints[i].serving)
    };
    flows
        .iter()
        .filter(|f| f.protocol == IPPROTO_UDP)
        .filter(|f| {
            if let Some(entry) = by_ip.get(&(f.orig_dst.ip(), f.orig_dst.port())) {
                if f.is_dnat() {
                    return !serving(entry, f.reply_src);
                }
                return entry.selection.has_any_endpoints;
            }
            match by_node_port.get(&f.orig_dst.port()) {
                Some(entry) if f.is_dnat() => !serving(entry, f.reply_src),
                _ => false,
            }
        })
        .copied()
        .collect()
}

/// ctnetlink over a netlink socket of the current network namespace.
#[derive(Debug)]
pub struct NetlinkConntrack {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl NetlinkConntrack {
    /// Opens a `NETLINK_NETFILTER` socket.
    pub fn open() -> Result<Self, ConntrackError> {
        use nix::sys::socket::{
            bind, socket, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType,
        };
        let io = |operation| {
            move |e: nix::Error| ConntrackError::Io {
                operation,
                source: io::Error::from(e),
            }
        };
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(io("socket"))?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(io("bind"))?;
        Ok(Self {
            fd,
            seq: 1,
            buf: vec![0; 1 << 16],
        })
    }

    fn send(&mut self, msg: &[u8]) -> Result<(), ConntrackError> {
        nix::sys::socket::send(
            self.fd.as_raw_fd(),
            msg,
            nix::sys::socket::MsgFlags::empty(),
        )
        .map_err(|e| ConntrackError::Io {
            operation: "send",
            source: io::Error::from(e),
        })?;
        Ok(())
    }

    fn recv(&mut self) -> Result<usize, ConntrackError> {
        nix::sys::socket::recv(
            self.fd.as_raw_fd(),
            &mut self.buf,
            nix::sys::socket::MsgFlags::empty(),
        )
        .map_err(|e| ConntrackError::Io {
            operation: "recv",
            source: io::Error::from(e),
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }
}

impl ConntrackOps for NetlinkConntrack {
    fn flows(&mut self, family: IpFamily) -> Result<Vec<Flow>, ConntrackError> {
        let seq = self.next_seq();
        let msg = encode_dump(family, seq);
        self.send(&msg)?;
        let mut flows = Vec::new();
        loop {
            let n = self.recv()?;
            let mut done = false;
            for (kind, payload) in split_messages(&self.buf[..n])? {
                match kind {
                    NLMSG_DONE => done = true,
                    NLMSG_ERROR => {
                        let code = error_code(payload)?;
                        if code != 0 {
                            return Err(ConntrackError::Io {
                                operation: "dump",
                                source: io::Error::from_raw_os_error(-code),
                            });
                        }
                    }
                    _ => {
                        if let Some(flow) = decode_flow(payload)? {
                            flows.push(flow);
                        }
                    }
                }
            }
            if done {
                return Ok(flows);
            }
        }
    }

    fn delete(&mut self, flow: &Flow) -> Result<bool, ConntrackError> {
        let seq = self.next_seq();
        let msg = encode_delete(flow, seq);
        self.send(&msg)?;
        let n = self.recv()?;
        for (kind, payload) in split_messages(&self.buf[..n])? {
            if kind == NLMSG_ERROR {
                return match error_code(payload)? {
                    0 => Ok(true),
                    code if -code == nix::libc::ENOENT => Ok(false),
                    code => Err(ConntrackError::Io {
                        operation: "delete",
                        source: io::Error::from_raw_os_error(-code),
                    }),
                };
            }
        }
        Err(ConntrackError::Malformed(
            "no acknowledgement for a delete".into(),
        ))
    }
}

fn af(family: IpFamily) -> u8 {
    match family {
        IpFamily::V4 => nix::libc::AF_INET as u8,
        IpFamily::V6 => nix::libc::AF_INET6 as u8,
    }
}

fn header(out: &mut Vec<u8>, msg: u16, flags: u16, seq: u32, family: u8) {
    out.extend_from_slice(&0u32.to_ne_bytes()); // length, patched by `finish`
    out.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | msg).to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[family, 0, 0, 0]);
}

fn finish(out: &mut [u8]) {
    let len = out.len() as u32;
    out[..4].copy_from_slice(&len.to_ne_bytes());
}

fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len() + (4 - len % 4) % 4, 0);
}

fn nested(out: &mut Vec<u8>, kind: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    fill(out);
    let len = (out.len() - start) as u16;
    out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

/// A dump request for `family`.
pub(crate) fn encode_dump(family: IpFamily, seq: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    header(
        &mut out,
        IPCTNL_MSG_CT_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        af(family),
    );
    finish(&mut out);
    out
}

/// A delete request for `flow`, by its original tuple.
pub(crate) fn encode_delete(flow: &Flow, seq: u32) -> Vec<u8> {
    let family = if flow.orig_src.is_ipv4() {
        IpFamily::V4
    } else {
        IpFamily::V6
    };
    let mut out = Vec::with_capacity(96);
    header(
        &mut out,
        IPCTNL_MSG_CT_DELETE,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        af(family),
    );
    nested(&mut out, CTA_TUPLE_ORIG, |out| {
        nested(out, CTA_TUPLE_IP, |out| {
            match (flow.orig_src.ip(), flow.orig_dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    attr(out, CTA_IP_V4_SRC, &s.octets());
                    attr(out, CTA_IP_V4_DST, &d.octets());
                }
                (s, d) => {
                    attr(out, CTA_IP_V6_SRC, &v6(s).octets());
                    attr(out, CTA_IP_V6_DST, &v6(d).octets());
                }
            }
        });
        nested(out, CTA_TUPLE_PROTO, |out| {
            attr(out, CTA_PROTO_NUM, &[flow.protocol]);
            attr(out, CTA_PROTO_SRC_PORT, &flow.orig_src.port().to_be_bytes());
            attr(out, CTA_PROTO_DST_PORT, &flow.orig_dst.port().to_be_bytes());
        });
    });
    if flow.zone != 0 {
        attr(&mut out, CTA_ZONE, &flow.zone.to_be_bytes());
    }
    finish(&mut out);
    out
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V6(v6) => v6,
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
    }
}

fn malformed(what: &str) -> ConntrackError {
    ConntrackError::Malformed(what.to_owned())
}

/// Splits a receive buffer into (message type, payload after the 16-byte header).
fn split_messages(mut buf: &[u8]) -> Result<Vec<(u16, &[u8])>, ConntrackError> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
        if len < 16 || len > buf.len() {
            return Err(malformed("message length"));
        }
        out.push((kind, &buf[16..len]));
        let aligned = (len + 3) & !3;
        buf = &buf[aligned.min(buf.len())..];
    }
    Ok(out)
}

fn error_code(payload: &[u8]) -> Result<i32, ConntrackError> {
    payload
        .get(..4)
        .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
        .ok_or_else(|| malformed("short error message"))
}

/// Iterates (type without flags, payload) over attributes.
fn attributes(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        let aligned = ((len + 3) & !3).min(buf.len());
        buf = &buf[aligned..];
        Some((kind, payload))
    })
}

#[derive(Default)]
struct Tuple {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    protocol: Option<u8>,
    sport: Option<u16>,
    dport: Option<u16>,
}

fn decode_tuple(buf: &[u8]) -> Tuple {
    let mut t = Tuple::default();
    for (kind, payload) in attributes(buf) {
        match kind {
            CTA_TUPLE_IP => {
                for (k, p) in attributes(payload) {
                    let ip = match p.len() {
                        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(p).expect("4"))),
                        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(p).expect("16"))),
                        _ => continue,
                    };
                    match k {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => t.src = Some(ip),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => t.dst = Some(ip),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, p) in attributes(payload) {
                    match (k, p.len()) {
                        (CTA_PROTO_NUM, 1) => t.protocol = Some(p[0]),
                        (CTA_PROTO_SRC_PORT, 2) => t.sport = Some(u16::from_be_bytes([p[0], p[1]])),
                        (CTA_PROTO_DST_PORT, 2) => t.dport = Some(u16::from_be_bytes([p[0], p[1]])),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    t
}

/// Decodes one conntrack message (after the netlink header); `None` for entries without ports
/// (ICMP and the like), which cleanup never touches.
fn decode_flow(payload: &[u8]) -> Result<Option<Flow>, ConntrackError> {
    let attrs = payload
        .get(4..)
        .ok_or_else(|| malformed("short conntrack message"))?;
    let (mut orig, mut reply, mut zone) = (None, None, 0);
    for (kind, p) in attributes(attrs) {
        match kind {
            CTA_TUPLE_ORIG => orig = Some(decode_tuple(p)),
            CTA_TUPLE_REPLY => reply = Some(decode_tuple(p)),
            CTA_ZONE if p.len() == 2 => zone = u16::from_be_bytes([p[0], p[1]]),
            _ => {}
        }
    }
    let (Some(o), Some(r)) = (orig, reply) else {
        return Err(malformed("conntrack entry without tuples"));
    };
    let flow = (|| {
        Some(Flow {
            protocol: o.protocol?,
            orig_src: SocketAddr::new(o.src?, o.sport?),
            orig_dst: SocketAddr::new(o.dst?, o.dport?),
            reply_src: SocketAddr::new(r.src?, r.sport?),
            zone,
        })
    })();
    Ok(flow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> Flow {
        Flow {
            protocol: IPPROTO_UDP,
            orig_src: "10.244.1.99:40000".parse().unwrap(),
            orig_dst: "172.30.0.10:53".parse().unwrap(),
            reply_src: "10.244.2.10:5353".parse().unwrap(),
            zone: 0,
        }
    }

    #[rustfmt::skip]
    #[test]
    fn delete_request_bytes() {
        let bytes = encode_delete(&flow(), 7);
        let expected: Vec<u8> = [
            &72u32.to_ne_bytes()[..],               // nlmsghdr.len
            &0x0102u16.to_ne_bytes(),               // CTNETLINK << 8 | CT_DELETE
            &0x0005u16.to_ne_bytes(),               // REQUEST | ACK
            &7u32.to_ne_bytes(), &0u32.to_ne_bytes(),
            &[2, 0, 0, 0],                          // nfgenmsg: AF_INET, v0, res_id 0
            &52u16.to_ne_bytes(), &0x8001u16.to_ne_bytes(),   // CTA_TUPLE_ORIG, nested
            &20u16.to_ne_bytes(), &0x8001u16.to_ne_bytes(),   //   CTA_TUPLE_IP, nested
            &8u16.to_ne_bytes(), &1u16.to_ne_bytes(), &[10, 244, 1, 99],   // V4_SRC
            &8u16.to_ne_bytes(), &2u16.to_ne_bytes(), &[172, 30, 0, 10],   // V4_DST
            &28u16.to_ne_bytes(), &0x8002u16.to_ne_bytes(),   //   CTA_TUPLE_PROTO, nested
            &5u16.to_ne_bytes(), &1u16.to_ne_bytes(), &[17, 0, 0, 0],      // PROTO_NUM udp + pad
            &6u16.to_ne_bytes(), &2u16.to_ne_bytes(), &40000u16.to_be_bytes(), &[0, 0],
            &6u16.to_ne_bytes(), &3u16.to_ne_bytes(), &53u16.to_be_bytes(), &[0, 0],
        ].concat();
        assert_eq!(bytes, expected);
    }

    #[test]
    fn dump_request_bytes() {
        let bytes = encode_dump(IpFamily::V6, 3);
        let mut expected = Vec::new();
        expected.extend_from_slice(&20u32.to_ne_bytes());
        expected.extend_from_slice(&0x0101u16.to_ne_bytes());
        expected.extend_from_slice(&0x0301u16.to_ne_bytes());
        expected.extend_from_slice(&3u32.to_ne_bytes());
        expected.extend_from_slice(&0u32.to_ne_bytes());
        expected.extend_from_slice(&[10, 0, 0, 0]);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn a_dumped_entry_decodes_to_the_same_flow() {
        // A dump reply carries the original tuple (as in a delete) and the reply tuple.
        let f = flow();
        let reply = Flow {
            orig_src: f.reply_src,
            orig_dst: f.orig_src,
            ..f
        };
        let orig_msg = encode_delete(&f, 1);
        let reply_msg = encode_delete(&reply, 1);
        let mut payload = vec![2, 0, 0, 0];
        payload.extend_from_slice(&orig_msg[20..]);
        let mut reply_tuple = reply_msg[20..].to_vec();
        reply_tuple[2..4].copy_from_slice(&(CTA_TUPLE_REPLY | NLA_F_NESTED).to_ne_bytes());
        payload.extend_from_slice(&reply_tuple);
        payload.extend_from_slice(&[6, 0, 18, 0, 0, 5, 0, 0]); // CTA_ZONE 5 (be16) + pad
        let decoded = decode_flow(&payload).unwrap().unwrap();
        assert_eq!(decoded, Flow { zone: 5, ..f });
    }

    #[test]
    fn diff_cleanup_selects_by_target_and_endpoint() {
        let f = flow();
        let other_ep = Flow {
            reply_src: "10.244.3.3:5353".parse().unwrap(),
            orig_src: "10.244.1.98:40000".parse().unwrap(),
            ..f
        };
        let tcp = Flow { protocol: 6, ..f };
        let flows = [f, other_ep, tcp];
        let by_endpoint = ConntrackCleanup {
            protocol: proxy_core::Protocol::Udp,
            target: ConntrackTarget::ServiceIp {
                ip: "172.30.0.10".parse().unwrap(),
                port: 53,
            },
            endpoint: Some("10.244.2.10".parse().unwrap()),
        };
        assert_eq!(stale_for_diff(&flows, &[by_endpoint]), vec![f]);
        let all = ConntrackCleanup {
            endpoint: None,
            ..by_endpoint
        };
        assert_eq!(stale_for_diff(&flows, &[all]), vec![f, other_ep]);
        let node_port = ConntrackCleanup {
            protocol: proxy_core::Protocol::Udp,
            target: ConntrackTarget::NodePort { port: 53 },
            endpoint: None,
        };
        assert_eq!(stale_for_diff(&flows, &[node_port]).len(), 2);
    }
}
