//! Pods inside the UML kernel: network namespaces `podN` with `10.244.1.N` (and
//! `fd00:244:1::N`) on a bridge `kbr0` (10.244.1.1), each answering TCP on 8080 and UDP on 5353
//! with its own name. Shared by every crate's UML tests (IPVS mode's proxier tests, the daemon's
//! handover tests), which run as root inside the kernel.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::process::Command;

use crate::sh;

/// The pods' TCP port.
pub const TCP_PORT: u16 = 8080;
/// The pods' UDP port.
pub const UDP_PORT: u16 = 5353;

/// Running pods; their namespaces, veths and the bridge are deleted on drop.
///
/// Bridge ports are in hairpin mode, as kubelet's hairpin-veth mode (and the bridge CNI
/// plugin's `hairpinMode`) sets them: a pod's own masqueraded traffic comes back through the
/// port it left by.
#[derive(Debug)]
pub struct Pods {
    names: Vec<String>,
}

impl Pods {
    /// Starts pods `10.244.1.N` for each N of `ns`.
    pub fn start(ns: &[u8]) -> Self {
        sh(
            "ip link add kbr0 type bridge 2>/dev/null; ip addr replace 10.244.1.1/24 dev kbr0; \
            ip -6 addr replace fd00:244:1::1/64 dev kbr0 nodad; ip link set kbr0 up",
        );
        let mut names = Vec::new();
        for n in ns {
            let name = format!("pod{n}");
            sh(&format!(
                "ip netns add {name} && ip link add v{name} type veth peer name eth0 netns {name} && \
                 ip link set v{name} master kbr0 up && \
                 ip link set v{name} type bridge_slave hairpin on && \
                 ip -n {name} addr add 10.244.1.{n}/24 dev eth0 && ip -n {name} link set eth0 up && \
                 ip -n {name} link set lo up && ip -n {name} route add default via 10.244.1.1 && \
                 ip -n {name} -6 addr add fd00:244:1::{n}/64 dev eth0 nodad && \
                 ip -n {name} -6 route add default via fd00:244:1::1"
            ));
            for ip in [format!("10.244.1.{n}"), format!("fd00:244:1::{n}")] {
                let ip: IpAddr = ip.parse().expect("pod address");
                let listener = in_netns(&name, move || {
                    TcpListener::bind(SocketAddr::new(ip, TCP_PORT)).expect("bind the pod's TCP")
                });
                let reply = name.clone();
                // Each connection gets the pod's name, then stays open until the client closes
                // it.
                std::thread::spawn(move || {
                    for mut s in listener.incoming().flatten() {
                        let reply = reply.clone();
                        std::thread::spawn(move || {
                            let _ = s.write_all(reply.as_bytes());
                            let mut sink = [0u8; 64];
                            while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
                        });
                    }
                });
                let socket = in_netns(&name, move || {
                    UdpSocket::bind(SocketAddr::new(ip, UDP_PORT)).expect("bind the pod's UDP")
                });
                let reply = name.clone();
                // Each datagram is answered with the pod's name.
                std::thread::spawn(move || {
                    let mut buf = [0u8; 512];
                    while let Ok((_, from)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(reply.as_bytes(), from);
                    }
                });
            }
            names.push(name);
        }
        Self { names }
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for n in &self.names {
            // The host end first: a socket still open in the pod keeps its namespace alive.
            let _ = Command::new("ip")
                .args(["link", "del", &format!("v{n}")])
                .status();
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        let _ = Command::new("ip").args(["link", "del", "kbr0"]).status();
    }
}

/// Runs `f` on a thread inside the network namespace `name` (sockets it opens stay in it).
pub fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).expect("open the namespace");
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("the namespace thread")
}
