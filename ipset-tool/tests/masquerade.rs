//! A set on the real datapath: an iptables rule `-m set --match-set S dst,dst -j MASQUERADE` on a
//! router between a client and a server namespace masquerades the client's connection while the
//! server's `ip,port` is in the set, and stops when the entry is removed. Needs root, iptables and
//! xt_set; skips, saying why, elsewhere.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::{sh, Netns};
use ipset_tool::{Entry, EntryOptions, IpsetClient, PortProtocol, SetFamily, SetSpec, SetType};

/// Client 10.71.1.2 — router (10.71.1.1, 10.71.2.1) — server 10.71.2.2:8080, which answers
/// each connection with the address it came from.
struct Bed {
    client: Netns,
    router: Netns,
    server: Netns,
}

fn link(a: &Netns, a_ip: &str, b: &Netns, b_ip: &str, tag: &str) -> Result<(), String> {
    let (va, vb) = (
        format!("kpa{tag}{}", std::process::id() % 10000),
        format!("kpb{tag}{}", std::process::id() % 10000),
    );
    sh(&[
        "ip", "link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb, "netns",
        &b.name,
    ])?;
    a.exec(&["ip", "addr", "add", a_ip, "dev", &va])?;
    b.exec(&["ip", "addr", "add", b_ip, "dev", &vb])?;
    a.exec(&["ip", "link", "set", &va, "up"])?;
    b.exec(&["ip", "link", "set", &vb, "up"])?;
    Ok(())
}

impl Bed {
    fn new() -> Option<Self> {
        let bed = Self {
            client: Netns::new("mqclient")?,
            router: Netns::new("mqrouter")?,
            server: Netns::new("mqserver")?,
        };
        let setup = || -> Result<(), String> {
            link(
                &bed.client,
                "10.71.1.2/24",
                &bed.router,
                "10.71.1.1/24",
                "c",
            )?;
            link(
                &bed.router,
                "10.71.2.1/24",
                &bed.server,
                "10.71.2.2/24",
                "s",
            )?;
            bed.client
                .exec(&["ip", "route", "add", "default", "via", "10.71.1.1"])?;
            bed.server
                .exec(&["ip", "route", "add", "default", "via", "10.71.2.1"])?;
            bed.router
                .exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            Ok(())
        };
        if let Err(e) = setup() {
            eprintln!("skipping masquerade test: {e}");
            return None;
        }
        Some(bed)
    }

    /// Connects from the client to the server; the address the server saw.
    fn peer_seen(&self) -> String {
        self.client.run(|| {
            let mut s = TcpStream::connect_timeout(
                &"10.71.2.2:8080".parse().unwrap(),
                Duration::from_secs(10),
            )
            .expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            text
        })
    }
}

#[test]
fn a_match_set_rule_masquerades_while_the_entry_is_present() {
    let Some(bed) = Bed::new() else { return };
    // The server: answers every connection with its peer's address, until the test ends.
    let listener = bed
        .server
        .run(|| TcpListener::bind("10.71.2.2:8080").expect("bind"));
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let peer = conn
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let _ = conn.write_all(peer.as_bytes());
        }
    });

    let mut c = bed.router.run(IpsetClient::open).unwrap();
    c.create(
        &SetSpec::new("KP-MASQ", SetType::HashIpPort, SetFamily::Inet),
        false,
    )
    .unwrap();
    let server = Entry::IpPort {
        ip: "10.71.2.2".parse().unwrap(),
        protocol: PortProtocol::Tcp,
        port: 8080,
    };
    for variant in ["iptables-legacy", "iptables-nft"] {
        let rule = |op: &'static str| {
            [
                variant,
                "-t",
                "nat",
                op,
                "POSTROUTING",
                "-m",
                "set",
                "--match-set",
                "KP-MASQ",
                "dst,dst",
                "-j",
                "MASQUERADE",
            ]
        };
        if let Err(e) = bed.router.exec(&rule("-A")) {
            eprintln!("skipping {variant}: cannot add a match-set rule here: {e}");
            continue;
        }
        assert_eq!(
            bed.peer_seen(),
            "10.71.1.2",
            "{variant}, no entry: the client's own address"
        );
        c.add("KP-MASQ", &server, &EntryOptions::default(), false)
            .unwrap();
        assert_eq!(
            bed.peer_seen(),
            "10.71.2.1",
            "{variant}, the entry is in: masqueraded"
        );
        c.del("KP-MASQ", &server, false).unwrap();
        assert_eq!(
            bed.peer_seen(),
            "10.71.1.2",
            "{variant}, the entry is gone: not masqueraded"
        );
        bed.router.exec(&rule("-D")).unwrap();
    }
}
