//! The `kube-ipvs0` dummy link: every service address IPVS answers on is bound to it, so the
//! kernel treats packets to them as local and IPVS (on `LOCAL_IN`) sees them. Created if absent,
//! left down (as upstream does: a dummy link needs no carrier for its addresses to be local),
//! addresses added and removed by difference. Over rtnetlink, on a private current-thread
//! runtime so the blocking sync thread can use it.

use std::collections::BTreeSet;
use std::net::IpAddr;

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::{Handle, LinkDummy};

/// The link's name (upstream's).
pub const KUBE_IPVS0: &str = "kube-ipvs0";

/// How many rtnetlink requests are in flight at once when binding or unbinding many addresses.
const IN_FLIGHT: usize = 256;

/// What went wrong with the link.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {source}")]
pub struct LinkError {
    /// What was being done, naming the link and address.
    pub operation: String,
    /// The error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

fn err(operation: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let operation = operation.into();
    move |e| LinkError {
        operation,
        source: Box::new(e),
    }
}

/// The addresses on `kube-ipvs0`, managed over rtnetlink.
#[derive(Debug)]
pub struct DummyLink {
    runtime: tokio::runtime::Runtime,
    handle: Handle,
    name: String,
}

impl DummyLink {
    /// Opens an rtnetlink connection for the link `name` (not created yet).
    pub fn open(name: &str) -> Result<Self, LinkError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| LinkError {
                operation: "starting the rtnetlink runtime".into(),
                source: Box::new(e),
            })?;
        let handle = runtime.block_on(async {
            let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| LinkError {
                operation: "opening an rtnetlink socket".into(),
                source: Box::new(e),
            })?;
            tokio::spawn(connection);
            Ok::<_, LinkError>(handle)
        })?;
        Ok(Self {
            runtime,
            handle,
            name: name.to_owned(),
        })
    }

    /// The link's index, if it exists.
    pub fn index(&self) -> Result<Option<u32>, LinkError> {
        let handle = self.handle.clone();
        let name = self.name.clone();
        self.runtime.block_on(async move {
            let mut links = handle.link().get().match_name(name.clone()).execute();
            match links.try_next().await {
                Ok(Some(link)) => Ok(Some(link.header.index)),
                Ok(None) => Ok(None),
                // ENODEV: no such link.
                Err(rtnetlink::Error::NetlinkError(e))
                    if e.raw_code().abs() == nix::libc::ENODEV =>
                {
                    Ok(None)
                }
                Err(e) => Err(err(format!("looking up link {name}"))(e)),
            }
        })
    }

    /// Creates the dummy link unless it exists; returns its index.
    pub fn ensure(&self) -> Result<u32, LinkError> {
        if let Some(i) = self.index()? {
            return Ok(i);
        }
        let handle = self.handle.clone();
        let name = self.name.clone();
        self.runtime.block_on(async move {
            handle
                .link()
                .add(LinkDummy::new(&name).build())
                .execute()
                .await
                .map_err(err(format!("creating dummy link {name}")))
        })?;
        self.index()?.ok_or_else(|| LinkError {
            operation: format!("creating dummy link {}", self.name),
            source: "the link is missing right after its creation".into(),
        })
    }

    /// Deletes the link (and with it its addresses); nothing if it does not exist.
    pub fn delete(&self) -> Result<bool, LinkError> {
        let Some(index) = self.index()? else {
            return Ok(false);
        };
        let handle = self.handle.clone();
        let name = self.name.clone();
        self.runtime.block_on(async move {
            handle
                .link()
                .del(index)
                .execute()
                .await
                .map_err(err(format!("deleting link {name}")))
        })?;
        Ok(true)
    }

    /// The addresses on the link.
    pub fn addresses(&self, index: u32) -> Result<BTreeSet<IpAddr>, LinkError> {
        let handle = self.handle.clone();
        let name = self.name.clone();
        self.runtime.block_on(async move {
            let mut out = BTreeSet::new();
            let mut stream = handle
                .address()
                .get()
                .set_link_index_filter(index)
                .execute();
            while let Some(msg) = stream
                .try_next()
                .await
                .map_err(err(format!("listing the addresses of {name}")))?
            {
                if msg.header.index != index {
                    continue;
                }
                for a in &msg.attributes {
                    if let AddressAttribute::Address(ip) = a {
                        out.insert(*ip);
                    }
                }
            }
            Ok(out)
        })
    }

    /// Binds each address as a /32 (/128); an address already there is not an error. Returns the
    /// failures, each naming its address.
    pub fn bind(&self, index: u32, addresses: &[IpAddr]) -> Vec<LinkError> {
        self.each_address(addresses, move |handle, name, ip| async move {
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            match handle
                .address()
                .add(index, ip, prefix)
                .replace()
                .execute()
                .await
            {
                Ok(()) => None,
                Err(e) => Some(err(format!("binding {ip} to {name}"))(e)),
            }
        })
    }

    /// Removes each address; one that is not there is not an error.
    pub fn unbind(&self, index: u32, addresses: &[IpAddr]) -> Vec<LinkError> {
        self.each_address(addresses, move |handle, name, ip| async move {
            let mut msg = rtnetlink::packet_route::address::AddressMessage::default();
            msg.header.family = if ip.is_ipv4() {
                rtnetlink::packet_route::AddressFamily::Inet
            } else {
                rtnetlink::packet_route::AddressFamily::Inet6
            };
            msg.header.prefix_len = if ip.is_ipv4() { 32 } else { 128 };
            msg.header.index = index;
            msg.attributes.push(AddressAttribute::Local(ip));
            msg.attributes.push(AddressAttribute::Address(ip));
            match handle.address().del(msg).execute().await {
                Ok(()) => None,
                Err(rtnetlink::Error::NetlinkError(e))
                    if e.raw_code().abs() == nix::libc::EADDRNOTAVAIL =>
                {
                    None
                }
                Err(e) => Some(err(format!("removing {ip} from {name}"))(e)),
            }
        })
    }

    /// Runs `op` for every address with [`IN_FLIGHT`] requests outstanding at once, and returns
    /// the failures.
    fn each_address<F, Fut>(&self, addresses: &[IpAddr], op: F) -> Vec<LinkError>
    where
        F: Fn(Handle, String, IpAddr) -> Fut,
        Fut: std::future::Future<Output = Option<LinkError>>,
    {
        let addresses = addresses.to_vec();
        self.runtime.block_on(async {
            futures::stream::iter(
                addresses
                    .into_iter()
                    .map(|ip| op(self.handle.clone(), self.name.clone(), ip)),
            )
            .buffer_unordered(IN_FLIGHT)
            .filter_map(|r| async move { r })
            .collect()
            .await
        })
    }
}
