//! This machine's interface addresses, read fresh: one implementation for every mode
//! (`nodePortAddresses`, the node's addresses for NodePort virtual services, telling which
//! conntrack entries were redirected to a local socket).

use std::net::IpAddr;

/// Every address on this machine's interfaces (both families, loopback included), read from the
/// kernel at each call (glibc's `getifaddrs`, which asks rtnetlink).
pub fn interface_addresses() -> nix::Result<Vec<IpAddr>> {
    interface_addresses_except(&[])
}

/// The same, without the addresses of the interfaces named in `skip` (IPVS mode's `kube-ipvs0`,
/// which holds every cluster IP and is not a way into the node), each address once.
pub fn interface_addresses_except(skip: &[&str]) -> nix::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        if skip.contains(&ifa.interface_name.as_str()) {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            out.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            out.push(IpAddr::V6(v6.ip()));
        } else {
            continue;
        }
        if out[..out.len() - 1].contains(out.last().expect("just pushed")) {
            out.pop();
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_is_listed() {
        let addrs = super::interface_addresses().unwrap();
        assert!(addrs.iter().any(|a| a.is_loopback()), "{addrs:?}");
    }
}
