//! ipset at 20,000 members: the netlink client against `ipset restore`, in a throw-away network
//! namespace. Needs root and the `ipset` CLI (for the comparison); says so and does nothing
//! otherwise.
//!
//! Run: `cargo bench -p kproxy-benches --bench ipset`.

use std::collections::HashSet;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use ipset_tool::{
    sync_set, Entry, EntryOptions, IpsetClient, PortProtocol, SetFamily, SetSpec, SetType,
};

const MEMBERS: u32 = 20_000;
const NETNS: &str = "kproxy-bench-ipset";

fn entry(i: u32) -> Entry {
    Entry::IpPort {
        ip: IpAddr::from([10, 96, (i >> 8) as u8, i as u8]),
        protocol: if i.is_multiple_of(2) {
            PortProtocol::Tcp
        } else {
            PortProtocol::Udp
        },
        port: 80 + (i % 7) as u16,
    }
}

fn spec() -> SetSpec {
    let mut s = SetSpec::new("KP-BENCH", SetType::HashIpPort, SetFamily::Inet);
    s.maxelem = Some(262_144);
    s
}

/// Moves this process into a fresh namespace; false (saying why) when that cannot be done.
fn enter_netns() -> bool {
    let _ = Command::new("ip").args(["netns", "del", NETNS]).status();
    let ok = Command::new("ip")
        .args(["netns", "add", NETNS])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("ipset bench skipped: cannot create a network namespace (not root?)");
        return false;
    }
    let file = std::fs::File::open(format!("/run/netns/{NETNS}")).expect("netns file");
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    true
}

/// `ipset restore` with `text` on stdin, in this process's namespace.
fn ipset_restore(text: &str) {
    let mut child = Command::new("ipset")
        .arg("restore")
        .stdin(Stdio::piped())
        .spawn()
        .expect("ipset restore");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

fn destroy(client: &mut IpsetClient) {
    client.destroy("KP-BENCH", true).unwrap();
}

fn ipset(c: &mut Criterion) {
    if !enter_netns() {
        return;
    }
    let have_cli = Command::new("ipset").arg("--version").output().is_ok();
    let mut client = IpsetClient::open().expect("ipset client");
    // A second client empties the namespace between iterations.
    let mut cleaner = IpsetClient::open().expect("ipset client");
    let desired: HashSet<Entry> = (0..MEMBERS).map(entry).collect();
    let restore_text = |create: &str| {
        let mut t = format!("{create}\n");
        for e in &desired {
            t.push_str(&format!("add KP-BENCH {e}\n"));
        }
        t
    };
    let plain = restore_text("create KP-BENCH hash:ip,port family inet maxelem 262144");
    // The CLI given the same initial size the client picks (no rehashing on the way).
    let presized =
        restore_text("create KP-BENCH hash:ip,port family inet maxelem 262144 hashsize 32768");

    let mut group = c.benchmark_group("ipset_fill_20000");
    group.sample_size(10);
    group.bench_function("client_sync_set", |b| {
        b.iter_batched(
            || destroy(&mut cleaner),
            |()| sync_set(&mut client, &spec(), &desired).unwrap(),
            BatchSize::PerIteration,
        )
    });
    if have_cli {
        for (name, text) in [
            ("ipset_restore", &plain),
            ("ipset_restore_presized", &presized),
        ] {
            group.bench_function(name, |b| {
                b.iter_batched(
                    || destroy(&mut cleaner),
                    |()| ipset_restore(text),
                    BatchSize::PerIteration,
                )
            });
        }
    }
    group.finish();

    // One member out, one in, on a full set.
    destroy(&mut client);
    sync_set(&mut client, &spec(), &desired).unwrap();
    let (out, new) = (entry(7), entry(MEMBERS + 1));
    let mut swapped = desired.clone();
    swapped.remove(&out);
    swapped.insert(new);
    let mut group = c.benchmark_group("ipset_one_member_change_at_20000");
    group.sample_size(20);
    let mut flip = false;
    group.bench_function("client_sync_set", |b| {
        b.iter(|| {
            flip = !flip;
            let target = if flip { &swapped } else { &desired };
            let diff = sync_set(&mut client, &spec(), target).unwrap();
            assert_eq!(diff.add.len() + diff.del.len(), 2);
        })
    });
    group.bench_function("client_del_add", |b| {
        b.iter(|| {
            flip = !flip;
            let (del, add) = if flip { (&out, &new) } else { (&new, &out) };
            client.del("KP-BENCH", del, true).unwrap();
            client
                .add("KP-BENCH", add, &EntryOptions::default(), true)
                .unwrap();
        })
    });
    if have_cli {
        group.bench_function("ipset_restore_del_add", |b| {
            b.iter(|| {
                flip = !flip;
                let (del, add) = if flip { (&out, &new) } else { (&new, &out) };
                ipset_restore(&format!(
                    "del -exist KP-BENCH {del}\nadd -exist KP-BENCH {add}\n"
                ));
            })
        });
    }
    group.finish();
    destroy(&mut client);
    let _ = Command::new("ip").args(["netns", "del", NETNS]).status();
}

criterion_group!(benches, ipset);
criterion_main!(benches);
