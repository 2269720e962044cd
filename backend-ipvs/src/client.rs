//! The IPVS client: virtual services and real servers over generic netlink, one request or a
//! pipelined batch at a time, with errors that name the service and the server.

use std::fmt;
use std::io;
use std::net::IpAddr;

use kproxy_netlink::ipvs::{
    af_of, IpvsAttribute, IpvsCommand, IpvsMessage, ListedServer, RealServer, VirtualService,
};
use kproxy_netlink::socket::{NetlinkSocket, SocketError};
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_sys::protocols::NETLINK_GENERIC;

/// The identity of a virtual service: what the kernel looks it up by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// The virtual address.
    pub address: IpAddr,
    /// The IP protocol number.
    pub protocol: u16,
    /// The virtual port.
    pub port: u16,
}

impl ServiceKey {
    /// The key of `s`.
    pub fn of(s: &VirtualService) -> Self {
        Self {
            address: s.address,
            protocol: s.protocol,
            port: s.port,
        }
    }
}

/// The protocol's name as `ipvsadm` prints it.
pub fn protocol_name(protocol: u16) -> &'static str {
    match protocol {
        6 => "TCP",
        17 => "UDP",
        132 => "SCTP",
        _ => "?",
    }
}

impl ServiceKey {
    /// The attributes that name the service in a request (family, protocol, address, port).
    pub fn attributes(&self) -> Vec<kproxy_netlink::ipvs::ServiceAttribute> {
        VirtualService {
            address: self.address,
            protocol: self.protocol,
            port: self.port,
            scheduler: String::new(),
            flags: 0,
            timeout: 0,
        }
        .key_attributes()
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = protocol_name(self.protocol);
        match self.address {
            IpAddr::V4(a) => write!(f, "{p} {a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "{p} [{a}]:{}", self.port),
        }
    }
}

/// A real server's identity within its service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerKey {
    /// The server's address.
    pub address: IpAddr,
    /// The server's port.
    pub port: u16,
}

impl fmt::Display for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

/// A service as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedService {
    /// The service with its settings (flags as listed, `SVC_F_HASHED` included).
    pub service: VirtualService,
}

/// One change to the kernel's IPVS table, for a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpvsOp {
    /// Add a virtual service.
    AddService(VirtualService),
    /// Change a virtual service's scheduler, flags or timeout.
    UpdateService(VirtualService),
    /// Delete a virtual service with its servers.
    DeleteService(ServiceKey),
    /// Add a real server to the service with this key.
    AddServer(ServiceKey, RealServer),
    /// Change a real server's weight.
    UpdateServer(ServiceKey, RealServer),
    /// Delete a real server.
    DeleteServer(ServiceKey, RealServer),
}

impl fmt::Display for IpvsOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let server = |r: &RealServer| ServerKey {
            address: r.address,
            port: r.port,
        };
        match self {
            IpvsOp::AddService(s) => write!(f, "adding virtual service {}", ServiceKey::of(s)),
            IpvsOp::UpdateService(s) => {
                write!(f, "updating virtual service {}", ServiceKey::of(s))
            }
            IpvsOp::DeleteService(k) => write!(f, "deleting virtual service {k}"),
            IpvsOp::AddServer(k, r) => write!(
                f,
                "adding real server {} (weight {}) to {k}",
                server(r),
                r.weight
            ),
            IpvsOp::UpdateServer(k, r) => write!(
                f,
                "setting the weight of real server {} of {k} to {}",
                server(r),
                r.weight
            ),
            IpvsOp::DeleteServer(k, r) => {
                write!(f, "deleting real server {} from {k}", server(r))
            }
        }
    }
}

impl IpvsOp {
    fn message(&self) -> IpvsMessage {
        let key = |k: &ServiceKey| IpvsAttribute::Service(k.attributes());
        let (command, attributes) = match self {
            IpvsOp::AddService(s) => (
                IpvsCommand::NewService,
                vec![IpvsAttribute::Service(s.full_attributes())],
            ),
            IpvsOp::UpdateService(s) => (
                IpvsCommand::SetService,
                vec![IpvsAttribute::Service(s.full_attributes())],
            ),
            IpvsOp::DeleteService(s) => (IpvsCommand::DelService, vec![key(s)]),
            IpvsOp::AddServer(s, r) => (
                IpvsCommand::NewDest,
                vec![key(s), IpvsAttribute::Dest(r.full_attributes())],
            ),
            IpvsOp::UpdateServer(s, r) => (
                IpvsCommand::SetDest,
                vec![key(s), IpvsAttribute::Dest(r.full_attributes())],
            ),
            IpvsOp::DeleteServer(s, r) => (
                IpvsCommand::DelDest,
                vec![key(s), IpvsAttribute::Dest(r.full_attributes())],
            ),
        };
        IpvsMessage {
            command,
            attributes,
        }
    }
}

/// IPVS's connection timeouts (`ipvsadm --set`); 0 leaves a value as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// Established TCP, seconds.
    pub tcp: u32,
    /// TCP after FIN, seconds.
    pub tcp_fin: u32,
    /// UDP, seconds.
    pub udp: u32,
}

/// What went wrong talking to IPVS.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    /// The kernel has no IPVS (the generic-netlink family is not registered).
    #[error(
        "the kernel has no IPVS (generic netlink family \"IPVS\" not found; is ip_vs loaded?)"
    )]
    NotAvailable,
    /// The kernel refused one operation.
    #[error("{operation}: {source}")]
    Refused {
        /// The operation, naming the service and server.
        operation: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The socket failed.
    #[error(transparent)]
    Socket(#[from] SocketError),
}

impl IpvsError {
    /// The kernel's errno, when it refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            IpvsError::Refused { source, .. } => source.raw_os_error(),
            IpvsError::Socket(e) => e.errno(),
            IpvsError::NotAvailable => None,
        }
    }
}

/// What a batch did.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Operations the kernel accepted.
    pub applied: usize,
    /// Operations the kernel refused, with the reason.
    pub failed: Vec<IpvsError>,
}

/// IPVS as the proxier sees it: the real kernel ([`IpvsClient`]) or, in tests, an in-memory one.
pub trait IpvsOps: Send + fmt::Debug {
    /// Applies `ops` in order; a refused operation does not stop the others.
    fn apply(&mut self, ops: &[IpvsOp]) -> Result<BatchOutcome, IpvsError>;
    /// Every virtual service (both families).
    fn list_services(&mut self) -> Result<Vec<ListedService>, IpvsError>;
    /// The real servers of `service`, with their connection counts.
    fn list_servers(&mut self, service: &VirtualService) -> Result<Vec<ListedServer>, IpvsError>;
    /// Deletes every virtual service.
    fn flush(&mut self) -> Result<(), IpvsError>;
    /// The connection timeouts.
    fn timeouts(&mut self) -> Result<Timeouts, IpvsError>;
    /// Sets the connection timeouts (0 keeps a value).
    fn set_timeouts(&mut self, t: Timeouts) -> Result<(), IpvsError>;
    /// How many netlink messages this client has sent (requests and dumps), for tests and
    /// benchmarks that check a sync sends only what the change needs.
    fn messages_sent(&self) -> u64;
}

/// `m` framed as a generic-netlink message of the family `family_id`.
fn framed(family_id: u16, m: IpvsMessage, flags: u16) -> NetlinkMessage<GenlMessage<IpvsMessage>> {
    let mut genl = GenlMessage::from_payload(m);
    genl.set_resolved_family_id(family_id);
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut nl = NetlinkMessage::new(header, genl.into());
    nl.finalize();
    nl
}

/// IPVS over generic netlink in the caller's network namespace.
#[derive(Debug)]
pub struct IpvsClient {
    socket: NetlinkSocket,
    family_id: u16,
    sent: u64,
}

impl IpvsClient {
    /// Opens a socket and resolves the IPVS family; [`IpvsError::NotAvailable`] when the kernel
    /// has no IPVS.
    pub fn open() -> Result<Self, IpvsError> {
        let mut socket = NetlinkSocket::open(NETLINK_GENERIC)?;
        let mut request = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(
                kproxy_netlink::ipvs::IPVS_GENL_NAME.to_owned(),
            )],
        });
        request.finalize();
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let answers = match socket.request(
            NetlinkMessage::new(header, request.into()),
            "resolving the IPVS generic netlink family",
        ) {
            Ok(a) => a,
            Err(e) if e.errno() == Some(nix::libc::ENOENT) => return Err(IpvsError::NotAvailable),
            Err(e) => return Err(e.into()),
        };
        let family_id = answers
            .iter()
            .flat_map(|m| m.payload.nlas.iter())
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or(IpvsError::NotAvailable)?;
        Ok(Self {
            socket,
            family_id,
            sent: 0,
        })
    }

    fn message(&self, m: IpvsMessage, flags: u16) -> NetlinkMessage<GenlMessage<IpvsMessage>> {
        framed(self.family_id, m, flags)
    }

    fn request(&mut self, m: IpvsMessage, operation: &str) -> Result<Vec<IpvsMessage>, IpvsError> {
        let mut answers = Vec::new();
        self.request_each(m, operation, |a| answers.push(a))?;
        Ok(answers)
    }

    /// As [`request`](Self::request), handing each answer over as it is read: a dump of 20,000
    /// services holds one receive buffer, not 20,000 parsed messages.
    fn request_each(
        &mut self,
        m: IpvsMessage,
        operation: &str,
        mut each: impl FnMut(IpvsMessage),
    ) -> Result<(), IpvsError> {
        let dump = m.command == IpvsCommand::GetService || m.command == IpvsCommand::GetDest;
        let flags = NLM_F_REQUEST | NLM_F_ACK | if dump { NLM_F_DUMP } else { 0 };
        let nl = self.message(m, flags);
        self.sent += 1;
        match self
            .socket
            .request_each(nl, operation, |g: GenlMessage<IpvsMessage>| each(g.payload))
        {
            Ok(()) => Ok(()),
            Err(SocketError::Io { source, .. }) => Err(IpvsError::Refused {
                operation: operation.to_owned(),
                source,
            }),
            Err(e) => Err(e.into()),
        }
    }
}

impl IpvsOps for IpvsClient {
    fn apply(&mut self, ops: &[IpvsOp]) -> Result<BatchOutcome, IpvsError> {
        let family_id = self.family_id;
        let messages = ops
            .iter()
            .map(|op| framed(family_id, op.message(), NLM_F_REQUEST | NLM_F_ACK));
        self.sent += ops.len() as u64;
        let results = self.socket.send_acked(messages, "IPVS batch")?;
        let mut outcome = BatchOutcome::default();
        for (op, result) in ops.iter().zip(results) {
            match result {
                None => outcome.applied += 1,
                Some(source) => outcome.failed.push(IpvsError::Refused {
                    operation: op.to_string(),
                    source,
                }),
            }
        }
        Ok(outcome)
    }

    fn list_services(&mut self) -> Result<Vec<ListedService>, IpvsError> {
        let mut out = Vec::new();
        self.request_each(
            IpvsMessage {
                command: IpvsCommand::GetService,
                attributes: vec![],
            },
            "listing IPVS virtual services",
            |m| {
                out.extend(m.attributes.iter().filter_map(|a| {
                    match a {
                        IpvsAttribute::Service(attrs) => VirtualService::from_attributes(attrs)
                            .map(|(service, _)| ListedService { service }),
                        _ => None,
                    }
                }))
            },
        )?;
        Ok(out)
    }

    fn list_servers(&mut self, service: &VirtualService) -> Result<Vec<ListedServer>, IpvsError> {
        let af = af_of(&service.address);
        let answers = self.request(
            IpvsMessage {
                command: IpvsCommand::GetDest,
                attributes: vec![IpvsAttribute::Service(service.key_attributes())],
            },
            &format!("listing the real servers of {}", ServiceKey::of(service)),
        )?;
        Ok(answers
            .iter()
            .flat_map(|m| m.attributes.iter())
            .filter_map(|a| match a {
                IpvsAttribute::Dest(attrs) => ListedServer::from_attributes(attrs, af),
                _ => None,
            })
            .collect())
    }

    fn flush(&mut self) -> Result<(), IpvsError> {
        self.request(
            IpvsMessage {
                command: IpvsCommand::Flush,
                attributes: vec![],
            },
            "flushing IPVS",
        )?;
        Ok(())
    }

    fn timeouts(&mut self) -> Result<Timeouts, IpvsError> {
        let answers = self.request(
            IpvsMessage {
                command: IpvsCommand::GetConfig,
                attributes: vec![],
            },
            "reading the IPVS timeouts",
        )?;
        let mut t = Timeouts::default();
        for a in answers.iter().flat_map(|m| m.attributes.iter()) {
            match a {
                IpvsAttribute::TimeoutTcp(v) => t.tcp = *v,
                IpvsAttribute::TimeoutTcpFin(v) => t.tcp_fin = *v,
                IpvsAttribute::TimeoutUdp(v) => t.udp = *v,
                _ => {}
            }
        }
        Ok(t)
    }

    fn set_timeouts(&mut self, t: Timeouts) -> Result<(), IpvsError> {
        self.request(
            IpvsMessage {
                command: IpvsCommand::SetConfig,
                attributes: vec![
                    IpvsAttribute::TimeoutTcp(t.tcp),
                    IpvsAttribute::TimeoutTcpFin(t.tcp_fin),
                    IpvsAttribute::TimeoutUdp(t.udp),
                ],
            },
            &format!(
                "setting the IPVS timeouts (tcp {}s, tcpfin {}s, udp {}s)",
                t.tcp, t.tcp_fin, t.udp
            ),
        )?;
        Ok(())
    }

    fn messages_sent(&self) -> u64 {
        self.sent
    }
}
