//! The client against the real kernel, in a fresh network namespace per test: every set type in
//! both families through create, add, test, list, del, swap, destroy; cross-checked against the
//! `ipset` CLI where it is installed; kernel errors; sync and atomic replace. Needs root.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

use common::{have_ipset_cli, Netns};
use ipset_tool::{
    replace_set, sync_set, Entry, EntryOptions, IpsetClient, IpsetError, PortProtocol, SetFamily,
    SetSpec, SetType,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Two sample entries of each type and family, and one that is not added.
fn samples(t: SetType, family: SetFamily) -> [Entry; 3] {
    let v6 = family == SetFamily::Inet6;
    let a = |n: u8| {
        if v6 {
            ip(&format!("fd00::{n}"))
        } else {
            ip(&format!("10.0.0.{n}"))
        }
    };
    let net = |n: u8| {
        if v6 {
            format!("fd00:{n}::/64").parse().unwrap()
        } else {
            format!("10.{n}.0.0/16").parse().unwrap()
        }
    };
    let tcp = PortProtocol::Tcp;
    let udp = PortProtocol::Udp;
    match t {
        SetType::HashIp => [Entry::Ip(a(1)), Entry::Ip(a(2)), Entry::Ip(a(3))],
        SetType::HashNet => [Entry::Net(net(1)), Entry::Net(net(2)), Entry::Net(net(3))],
        SetType::HashIpPort => [
            Entry::IpPort {
                ip: a(1),
                protocol: tcp,
                port: 80,
            },
            Entry::IpPort {
                ip: a(1),
                protocol: udp,
                port: 53,
            },
            Entry::IpPort {
                ip: a(2),
                protocol: tcp,
                port: 80,
            },
        ],
        SetType::HashIpPortIp => [
            Entry::IpPortIp {
                ip: a(1),
                protocol: tcp,
                port: 80,
                ip2: a(1),
            },
            Entry::IpPortIp {
                ip: a(2),
                protocol: udp,
                port: 53,
                ip2: a(2),
            },
            Entry::IpPortIp {
                ip: a(3),
                protocol: tcp,
                port: 80,
                ip2: a(3),
            },
        ],
        SetType::HashIpPortNet => [
            Entry::IpPortNet {
                ip: a(1),
                protocol: tcp,
                port: 80,
                net: net(7),
            },
            Entry::IpPortNet {
                ip: a(1),
                protocol: PortProtocol::Sctp,
                port: 9,
                net: net(8),
            },
            Entry::IpPortNet {
                ip: a(2),
                protocol: tcp,
                port: 80,
                net: net(7),
            },
        ],
        SetType::BitmapPort => [Entry::Port(30080), Entry::Port(30443), Entry::Port(31000)],
    }
}

fn spec(name: &str, t: SetType, family: SetFamily) -> SetSpec {
    if t == SetType::BitmapPort {
        SetSpec::bitmap_port(name, 30000, 32767)
    } else {
        SetSpec::new(name, t, family)
    }
}

fn members(client: &mut IpsetClient, name: &str) -> BTreeSet<Entry> {
    client
        .list(name)
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.entry)
        .collect()
}

/// `ipset save NAME`'s members, as the CLI prints them.
fn cli_members(ns: &Netns, name: &str) -> BTreeSet<String> {
    ns.exec(&["ipset", "save", name])
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("add {name} ")))
        .map(|s| s.to_owned())
        .collect()
}

#[test]
fn every_type_and_family_through_every_command() {
    let Some(ns) = Netns::new("everytype") else {
        return;
    };
    let cli = have_ipset_cli();
    let mut cases = Vec::new();
    for t in SetType::ALL {
        cases.push((t, SetFamily::Inet));
        if t.has_family() {
            cases.push((t, SetFamily::Inet6));
        }
    }
    for (t, family) in cases {
        let (a, b) = ("kp-a", "kp-b");
        let [e1, e2, e3] = samples(t, family);
        let mut c = ns.run(IpsetClient::open).unwrap();
        let what = format!("{t} {family}");
        c.create(&spec(a, t, family), false).unwrap();
        c.add(a, &e1, &EntryOptions::default(), false).unwrap();
        c.add(a, &e2, &EntryOptions::default(), false).unwrap();
        c.add(a, &e2, &EntryOptions::default(), true).unwrap(); // a repeat with exist_ok
        assert!(c.test(a, &e1).unwrap(), "{what}");
        assert!(!c.test(a, &e3).unwrap(), "{what}");
        let listed = c.list(a).unwrap();
        assert_eq!(listed.set_type, Some(t), "{what}");
        assert_eq!(listed.family, t.has_family().then_some(family), "{what}");
        assert_eq!(members(&mut c, a), BTreeSet::from([e1, e2]), "{what}");
        if cli {
            let expected: BTreeSet<String> = [e1, e2].iter().map(|e| e.to_string()).collect();
            assert_eq!(
                cli_members(&ns, a),
                expected,
                "{what}: the CLI sees what the client wrote"
            );
        }

        c.del(a, &e1, false).unwrap();
        c.del(a, &e1, true).unwrap(); // a repeat with missing_ok
        assert!(!c.test(a, &e1).unwrap(), "{what}");

        c.create(&spec(b, t, family), false).unwrap();
        c.add(b, &e3, &EntryOptions::default(), false).unwrap();
        c.swap(a, b).unwrap();
        assert_eq!(members(&mut c, a), BTreeSet::from([e3]), "{what}");
        assert_eq!(members(&mut c, b), BTreeSet::from([e2]), "{what}");
        c.flush(b).unwrap();
        assert!(members(&mut c, b).is_empty(), "{what}");

        c.rename(b, "kp-c").unwrap();
        assert!(
            c.list_names().unwrap().contains(&"kp-c".to_owned()),
            "{what}"
        );
        c.destroy(a, false).unwrap();
        c.destroy("kp-c", false).unwrap();
        assert!(c.list_names().unwrap().is_empty(), "{what}");
    }
}

#[test]
fn a_set_the_cli_made_reads_back() {
    let Some(ns) = Netns::new("climade") else {
        return;
    };
    if !have_ipset_cli() {
        eprintln!("skipping: no ipset CLI");
        return;
    }
    for cmd in [
        "create web hash:ip,port family inet6 comment timeout 600 hashsize 2048 maxelem 1000",
        "add web fd00::10,tcp:443 comment front",
        "add web fd00::11,udp:53 timeout 0",
        "create ports bitmap:port range 30000-30100",
        "add ports 30080",
    ] {
        let mut args = vec!["ipset"];
        args.extend(cmd.split(' '));
        ns.exec(&args).unwrap();
    }
    let mut c = ns.run(IpsetClient::open).unwrap();
    let web = c.list("web").unwrap();
    assert_eq!(web.set_type, Some(SetType::HashIpPort));
    assert_eq!(web.family, Some(SetFamily::Inet6));
    assert_eq!((web.hashsize, web.maxelem), (Some(2048), Some(1000)));
    assert_eq!(web.timeout, Some(600));
    assert!(web.comment);
    let front = web
        .entries
        .iter()
        .find(|e| e.entry.to_string() == "fd00::10,tcp:443")
        .expect("the commented entry");
    assert_eq!(front.comment.as_deref(), Some("front"));
    assert!(front.timeout.is_some_and(|t| t <= 600));
    assert_eq!(web.entries.len(), 2);
    let ports = c.list("ports").unwrap();
    assert_eq!(ports.port_range, Some((30000, 30100)));
    assert_eq!(ports.entries[0].entry, Entry::Port(30080));
    // The client writes into the CLI's set with both extensions; the CLI sees them.
    let api = Entry::IpPort {
        ip: ip("fd00::12"),
        protocol: PortProtocol::Tcp,
        port: 6443,
    };
    let options = EntryOptions {
        comment: Some("api".into()),
        timeout: Some(120),
    };
    c.add("web", &api, &options, false).unwrap();
    let saved = ns.exec(&["ipset", "save", "web"]).unwrap();
    let line = saved
        .lines()
        .find(|l| l.contains("fd00::12,tcp:6443"))
        .expect(&saved);
    assert!(
        line.contains("comment \"api\"") && line.contains("timeout 1"),
        "{line}"
    );
    let mut all: Vec<String> = c.list_all().unwrap().into_iter().map(|s| s.name).collect();
    all.sort();
    assert_eq!(all, ["ports", "web"]);
}

#[test]
fn bad_input_is_a_clear_error_and_changes_nothing() {
    let Some(ns) = Netns::new("badinput") else {
        return;
    };
    let mut c = ns.run(IpsetClient::open).unwrap();
    let s = spec("kp-frontends", SetType::HashIpPort, SetFamily::Inet);
    c.create(&s, false).unwrap();
    let good = Entry::IpPort {
        ip: ip("10.0.0.1"),
        protocol: PortProtocol::Tcp,
        port: 80,
    };
    c.add("kp-frontends", &good, &EntryOptions::default(), false)
        .unwrap();
    let before = c.list("kp-frontends").unwrap();

    // The wrong shape, the wrong family: refused before anything is sent.
    let err = c
        .add(
            "kp-frontends",
            &Entry::Ip(ip("10.0.0.2")),
            &EntryOptions::default(),
            true,
        )
        .unwrap_err();
    assert!(matches!(err, IpsetError::EntryDoesNotFit { .. }), "{err}");
    assert!(
        err.to_string().contains("kp-frontends") && err.to_string().contains("10.0.0.2"),
        "{err}"
    );
    let v6 = Entry::IpPort {
        ip: ip("fd00::1"),
        protocol: PortProtocol::Tcp,
        port: 80,
    };
    let err = c.add_many("kp-frontends", [&good, &v6], true).unwrap_err();
    assert!(err.to_string().contains("not an inet address"), "{err}");
    // A name over 31 bytes.
    let long = "x".repeat(32);
    let err = c
        .create(&spec(&long, SetType::HashIp, SetFamily::Inet), false)
        .unwrap_err();
    assert!(matches!(err, IpsetError::BadName { .. }), "{err}");
    // A missing set.
    let err = c
        .add("kp-nonesuch", &good, &EntryOptions::default(), true)
        .unwrap_err();
    assert!(matches!(err, IpsetError::SetMissing { .. }), "{err}");
    assert!(err.to_string().contains("kp-nonesuch"), "{err}");
    let err = c.destroy("kp-nonesuch", false).unwrap_err();
    assert!(matches!(err, IpsetError::SetMissing { .. }), "{err}");
    // Duplicates and absentees without tolerance.
    let err = c
        .add("kp-frontends", &good, &EntryOptions::default(), false)
        .unwrap_err();
    assert!(matches!(err, IpsetError::EntryExists { .. }), "{err}");
    let absent = Entry::IpPort {
        ip: ip("10.0.0.9"),
        protocol: PortProtocol::Udp,
        port: 53,
    };
    let err = c.del("kp-frontends", &absent, false).unwrap_err();
    assert!(matches!(err, IpsetError::EntryMissing { .. }), "{err}");
    assert!(err.to_string().contains("10.0.0.9,udp:53"), "{err}");
    // A bitmap entry out of range, and a set that exists already.
    c.create(&SetSpec::bitmap_port("kp-np", 30000, 30100), false)
        .unwrap();
    let err = c
        .add("kp-np", &Entry::Port(80), &EntryOptions::default(), true)
        .unwrap_err();
    assert!(err.to_string().contains("outside"), "{err}");
    let err = c
        .create(&SetSpec::bitmap_port("kp-np", 30000, 30100), false)
        .unwrap_err();
    assert!(matches!(err, IpsetError::SetExists { .. }), "{err}");
    // Sets of different types cannot be swapped.
    let err = c.swap("kp-frontends", "kp-np").unwrap_err();
    assert!(matches!(err, IpsetError::TypeMismatch { .. }), "{err}");

    assert_eq!(c.list("kp-frontends").unwrap(), before, "nothing changed");
}

#[test]
fn a_set_used_by_a_rule_cannot_be_destroyed() {
    let Some(ns) = Netns::new("inuse") else {
        return;
    };
    let mut c = ns.run(IpsetClient::open).unwrap();
    c.create(&spec("kp-used", SetType::HashIp, SetFamily::Inet), false)
        .unwrap();
    let rule = [
        "-t",
        "filter",
        "-A",
        "INPUT",
        "-m",
        "set",
        "--match-set",
        "kp-used",
        "src",
        "-j",
        "ACCEPT",
    ];
    let mut args = vec!["iptables-legacy"];
    args.extend(rule);
    if let Err(e) = ns.exec(&args) {
        eprintln!("skipping: cannot add an iptables set rule here: {e}");
        return;
    }
    let err = c.destroy("kp-used", false).unwrap_err();
    assert!(matches!(err, IpsetError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("kp-used"), "{err}");
}

#[test]
fn sync_applies_the_difference_and_replace_swaps_atomically() {
    let Some(ns) = Netns::new("syncset") else {
        return;
    };
    let mut c = ns.run(IpsetClient::open).unwrap();
    let s = spec("kp-sync", SetType::HashIpPort, SetFamily::Inet);
    let entry = |i: u32| Entry::IpPort {
        ip: IpAddr::from([10, 1, (i >> 8) as u8, i as u8]),
        protocol: PortProtocol::Tcp,
        port: 80,
    };
    let first: HashSet<Entry> = (0..2000).map(entry).collect();
    let diff = sync_set(&mut c, &s, &first).unwrap();
    assert_eq!((diff.add.len(), diff.del.len()), (2000, 0));
    assert_eq!(members(&mut c, "kp-sync").len(), 2000);

    let mut second = first.clone();
    second.remove(&entry(7));
    second.insert(entry(5000));
    let diff = sync_set(&mut c, &s, &second).unwrap();
    assert_eq!(diff.add, vec![entry(5000)]);
    assert_eq!(diff.del, vec![entry(7)]);
    assert_eq!(members(&mut c, "kp-sync"), second.iter().copied().collect());
    assert!(
        sync_set(&mut c, &s, &second).unwrap().is_empty(),
        "nothing left to do"
    );

    let third: HashSet<Entry> = (100..150).map(entry).collect();
    replace_set(&mut c, &s, &third).unwrap();
    assert_eq!(members(&mut c, "kp-sync"), third.iter().copied().collect());
    assert_eq!(
        c.list_names().unwrap(),
        ["kp-sync"],
        "the temporary set is gone"
    );
}

#[test]
fn a_full_set_names_the_entry_that_did_not_fit() {
    let Some(ns) = Netns::new("fullset") else {
        return;
    };
    let mut c = ns.run(IpsetClient::open).unwrap();
    let mut s = spec("kp-small", SetType::HashIp, SetFamily::Inet);
    s.maxelem = Some(8);
    c.create(&s, false).unwrap();
    let entries: Vec<Entry> = (1..=12)
        .map(|i| Entry::Ip(IpAddr::from([10, 9, 0, i])))
        .collect();
    let err = c.add_many("kp-small", &entries, true).unwrap_err();
    assert!(matches!(err, IpsetError::SetFull { .. }), "{err}");
    assert!(
        err.to_string().contains("10.9.0.9"),
        "the ninth entry is named: {err}"
    );
    assert_eq!(
        members(&mut c, "kp-small").len(),
        8,
        "the ones that fit are in"
    );
}
