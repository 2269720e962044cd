//! IPVS's generic-netlink messages (family `"IPVS"`), on netlink-packet-core's traits and framed
//! by `netlink-packet-generic`. No crate has them; the layout is the kernel's
//! `include/uapi/linux/ip_vs.h`, checked byte for byte against what `ipvsadm` sends and what the
//! kernel answers (captured inside a user-mode-linux kernel with IP_VS).
//!
//! A message is a generic-netlink header (command, version 1) and command-level attributes:
//! `IPVS_CMD_ATTR_SERVICE` nests a virtual service's attributes, `IPVS_CMD_ATTR_DEST` a real
//! server's, and the timeouts travel as plain `u32`s. Addresses are always the 16 bytes of the
//! kernel's `union nf_inet_addr`, whatever the family (the family travels in its own attribute),
//! ports are big-endian, everything else is host order. Requests set `NLA_F_NESTED` on nested
//! attributes, the kernel's answers do not; both parse.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, NlasIterator, Parseable,
    ParseableParametrized, NLA_F_NESTED, NLA_F_NET_BYTEORDER,
};
use netlink_packet_generic::{GenlFamily, GenlHeader};

/// The generic-netlink family name the kernel registers IPVS under.
pub const IPVS_GENL_NAME: &str = "IPVS";
/// The family's version (`IPVS_GENL_VERSION`).
pub const IPVS_GENL_VERSION: u8 = 1;

/// `AF_INET`, as IPVS carries it in a service's or server's address family.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// `IP_VS_SVC_F_PERSISTENT`: ClientIP affinity (persistence) on a virtual service.
pub const SVC_F_PERSISTENT: u32 = 0x0001;
/// `IP_VS_SVC_F_HASHED`: set by the kernel on every listed service.
pub const SVC_F_HASHED: u32 = 0x0002;
/// `IP_VS_SVC_F_ONEPACKET`.
pub const SVC_F_ONEPACKET: u32 = 0x0004;
/// `IP_VS_SVC_F_SCHED1`: for the `mh` scheduler, "fallback"; upstream sets `SCHED2`.
pub const SVC_F_SCHED1: u32 = 0x0008;
/// `IP_VS_SVC_F_SCHED2`: for `sh`/`mh`, hash the source port too (upstream's `FlagSourceHash`).
pub const SVC_F_SCHED2: u32 = 0x0010;
/// `IP_VS_SVC_F_SCHED3`.
pub const SVC_F_SCHED3: u32 = 0x0020;

/// `IP_VS_CONN_F_MASQ`: forwarding by NAT, the method kube-proxy uses.
pub const FWD_MASQ: u32 = 0;
/// `IP_VS_CONN_F_LOCALNODE`.
pub const FWD_LOCALNODE: u32 = 1;
/// `IP_VS_CONN_F_TUNNEL`.
pub const FWD_TUNNEL: u32 = 2;
/// `IP_VS_CONN_F_DROUTE`.
pub const FWD_DROUTE: u32 = 3;

/// An IPVS command (`IPVS_CMD_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpvsCommand {
    /// 1: add a virtual service (also the command of each service in a dump).
    NewService,
    /// 2: edit a virtual service.
    SetService,
    /// 3: delete a virtual service and its real servers.
    DelService,
    /// 4: get one service, or dump all.
    GetService,
    /// 5: add a real server (also the command of each server in a dump).
    NewDest,
    /// 6: edit a real server (weight, thresholds).
    SetDest,
    /// 7: delete a real server.
    DelDest,
    /// 8: dump the real servers of one service.
    GetDest,
    /// 12: set the TCP / TCP-FIN / UDP timeouts.
    SetConfig,
    /// 13: get the timeouts.
    GetConfig,
    /// 14: the answer to `GetInfo`.
    SetInfo,
    /// 15: the IPVS version and connection table size.
    GetInfo,
    /// 16: zero counters.
    Zero,
    /// 17: delete every virtual service.
    Flush,
    /// Any other number.
    Other(u8),
}

impl From<IpvsCommand> for u8 {
    fn from(c: IpvsCommand) -> u8 {
        use IpvsCommand::*;
        match c {
            NewService => 1,
            SetService => 2,
            DelService => 3,
            GetService => 4,
            NewDest => 5,
            SetDest => 6,
            DelDest => 7,
            GetDest => 8,
            SetConfig => 12,
            GetConfig => 13,
            SetInfo => 14,
            GetInfo => 15,
            Zero => 16,
            Flush => 17,
            Other(n) => n,
        }
    }
}

impl From<u8> for IpvsCommand {
    fn from(n: u8) -> Self {
        use IpvsCommand::*;
        match n {
            1 => NewService,
            2 => SetService,
            3 => DelService,
            4 => GetService,
            5 => NewDest,
            6 => SetDest,
            7 => DelDest,
            8 => GetDest,
            12 => SetConfig,
            13 => GetConfig,
            14 => SetInfo,
            15 => GetInfo,
            16 => Zero,
            17 => Flush,
            n => Other(n),
        }
    }
}

mod kind {
    // IPVS_CMD_ATTR_*
    pub(super) const CMD_SERVICE: u16 = 1;
    pub(super) const CMD_DEST: u16 = 2;
    pub(super) const CMD_TIMEOUT_TCP: u16 = 4;
    pub(super) const CMD_TIMEOUT_TCP_FIN: u16 = 5;
    pub(super) const CMD_TIMEOUT_UDP: u16 = 6;
    // IPVS_SVC_ATTR_*
    pub(super) const SVC_AF: u16 = 1;
    pub(super) const SVC_PROTOCOL: u16 = 2;
    pub(super) const SVC_ADDR: u16 = 3;
    pub(super) const SVC_PORT: u16 = 4;
    pub(super) const SVC_FWMARK: u16 = 5;
    pub(super) const SVC_SCHED_NAME: u16 = 6;
    pub(super) const SVC_FLAGS: u16 = 7;
    pub(super) const SVC_TIMEOUT: u16 = 8;
    pub(super) const SVC_NETMASK: u16 = 9;
    pub(super) const SVC_STATS: u16 = 10;
    pub(super) const SVC_PE_NAME: u16 = 11;
    pub(super) const SVC_STATS64: u16 = 12;
    // IPVS_DEST_ATTR_*
    pub(super) const DEST_ADDR: u16 = 1;
    pub(super) const DEST_PORT: u16 = 2;
    pub(super) const DEST_FWD_METHOD: u16 = 3;
    pub(super) const DEST_WEIGHT: u16 = 4;
    pub(super) const DEST_U_THRESH: u16 = 5;
    pub(super) const DEST_L_THRESH: u16 = 6;
    pub(super) const DEST_ACTIVE_CONNS: u16 = 7;
    pub(super) const DEST_INACT_CONNS: u16 = 8;
    pub(super) const DEST_PERSIST_CONNS: u16 = 9;
    pub(super) const DEST_STATS: u16 = 10;
    pub(super) const DEST_ADDR_FAMILY: u16 = 11;
    pub(super) const DEST_STATS64: u16 = 12;
    pub(super) const DEST_TUN_TYPE: u16 = 13;
    pub(super) const DEST_TUN_PORT: u16 = 14;
    pub(super) const DEST_TUN_FLAGS: u16 = 15;
    // IPVS_STATS_ATTR_*
    pub(super) const STATS_CONNS: u16 = 1;
    pub(super) const STATS_INPKTS: u16 = 2;
    pub(super) const STATS_OUTPKTS: u16 = 3;
    pub(super) const STATS_INBYTES: u16 = 4;
    pub(super) const STATS_OUTBYTES: u16 = 5;
    // IPVS_INFO_ATTR_*
    pub(super) const INFO_VERSION: u16 = 1;
    pub(super) const INFO_CONN_TAB_SIZE: u16 = 2;
}

const KIND_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

/// An address as IPVS carries it: the 16 bytes of `union nf_inet_addr` (an IPv4 address in the
/// first four, the rest zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InetAddr(pub [u8; 16]);

impl InetAddr {
    /// The address as IPVS wants it for `ip`.
    pub fn from_ip(ip: IpAddr) -> Self {
        let mut b = [0u8; 16];
        match ip {
            IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => b.copy_from_slice(&v6.octets()),
        }
        Self(b)
    }

    /// The address, read in the address family `af` (`AF_INET`, `AF_INET6`).
    pub fn to_ip(self, af: u16) -> IpAddr {
        if af == AF_INET6 {
            IpAddr::V6(Ipv6Addr::from(self.0))
        } else {
            IpAddr::V4(Ipv4Addr::new(self.0[0], self.0[1], self.0[2], self.0[3]))
        }
    }
}

/// The address family IPVS uses for `ip`.
pub fn af_of(ip: &IpAddr) -> u16 {
    match ip {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

/// A virtual service's flags with the mask of the bits being set (`struct ip_vs_flags`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceFlags {
    /// The flag bits.
    pub flags: u32,
    /// Which bits `flags` sets (the kernel lists `0xffffffff`).
    pub mask: u32,
}

/// A service's or server's traffic counters (`IPVS_SVC_ATTR_STATS64` or `_STATS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpvsStats {
    /// Connections scheduled.
    pub connections: u64,
    /// Packets in.
    pub packets_in: u64,
    /// Packets out.
    pub packets_out: u64,
    /// Bytes in.
    pub bytes_in: u64,
    /// Bytes out.
    pub bytes_out: u64,
}

/// An attribute of a virtual service (`IPVS_SVC_ATTR_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceAttribute {
    /// The address family.
    AddressFamily(u16),
    /// The IP protocol number (6 TCP, 17 UDP, 132 SCTP).
    Protocol(u16),
    /// The virtual address.
    Address(InetAddr),
    /// The virtual port.
    Port(u16),
    /// A firewall mark (services kproxy programs use address and port instead).
    FwMark(u32),
    /// The scheduler's name (`rr`, `wrr`, `sh`, …).
    Scheduler(String),
    /// Flags and mask.
    Flags(ServiceFlags),
    /// The persistence timeout in seconds.
    Timeout(u32),
    /// The persistence netmask: `0xffffffff` for IPv4, the prefix length (128) for IPv6.
    Netmask(u32),
    /// 32-bit counters (listed only).
    Stats(IpvsStats),
    /// The persistence engine's name.
    PeName(String),
    /// 64-bit counters (listed only).
    Stats64(IpvsStats),
    /// Anything else, kept as it came.
    Other(DefaultNla),
}

/// An attribute of a real server (`IPVS_DEST_ATTR_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestAttribute {
    /// The server's address.
    Address(InetAddr),
    /// The server's port.
    Port(u16),
    /// The forwarding method (`FWD_*`).
    ForwardMethod(u32),
    /// The weight; 0 sends no new connections (graceful termination).
    Weight(u32),
    /// Upper connection threshold (0: none).
    UpperThreshold(u32),
    /// Lower connection threshold.
    LowerThreshold(u32),
    /// Active connections (listed only).
    ActiveConnections(u32),
    /// Inactive connections (listed only).
    InactiveConnections(u32),
    /// Persistent connection templates (listed only).
    PersistentConnections(u32),
    /// 32-bit counters (listed only).
    Stats(IpvsStats),
    /// The server's address family (may differ from the service's with tunnelling).
    AddressFamily(u16),
    /// 64-bit counters (listed only).
    Stats64(IpvsStats),
    /// Tunnel type (tunnelling only).
    TunnelType(u8),
    /// Tunnel port, big-endian (tunnelling only).
    TunnelPort(u16),
    /// Tunnel flags (tunnelling only).
    TunnelFlags(u16),
    /// Anything else, kept as it came.
    Other(DefaultNla),
}

/// A command-level attribute (`IPVS_CMD_ATTR_*`), or an info attribute in a `GetInfo` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpvsAttribute {
    /// A virtual service.
    Service(Vec<ServiceAttribute>),
    /// A real server.
    Dest(Vec<DestAttribute>),
    /// The TCP established timeout, seconds.
    TimeoutTcp(u32),
    /// The TCP FIN_WAIT timeout, seconds.
    TimeoutTcpFin(u32),
    /// The UDP timeout, seconds.
    TimeoutUdp(u32),
    /// `GetInfo` answer: the IPVS version (`(major << 16) | (minor << 8) | patch`).
    InfoVersion(u32),
    /// `GetInfo` answer: the connection table size.
    InfoConnTableSize(u32),
    /// Anything else, kept as it came.
    Other(DefaultNla),
}

/// One IPVS message: a command and its attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsMessage {
    /// The command.
    pub command: IpvsCommand,
    /// The attributes, in the order they are sent.
    pub attributes: Vec<IpvsAttribute>,
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        IPVS_GENL_NAME
    }

    fn command(&self) -> u8 {
        self.command.into()
    }

    fn version(&self) -> u8 {
        IPVS_GENL_VERSION
    }
}

fn nested_len<T: Nla>(attrs: &[T]) -> usize {
    attrs.buffer_len()
}

fn emit_string(s: &str, buf: &mut [u8]) {
    buf[..s.len()].copy_from_slice(s.as_bytes());
    buf[s.len()] = 0;
}

impl Nla for ServiceAttribute {
    fn value_len(&self) -> usize {
        use ServiceAttribute::*;
        match self {
            AddressFamily(_) | Protocol(_) | Port(_) => 2,
            Address(_) => 16,
            FwMark(_) | Timeout(_) | Netmask(_) => 4,
            Scheduler(s) | PeName(s) => s.len() + 1,
            Flags(_) => 8,
            Stats(_) => stats_len(false),
            Stats64(_) => stats_len(true),
            Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        use ServiceAttribute::*;
        match self {
            AddressFamily(_) => kind::SVC_AF,
            Protocol(_) => kind::SVC_PROTOCOL,
            Address(_) => kind::SVC_ADDR,
            Port(_) => kind::SVC_PORT,
            FwMark(_) => kind::SVC_FWMARK,
            Scheduler(_) => kind::SVC_SCHED_NAME,
            Flags(_) => kind::SVC_FLAGS,
            Timeout(_) => kind::SVC_TIMEOUT,
            Netmask(_) => kind::SVC_NETMASK,
            Stats(_) => kind::SVC_STATS,
            PeName(_) => kind::SVC_PE_NAME,
            Stats64(_) => kind::SVC_STATS64,
            Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        use ServiceAttribute::*;
        match self {
            AddressFamily(v) | Protocol(v) => buf[..2].copy_from_slice(&v.to_ne_bytes()),
            Port(v) => buf[..2].copy_from_slice(&v.to_be_bytes()),
            Address(a) => buf[..16].copy_from_slice(&a.0),
            FwMark(v) | Timeout(v) | Netmask(v) => buf[..4].copy_from_slice(&v.to_ne_bytes()),
            Scheduler(s) | PeName(s) => emit_string(s, buf),
            Flags(f) => {
                buf[..4].copy_from_slice(&f.flags.to_ne_bytes());
                buf[4..8].copy_from_slice(&f.mask.to_ne_bytes());
            }
            Stats(s) => emit_stats(s, false, buf),
            Stats64(s) => emit_stats(s, true, buf),
            Other(nla) => nla.emit_value(buf),
        }
    }
}

impl Nla for DestAttribute {
    fn value_len(&self) -> usize {
        use DestAttribute::*;
        match self {
            Address(_) => 16,
            Port(_) | AddressFamily(_) | TunnelPort(_) | TunnelFlags(_) => 2,
            TunnelType(_) => 1,
            ForwardMethod(_)
            | Weight(_)
            | UpperThreshold(_)
            | LowerThreshold(_)
            | ActiveConnections(_)
            | InactiveConnections(_)
            | PersistentConnections(_) => 4,
            Stats(_) => stats_len(false),
            Stats64(_) => stats_len(true),
            Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        use DestAttribute::*;
        match self {
            Address(_) => kind::DEST_ADDR,
            Port(_) => kind::DEST_PORT,
            ForwardMethod(_) => kind::DEST_FWD_METHOD,
            Weight(_) => kind::DEST_WEIGHT,
            UpperThreshold(_) => kind::DEST_U_THRESH,
            LowerThreshold(_) => kind::DEST_L_THRESH,
            ActiveConnections(_) => kind::DEST_ACTIVE_CONNS,
            InactiveConnections(_) => kind::DEST_INACT_CONNS,
            PersistentConnections(_) => kind::DEST_PERSIST_CONNS,
            Stats(_) => kind::DEST_STATS,
            AddressFamily(_) => kind::DEST_ADDR_FAMILY,
            Stats64(_) => kind::DEST_STATS64,
            TunnelType(_) => kind::DEST_TUN_TYPE,
            TunnelPort(_) => kind::DEST_TUN_PORT,
            TunnelFlags(_) => kind::DEST_TUN_FLAGS,
            Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        use DestAttribute::*;
        match self {
            Address(a) => buf[..16].copy_from_slice(&a.0),
            Port(v) | TunnelPort(v) => buf[..2].copy_from_slice(&v.to_be_bytes()),
            AddressFamily(v) | TunnelFlags(v) => buf[..2].copy_from_slice(&v.to_ne_bytes()),
            TunnelType(v) => buf[0] = *v,
            ForwardMethod(v)
            | Weight(v)
            | UpperThreshold(v)
            | LowerThreshold(v)
            | ActiveConnections(v)
            | InactiveConnections(v)
            | PersistentConnections(v) => buf[..4].copy_from_slice(&v.to_ne_bytes()),
            Stats(s) => emit_stats(s, false, buf),
            Stats64(s) => emit_stats(s, true, buf),
            Other(nla) => nla.emit_value(buf),
        }
    }
}

impl Nla for IpvsAttribute {
    fn value_len(&self) -> usize {
        use IpvsAttribute::*;
        match self {
            Service(attrs) => nested_len(attrs),
            Dest(attrs) => nested_len(attrs),
            TimeoutTcp(_) | TimeoutTcpFin(_) | TimeoutUdp(_) | InfoVersion(_)
            | InfoConnTableSize(_) => 4,
            Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        use IpvsAttribute::*;
        match self {
            Service(_) => kind::CMD_SERVICE | NLA_F_NESTED,
            Dest(_) => kind::CMD_DEST | NLA_F_NESTED,
            TimeoutTcp(_) => kind::CMD_TIMEOUT_TCP,
            TimeoutTcpFin(_) => kind::CMD_TIMEOUT_TCP_FIN,
            TimeoutUdp(_) => kind::CMD_TIMEOUT_UDP,
            InfoVersion(_) => kind::INFO_VERSION,
            InfoConnTableSize(_) => kind::INFO_CONN_TAB_SIZE,
            Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        use IpvsAttribute::*;
        match self {
            Service(attrs) => attrs.as_slice().emit(buf),
            Dest(attrs) => attrs.as_slice().emit(buf),
            TimeoutTcp(v) | TimeoutTcpFin(v) | TimeoutUdp(v) | InfoVersion(v)
            | InfoConnTableSize(v) => buf[..4].copy_from_slice(&v.to_ne_bytes()),
            Other(nla) => nla.emit_value(buf),
        }
    }
}

/// Counters are emitted only to round-trip a listing in tests: five attributes, 32 or 64 bits.
fn stats_len(wide: bool) -> usize {
    5 * if wide { 12 } else { 8 }
}

fn emit_stats(s: &IpvsStats, wide: bool, buf: &mut [u8]) {
    let values = [
        (kind::STATS_CONNS, s.connections),
        (kind::STATS_INPKTS, s.packets_in),
        (kind::STATS_OUTPKTS, s.packets_out),
        (kind::STATS_INBYTES, s.bytes_in),
        (kind::STATS_OUTBYTES, s.bytes_out),
    ];
    let mut at = 0;
    for (k, v) in values {
        let len: u16 = if wide { 12 } else { 8 };
        buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        buf[at + 2..at + 4].copy_from_slice(&k.to_ne_bytes());
        if wide {
            buf[at + 4..at + 12].copy_from_slice(&v.to_ne_bytes());
        } else {
            buf[at + 4..at + 8].copy_from_slice(&(v as u32).to_ne_bytes());
        }
        at += len as usize;
    }
}

fn ne_u16(v: &[u8], what: &str) -> Result<u16, DecodeError> {
    v.get(..2)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        .ok_or_else(|| DecodeError::from(format!("ipvs: short {what}")))
}

fn be_u16(v: &[u8], what: &str) -> Result<u16, DecodeError> {
    v.get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| DecodeError::from(format!("ipvs: short {what}")))
}

fn ne_u32(v: &[u8], what: &str) -> Result<u32, DecodeError> {
    v.get(..4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| DecodeError::from(format!("ipvs: short {what}")))
}

fn string(v: &[u8]) -> Result<String, DecodeError> {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8(v[..end].to_vec()).map_err(|_| DecodeError::from("ipvs: name is not UTF-8"))
}

fn address(v: &[u8]) -> Result<InetAddr, DecodeError> {
    let mut b = [0u8; 16];
    match v.len() {
        4 | 16 => b[..v.len()].copy_from_slice(v),
        n if n > 16 => b.copy_from_slice(&v[..16]),
        n => return Err(DecodeError::from(format!("ipvs: {n}-byte address"))),
    }
    Ok(InetAddr(b))
}

fn stats(v: &[u8]) -> Result<IpvsStats, DecodeError> {
    let mut s = IpvsStats::default();
    for nla in NlasIterator::new(v) {
        let nla = nla?;
        let value = nla.value();
        let n = match value.len() {
            8 => u64::from_ne_bytes(value.try_into().expect("8 bytes")),
            4 => u64::from(u32::from_ne_bytes(value.try_into().expect("4 bytes"))),
            _ => continue, // padding
        };
        match nla.kind() & KIND_MASK {
            kind::STATS_CONNS => s.connections = n,
            kind::STATS_INPKTS => s.packets_in = n,
            kind::STATS_OUTPKTS => s.packets_out = n,
            kind::STATS_INBYTES => s.bytes_in = n,
            kind::STATS_OUTBYTES => s.bytes_out = n,
            _ => {}
        }
    }
    Ok(s)
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for ServiceAttribute {
    fn parse(nla: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        use ServiceAttribute::*;
        let v = nla.value();
        Ok(match nla.kind() & KIND_MASK {
            kind::SVC_AF => AddressFamily(ne_u16(v, "service family")?),
            kind::SVC_PROTOCOL => Protocol(ne_u16(v, "service protocol")?),
            kind::SVC_ADDR => Address(address(v)?),
            kind::SVC_PORT => Port(be_u16(v, "service port")?),
            kind::SVC_FWMARK => FwMark(ne_u32(v, "fwmark")?),
            kind::SVC_SCHED_NAME => Scheduler(string(v)?),
            kind::SVC_FLAGS => Flags(ServiceFlags {
                flags: ne_u32(v, "service flags")?,
                mask: ne_u32(v.get(4..).unwrap_or_default(), "service flags mask")?,
            }),
            kind::SVC_TIMEOUT => Timeout(ne_u32(v, "service timeout")?),
            kind::SVC_NETMASK => Netmask(ne_u32(v, "service netmask")?),
            kind::SVC_STATS => Stats(stats(v)?),
            kind::SVC_PE_NAME => PeName(string(v)?),
            kind::SVC_STATS64 => Stats64(stats(v)?),
            _ => Other(DefaultNla::parse(nla)?),
        })
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for DestAttribute {
    fn parse(nla: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        use DestAttribute::*;
        let v = nla.value();
        Ok(match nla.kind() & KIND_MASK {
            kind::DEST_ADDR => Address(address(v)?),
            kind::DEST_PORT => Port(be_u16(v, "server port")?),
            kind::DEST_FWD_METHOD => ForwardMethod(ne_u32(v, "forwarding method")?),
            kind::DEST_WEIGHT => Weight(ne_u32(v, "weight")?),
            kind::DEST_U_THRESH => UpperThreshold(ne_u32(v, "upper threshold")?),
            kind::DEST_L_THRESH => LowerThreshold(ne_u32(v, "lower threshold")?),
            kind::DEST_ACTIVE_CONNS => ActiveConnections(ne_u32(v, "active connections")?),
            kind::DEST_INACT_CONNS => InactiveConnections(ne_u32(v, "inactive connections")?),
            kind::DEST_PERSIST_CONNS => PersistentConnections(ne_u32(v, "persistent")?),
            kind::DEST_STATS => Stats(stats(v)?),
            kind::DEST_ADDR_FAMILY => AddressFamily(ne_u16(v, "server family")?),
            kind::DEST_STATS64 => Stats64(stats(v)?),
            kind::DEST_TUN_TYPE => TunnelType(v.first().copied().unwrap_or_default()),
            kind::DEST_TUN_PORT => TunnelPort(be_u16(v, "tunnel port")?),
            kind::DEST_TUN_FLAGS => TunnelFlags(ne_u16(v, "tunnel flags")?),
            _ => Other(DefaultNla::parse(nla)?),
        })
    }
}

fn parse_nested<A>(v: &[u8]) -> Result<Vec<A>, DecodeError>
where
    A: for<'b> Parseable<NlaBuffer<&'b [u8]>>,
{
    NlasIterator::new(v).map(|nla| A::parse(&nla?)).collect()
}

impl IpvsAttribute {
    /// Decodes one command-level attribute of a message whose command is `command` (a
    /// `GetInfo` answer reuses kinds 1 and 2 for its own attributes).
    pub fn parse(nla: &NlaBuffer<&[u8]>, command: IpvsCommand) -> Result<Self, DecodeError> {
        use IpvsAttribute::*;
        let v = nla.value();
        Ok(match (nla.kind() & KIND_MASK, command) {
            (kind::INFO_VERSION, IpvsCommand::SetInfo) => InfoVersion(ne_u32(v, "version")?),
            (kind::INFO_CONN_TAB_SIZE, IpvsCommand::SetInfo) => {
                InfoConnTableSize(ne_u32(v, "table size")?)
            }
            (kind::CMD_SERVICE, _) => Service(parse_nested(v)?),
            (kind::CMD_DEST, _) => Dest(parse_nested(v)?),
            (kind::CMD_TIMEOUT_TCP, _) => TimeoutTcp(ne_u32(v, "tcp timeout")?),
            (kind::CMD_TIMEOUT_TCP_FIN, _) => TimeoutTcpFin(ne_u32(v, "tcpfin timeout")?),
            (kind::CMD_TIMEOUT_UDP, _) => TimeoutUdp(ne_u32(v, "udp timeout")?),
            _ => Other(DefaultNla::parse(nla)?),
        })
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attributes.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attributes.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let command = IpvsCommand::from(header.cmd);
        let attributes = NlasIterator::new(buf)
            .map(|nla| IpvsAttribute::parse(&nla?, command))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            command,
            attributes,
        })
    }
}

/// A virtual service as kproxy programs it: the key (family, protocol, address, port) and its
/// settings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VirtualService {
    /// The virtual address.
    pub address: IpAddr,
    /// The IP protocol number (6, 17, 132).
    pub protocol: u16,
    /// The virtual port.
    pub port: u16,
    /// The scheduler.
    pub scheduler: String,
    /// Flags (`SVC_F_*`); the kernel adds `SVC_F_HASHED` when listing.
    pub flags: u32,
    /// Persistence timeout in seconds (with `SVC_F_PERSISTENT`).
    pub timeout: u32,
}

/// A real server of a virtual service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RealServer {
    /// The server's address.
    pub address: IpAddr,
    /// The server's port.
    pub port: u16,
    /// The weight (0: no new connections).
    pub weight: u32,
    /// The forwarding method (`FWD_MASQ` for kproxy).
    pub forward: u32,
}

impl VirtualService {
    /// The attributes that name the service: family, protocol, address, port — what a delete, a
    /// server change or a server dump sends.
    pub fn key_attributes(&self) -> Vec<ServiceAttribute> {
        vec![
            ServiceAttribute::AddressFamily(af_of(&self.address)),
            ServiceAttribute::Protocol(self.protocol),
            ServiceAttribute::Address(InetAddr::from_ip(self.address)),
            ServiceAttribute::Port(self.port),
        ]
    }

    /// Every attribute, in the order `ipvsadm` sends them for an add or an edit: the key, the
    /// scheduler, flags (mask all ones: the flags given are the flags wanted), timeout and the
    /// persistence netmask.
    pub fn full_attributes(&self) -> Vec<ServiceAttribute> {
        let mut a = self.key_attributes();
        a.push(ServiceAttribute::Scheduler(self.scheduler.clone()));
        a.push(ServiceAttribute::Flags(ServiceFlags {
            flags: self.flags,
            mask: u32::MAX,
        }));
        a.push(ServiceAttribute::Timeout(self.timeout));
        a.push(ServiceAttribute::Netmask(match self.address {
            IpAddr::V4(_) => u32::MAX,
            IpAddr::V6(_) => 128,
        }));
        a
    }

    /// Reads a listed service; `None` for fwmark services and listings missing a key attribute.
    pub fn from_attributes(attrs: &[ServiceAttribute]) -> Option<(Self, IpvsStats)> {
        let (mut af, mut protocol, mut addr, mut port) = (None, None, None, None);
        let mut svc_stats = IpvsStats::default();
        let (mut scheduler, mut flags, mut timeout) = (String::new(), 0, 0);
        for a in attrs {
            match a {
                ServiceAttribute::AddressFamily(v) => af = Some(*v),
                ServiceAttribute::Protocol(v) => protocol = Some(*v),
                ServiceAttribute::Address(v) => addr = Some(*v),
                ServiceAttribute::Port(v) => port = Some(*v),
                ServiceAttribute::Scheduler(s) => scheduler = s.clone(),
                ServiceAttribute::Flags(f) => flags = f.flags,
                ServiceAttribute::Timeout(t) => timeout = *t,
                ServiceAttribute::Stats64(s) => svc_stats = *s,
                ServiceAttribute::FwMark(m) if *m != 0 => return None,
                _ => {}
            }
        }
        let af = af?;
        Some((
            Self {
                address: addr?.to_ip(af),
                protocol: protocol?,
                port: port?,
                scheduler,
                flags,
                timeout,
            },
            svc_stats,
        ))
    }
}

impl RealServer {
    /// The attributes of an add or an edit, in `ipvsadm`'s order.
    pub fn full_attributes(&self) -> Vec<DestAttribute> {
        vec![
            DestAttribute::AddressFamily(af_of(&self.address)),
            DestAttribute::Address(InetAddr::from_ip(self.address)),
            DestAttribute::Port(self.port),
            DestAttribute::ForwardMethod(self.forward),
            DestAttribute::Weight(self.weight),
            DestAttribute::TunnelType(0),
            DestAttribute::TunnelPort(0),
            DestAttribute::TunnelFlags(0),
            DestAttribute::UpperThreshold(0),
            DestAttribute::LowerThreshold(0),
        ]
    }
}

/// A real server as the kernel lists it, with its connection counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedServer {
    /// The server.
    pub server: RealServer,
    /// Active (established) connections.
    pub active: u32,
    /// Inactive connections (closing, or UDP flows).
    pub inactive: u32,
    /// Counters.
    pub stats: IpvsStats,
}

impl ListedServer {
    /// Reads a listed server; the family comes from its own attribute or, on older kernels,
    /// `service_af`.
    pub fn from_attributes(attrs: &[DestAttribute], service_af: u16) -> Option<Self> {
        let (mut af, mut addr, mut port) = (service_af, None, None);
        let (mut weight, mut forward, mut active, mut inactive) = (0, 0, 0, 0);
        let mut stats = IpvsStats::default();
        for a in attrs {
            match a {
                DestAttribute::AddressFamily(v) => af = *v,
                DestAttribute::Address(v) => addr = Some(*v),
                DestAttribute::Port(v) => port = Some(*v),
                DestAttribute::Weight(v) => weight = *v,
                DestAttribute::ForwardMethod(v) => forward = *v & 0x7,
                DestAttribute::ActiveConnections(v) => active = *v,
                DestAttribute::InactiveConnections(v) => inactive = *v,
                DestAttribute::Stats64(s) => stats = *s,
                _ => {}
            }
        }
        Some(Self {
            server: RealServer {
                address: addr?.to_ip(af),
                port: port?,
                weight,
                forward,
            },
            active,
            inactive,
            stats,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(m: &IpvsMessage) -> Vec<u8> {
        let mut out = vec![0; 4 + m.buffer_len()];
        out[0] = m.command.into();
        out[1] = IPVS_GENL_VERSION;
        m.emit(&mut out[4..]);
        out
    }

    fn parse(b: &[u8]) -> IpvsMessage {
        let header = GenlHeader::parse(b).unwrap();
        IpvsMessage::parse_with_param(&b[4..], header).unwrap()
    }

    #[test]
    fn flags_round_trip_and_nested_flag_is_stripped_on_parse() {
        let svc = VirtualService {
            address: "10.0.0.1".parse().unwrap(),
            protocol: 6,
            port: 80,
            scheduler: "rr".into(),
            flags: SVC_F_PERSISTENT,
            timeout: 10,
        };
        let m = IpvsMessage {
            command: IpvsCommand::NewService,
            attributes: vec![IpvsAttribute::Service(svc.full_attributes())],
        };
        let b = bytes(&m);
        assert_eq!(u16::from_ne_bytes([b[6], b[7]]), 1 | NLA_F_NESTED);
        assert_eq!(parse(&b), m);
    }
}
