//! Sets and their entries, typed: a [`SetSpec`] says how to create a set, an [`Entry`] is one
//! member in the shape of its set's type.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use kproxy_netlink::ipset::{DataAttribute, MAX_SET_NAME_LEN, NFPROTO_IPV4, NFPROTO_IPV6};

use crate::error::IpsetError;

/// The set types kproxy uses (the kernel has more).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetType {
    /// `hash:ip`: addresses.
    HashIp,
    /// `hash:ip,port`: address, protocol and port (service frontends).
    HashIpPort,
    /// `hash:ip,port,ip`: a frontend and a source address (hairpin: endpoint to itself).
    HashIpPortIp,
    /// `hash:ip,port,net`: a frontend and a source network (load-balancer source ranges).
    HashIpPortNet,
    /// `hash:net`: networks.
    HashNet,
    /// `bitmap:port`: ports of a fixed range (node ports).
    BitmapPort,
}

impl SetType {
    /// Every type, for tests and messages.
    pub const ALL: [SetType; 6] = [
        SetType::HashIp,
        SetType::HashIpPort,
        SetType::HashIpPortIp,
        SetType::HashIpPortNet,
        SetType::HashNet,
        SetType::BitmapPort,
    ];

    /// The kernel's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            SetType::HashIp => "hash:ip",
            SetType::HashIpPort => "hash:ip,port",
            SetType::HashIpPortIp => "hash:ip,port,ip",
            SetType::HashIpPortNet => "hash:ip,port,net",
            SetType::HashNet => "hash:net",
            SetType::BitmapPort => "bitmap:port",
        }
    }

    /// The type named `name`, if kproxy knows it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Whether the type holds addresses (and so has a family).
    pub fn has_family(self) -> bool {
        self != SetType::BitmapPort
    }
}

impl fmt::Display for SetType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set's address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetFamily {
    /// IPv4 (`family inet`).
    Inet,
    /// IPv6 (`family inet6`).
    Inet6,
}

impl SetFamily {
    /// The `NFPROTO_*` number.
    pub fn nfproto(self) -> u8 {
        match self {
            SetFamily::Inet => NFPROTO_IPV4,
            SetFamily::Inet6 => NFPROTO_IPV6,
        }
    }

    /// Whether `ip` is of this family.
    pub fn contains(self, ip: &IpAddr) -> bool {
        matches!(
            (self, ip),
            (SetFamily::Inet, IpAddr::V4(_)) | (SetFamily::Inet6, IpAddr::V6(_))
        )
    }

    fn from_nfproto(n: u8) -> Option<Self> {
        match n {
            NFPROTO_IPV4 => Some(SetFamily::Inet),
            NFPROTO_IPV6 => Some(SetFamily::Inet6),
            _ => None,
        }
    }

    /// The family of a listed set (`None` for bitmap:port's `NFPROTO_UNSPEC`).
    pub(crate) fn from_listed(n: u8) -> Option<Self> {
        Self::from_nfproto(n)
    }
}

impl fmt::Display for SetFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SetFamily::Inet => "inet",
            SetFamily::Inet6 => "inet6",
        })
    }
}

/// How to create a set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetSpec {
    /// The name (1–31 bytes).
    pub name: String,
    /// The type.
    pub set_type: SetType,
    /// The family (ignored for `bitmap:port`).
    pub family: SetFamily,
    /// Initial hash size (hash types; kernel default 1024).
    pub hashsize: Option<u32>,
    /// Maximum number of entries (hash types; kernel default 65536).
    pub maxelem: Option<u32>,
    /// The port range of a `bitmap:port` set (required for it).
    pub port_range: Option<(u16, u16)>,
    /// Entries may carry a comment (`comment` extension).
    pub comment: bool,
    /// Default entry timeout in seconds (`timeout` extension); entries then expire.
    pub timeout: Option<u32>,
}

impl SetSpec {
    /// A set of `set_type` and `family` with the kernel's defaults.
    pub fn new(name: impl Into<String>, set_type: SetType, family: SetFamily) -> Self {
        Self {
            name: name.into(),
            set_type,
            family,
            hashsize: None,
            maxelem: None,
            port_range: None,
            comment: false,
            timeout: None,
        }
    }

    /// A `bitmap:port` set for `from..=to`.
    pub fn bitmap_port(name: impl Into<String>, from: u16, to: u16) -> Self {
        Self {
            port_range: Some((from, to)),
            ..Self::new(name, SetType::BitmapPort, SetFamily::Inet)
        }
    }

    /// Checks what can be checked without the kernel: the name, the bitmap range.
    pub fn validate(&self) -> Result<(), IpsetError> {
        check_name(&self.name)?;
        if self.set_type == SetType::BitmapPort {
            match self.port_range {
                Some((from, to)) if from <= to => {}
                Some((from, to)) => {
                    return Err(IpsetError::BadSpec {
                        set: self.name.clone(),
                        reason: format!("port range {from}-{to} is empty"),
                    })
                }
                None => {
                    return Err(IpsetError::BadSpec {
                        set: self.name.clone(),
                        reason: "a bitmap:port set needs a port range".into(),
                    })
                }
            }
        }
        Ok(())
    }

    /// The create-time attributes (`IPSET_ATTR_DATA` of a create).
    pub(crate) fn create_data(&self) -> Vec<DataAttribute> {
        let mut d = Vec::new();
        if let Some((from, to)) = self
            .port_range
            .filter(|_| self.set_type == SetType::BitmapPort)
        {
            d.push(DataAttribute::Port(from));
            d.push(DataAttribute::PortTo(to));
        }
        if let Some(t) = self.timeout {
            d.push(DataAttribute::Timeout(t));
        }
        if let Some(h) = self.hashsize {
            d.push(DataAttribute::HashSize(h));
        }
        if let Some(m) = self.maxelem {
            d.push(DataAttribute::MaxElem(m));
        }
        if self.comment {
            d.push(DataAttribute::CadtFlags(
                kproxy_netlink::ipset::FLAG_WITH_COMMENT,
            ));
        }
        d
    }
}

/// Checks a set name: 1–31 bytes, no NUL (the kernel's `IPSET_MAXNAMELEN` is 32 with the NUL).
pub fn check_name(name: &str) -> Result<(), IpsetError> {
    if name.is_empty() || name.len() > MAX_SET_NAME_LEN || name.contains('\0') {
        return Err(IpsetError::BadName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// The transport protocol of an entry with a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortProtocol {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// SCTP (132).
    Sctp,
}

impl PortProtocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            PortProtocol::Tcp => 6,
            PortProtocol::Udp => 17,
            PortProtocol::Sctp => 132,
        }
    }

    fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(PortProtocol::Tcp),
            17 => Some(PortProtocol::Udp),
            132 => Some(PortProtocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for PortProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
            PortProtocol::Sctp => "sctp",
        })
    }
}

/// One member of a set, in its type's shape. `Display` prints it as the `ipset` CLI does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entry {
    /// `hash:ip`: `10.0.0.1`.
    Ip(IpAddr),
    /// `hash:net`: `10.0.0.0/8`.
    Net(IpNetwork),
    /// `hash:ip,port`: `10.0.0.1,tcp:80`.
    IpPort {
        /// The address.
        ip: IpAddr,
        /// The protocol.
        protocol: PortProtocol,
        /// The port.
        port: u16,
    },
    /// `hash:ip,port,ip`: `10.0.0.1,tcp:80,10.0.0.1`.
    IpPortIp {
        /// The address.
        ip: IpAddr,
        /// The protocol.
        protocol: PortProtocol,
        /// The port.
        port: u16,
        /// The second address.
        ip2: IpAddr,
    },
    /// `hash:ip,port,net`: `10.0.0.1,tcp:80,10.2.0.0/24`.
    IpPortNet {
        /// The address.
        ip: IpAddr,
        /// The protocol.
        protocol: PortProtocol,
        /// The port.
        port: u16,
        /// The network.
        net: IpNetwork,
    },
    /// `bitmap:port`: `30080`.
    Port(u16),
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Ip(ip) => write!(f, "{ip}"),
            Entry::Net(net) => write!(f, "{}/{}", net.network(), net.prefix()),
            Entry::IpPort { ip, protocol, port } => write!(f, "{ip},{protocol}:{port}"),
            Entry::IpPortIp {
                ip,
                protocol,
                port,
                ip2,
            } => write!(f, "{ip},{protocol}:{port},{ip2}"),
            Entry::IpPortNet {
                ip,
                protocol,
                port,
                net,
            } => write!(
                f,
                "{ip},{protocol}:{port},{}/{}",
                net.network(),
                net.prefix()
            ),
            Entry::Port(port) => write!(f, "{port}"),
        }
    }
}

/// Per-entry extensions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryOptions {
    /// A comment (the set must have the `comment` extension).
    pub comment: Option<String>,
    /// A timeout in seconds (the set must have the `timeout` extension).
    pub timeout: Option<u32>,
}

impl Entry {
    /// The set type this entry's shape belongs to.
    pub fn set_type(&self) -> SetType {
        match self {
            Entry::Ip(_) => SetType::HashIp,
            Entry::Net(_) => SetType::HashNet,
            Entry::IpPort { .. } => SetType::HashIpPort,
            Entry::IpPortIp { .. } => SetType::HashIpPortIp,
            Entry::IpPortNet { .. } => SetType::HashIpPortNet,
            Entry::Port(_) => SetType::BitmapPort,
        }
    }

    /// Every address in the entry.
    fn addresses(&self) -> Vec<IpAddr> {
        match *self {
            Entry::Ip(ip) => vec![ip],
            Entry::Net(net) => vec![net.ip()],
            Entry::IpPort { ip, .. } => vec![ip],
            Entry::IpPortIp { ip, ip2, .. } => vec![ip, ip2],
            Entry::IpPortNet { ip, net, .. } => vec![ip, net.ip()],
            Entry::Port(_) => Vec::new(),
        }
    }

    /// Checks that the entry fits a set of `set_type` and `family`: its shape, its addresses'
    /// family, and a bitmap's port range when known. Nothing is sent when this fails.
    pub fn check_fits(
        &self,
        set: &str,
        set_type: SetType,
        family: Option<SetFamily>,
        port_range: Option<(u16, u16)>,
    ) -> Result<(), IpsetError> {
        let bad = |reason: String| IpsetError::EntryDoesNotFit {
            set: set.to_owned(),
            entry: self.to_string(),
            reason,
        };
        if self.set_type() != set_type {
            return Err(bad(format!(
                "the set is {set_type}, the entry has the shape of {}",
                self.set_type()
            )));
        }
        if let Some(family) = family.filter(|_| set_type.has_family()) {
            if let Some(ip) = self.addresses().into_iter().find(|ip| !family.contains(ip)) {
                return Err(bad(format!("{ip} is not an {family} address")));
            }
        }
        if let (Entry::Port(port), Some((from, to))) = (self, port_range) {
            if !(from..=to).contains(port) {
                return Err(bad(format!(
                    "port {port} is outside the set's range {from}-{to}"
                )));
            }
        }
        Ok(())
    }

    /// The entry's attributes (`IPSET_ATTR_DATA` of an add, del or test), in the CLI's order.
    pub(crate) fn to_data(self, options: &EntryOptions) -> Vec<DataAttribute> {
        use DataAttribute as D;
        let mut d = match self {
            Entry::Ip(ip) => vec![D::Ip(ip)],
            Entry::Net(net) => vec![D::Ip(net.network()), D::Cidr(net.prefix())],
            Entry::IpPort { ip, protocol, port } => {
                vec![D::Ip(ip), D::Port(port), D::Proto(protocol.number())]
            }
            Entry::IpPortIp {
                ip,
                protocol,
                port,
                ip2,
            } => vec![
                D::Ip(ip),
                D::Port(port),
                D::Proto(protocol.number()),
                D::Ip2(ip2),
            ],
            Entry::IpPortNet {
                ip,
                protocol,
                port,
                net,
            } => vec![
                D::Ip(ip),
                D::Port(port),
                D::Proto(protocol.number()),
                D::Ip2(net.network()),
                D::Cidr2(net.prefix()),
            ],
            Entry::Port(port) => vec![D::Port(port)],
        };
        if let Some(t) = options.timeout {
            d.push(D::Timeout(t));
        }
        if let Some(c) = &options.comment {
            d.push(D::Comment(c.clone()));
        }
        d
    }

    /// Reads a listed member of a `set_type` set; `None` when the attributes do not make one.
    pub(crate) fn from_data(set_type: SetType, data: &[DataAttribute]) -> Option<Self> {
        use DataAttribute as D;
        let (mut ip, mut ip2, mut cidr, mut cidr2, mut port, mut proto) =
            (None, None, None, None, None, None);
        for a in data {
            match a {
                D::Ip(v) => ip = Some(*v),
                D::Ip2(v) => ip2 = Some(*v),
                D::Cidr(v) => cidr = Some(*v),
                D::Cidr2(v) => cidr2 = Some(*v),
                D::Port(v) => port = Some(*v),
                D::Proto(v) => proto = PortProtocol::from_number(*v),
                _ => {}
            }
        }
        Some(match set_type {
            SetType::HashIp => Entry::Ip(ip?),
            SetType::HashNet => {
                let ip = ip?;
                let full = if ip.is_ipv4() { 32 } else { 128 };
                Entry::Net(IpNetwork::new(ip, cidr.unwrap_or(full)).ok()?)
            }
            SetType::HashIpPort => Entry::IpPort {
                ip: ip?,
                protocol: proto?,
                port: port?,
            },
            SetType::HashIpPortIp => Entry::IpPortIp {
                ip: ip?,
                protocol: proto?,
                port: port?,
                ip2: ip2?,
            },
            SetType::HashIpPortNet => {
                let ip2 = ip2?;
                let full = if ip2.is_ipv4() { 32 } else { 128 };
                Entry::IpPortNet {
                    ip: ip?,
                    protocol: proto?,
                    port: port?,
                    net: IpNetwork::new(ip2, cidr2.unwrap_or(full)).ok()?,
                }
            }
            SetType::BitmapPort => Entry::Port(port?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn entries_print_as_the_cli_does_and_round_trip_through_attributes() {
        let entries = [
            Entry::Ip(ip("10.0.0.1")),
            Entry::Net("10.1.0.0/16".parse().unwrap()),
            Entry::IpPort {
                ip: ip("fd00::1"),
                protocol: PortProtocol::Udp,
                port: 53,
            },
            Entry::IpPortIp {
                ip: ip("10.0.0.1"),
                protocol: PortProtocol::Tcp,
                port: 80,
                ip2: ip("10.0.0.1"),
            },
            Entry::IpPortNet {
                ip: ip("10.0.0.1"),
                protocol: PortProtocol::Sctp,
                port: 9,
                net: "10.2.0.0/24".parse().unwrap(),
            },
            Entry::Port(30080),
        ];
        let printed: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            printed,
            [
                "10.0.0.1",
                "10.1.0.0/16",
                "fd00::1,udp:53",
                "10.0.0.1,tcp:80,10.0.0.1",
                "10.0.0.1,sctp:9,10.2.0.0/24",
                "30080"
            ]
        );
        for e in entries {
            let data = e.to_data(&EntryOptions::default());
            assert_eq!(Entry::from_data(e.set_type(), &data), Some(e));
        }
    }

    #[test]
    fn misfits_are_refused_before_anything_is_sent() {
        let e = Entry::Ip(ip("10.0.0.1"));
        let err = e
            .check_fits("s", SetType::HashIpPort, Some(SetFamily::Inet), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("set s") && err.contains("10.0.0.1"), "{err}");
        let err = e
            .check_fits("s6", SetType::HashIp, Some(SetFamily::Inet6), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an inet6 address"), "{err}");
        let err = Entry::Port(80)
            .check_fits("np", SetType::BitmapPort, None, Some((30000, 32767)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside the set's range"), "{err}");
        assert!(check_name(&"x".repeat(31)).is_ok());
        assert!(check_name(&"x".repeat(32)).is_err());
        assert!(check_name("").is_err());
    }
}
