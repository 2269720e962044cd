//! ctnetlink against the kernel, in a throw-away network namespace: entries created over netlink
//! are listed back, a UDP dump is filtered by the kernel (no TCP entry arrives), and a delete by
//! tuple removes exactly one entry. Needs root; skips elsewhere.

use std::process::Command;

use kproxy_netlink::{ConntrackOps, FlowFilter, NetlinkConntrack};
use proxy_core::datapath::Flow;
use proxy_core::IpFamily;

/// Runs `f` on a thread inside a new network namespace (deleted afterwards); `None` without root.
fn in_new_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let added = Command::new("ip").args(["netns", "add", name]).output();
    if !added.is_ok_and(|o| o.status.success()) {
        eprintln!("skipping: cannot create a network namespace (not root?)");
        return None;
    }
    let path = format!("/run/netns/{name}");
    let result = std::thread::spawn(move || {
        let ns = std::fs::File::open(path).unwrap();
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join();
    let _ = Command::new("ip").args(["netns", "del", name]).status();
    Some(result.expect("test thread"))
}

fn flow(protocol: u8, i: u16, reply_port: u16) -> Flow {
    Flow {
        protocol,
        orig_src: format!("10.244.1.{}:{}", 1 + i % 200, 20000 + i)
            .parse()
            .unwrap(),
        orig_dst: "172.30.0.10:53".parse().unwrap(),
        reply_src: format!("10.244.2.10:{reply_port}").parse().unwrap(),
        zone: 0,
    }
}

#[test]
fn udp_dump_is_filtered_by_the_kernel_and_delete_removes_one_entry() {
    let name = format!("kpct{}", std::process::id());
    let Some(()) = in_new_netns(&name, || {
        let mut ct = NetlinkConntrack::open().unwrap();
        let udp: Vec<Flow> = (0..20).map(|i| flow(17, i, 5353)).collect();
        for i in 0..50 {
            ct.create(&flow(6, i, 8080), 120).unwrap();
        }
        for f in &udp {
            ct.create(f, 120).unwrap();
        }
        let all = ct
            .flows(FlowFilter {
                family: IpFamily::V4,
                protocol: None,
            })
            .unwrap();
        assert_eq!(all.len(), 70, "every entry created is listed");

        // Count what the kernel sends, before our own protocol check, through the raw dump.
        let mut sent = 0;
        let mut socket =
            kproxy_netlink::socket::NetlinkSocket::open(netlink_sys::protocols::NETLINK_NETFILTER)
                .unwrap();
        socket
            .request_each(
                kproxy_netlink::conntrack::filtered_dump_request(FlowFilter::udp(IpFamily::V4)),
                "dump",
                |_| sent += 1,
            )
            .unwrap();
        assert_eq!(sent, 20, "the kernel filtered the dump to UDP");

        let mut got = ct.flows(FlowFilter::udp(IpFamily::V4)).unwrap();
        got.sort_by_key(|f| f.orig_src);
        let mut want = udp.clone();
        want.sort_by_key(|f| f.orig_src);
        assert_eq!(got, want);

        assert!(ct.delete(&udp[3]).unwrap());
        assert!(!ct.delete(&udp[3]).unwrap(), "already gone");
        assert_eq!(ct.flows(FlowFilter::udp(IpFamily::V4)).unwrap().len(), 19);
    }) else {
        return;
    };
}
