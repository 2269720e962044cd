//! Byte-exact checks of the IPVS messages against `ipvsadm` v1.31 and the kernel, both directions.
//!
//! The hex strings are the generic-netlink payloads (genl header and attributes, after the 16-byte
//! netlink header) that `ipvsadm` sent and the 6.1 kernel answered, captured with `strace -xx`
//! inside the user-mode-linux kernel the IPVS tests boot (see docs/ipvs.md). Each request is
//! built with kproxy's types and must equal the capture; each capture must parse back to the
//! same message.

use kproxy_netlink::ipvs::*;
use netlink_packet_core::{Emitable, ParseableParametrized};
use netlink_packet_generic::GenlHeader;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn encode(m: &IpvsMessage) -> Vec<u8> {
    let mut out = vec![0; 4 + m.buffer_len()];
    GenlHeader {
        cmd: m.command.into(),
        version: IPVS_GENL_VERSION,
    }
    .emit(&mut out);
    m.emit(&mut out[4..]);
    out
}

fn decode(b: &[u8]) -> IpvsMessage {
    let header = GenlHeader::parse(b).unwrap();
    assert_eq!(header.version, IPVS_GENL_VERSION);
    IpvsMessage::parse_with_param(&b[4..], header).unwrap()
}

/// Builds `m`, compares it with the capture, and parses the capture back into `m`.
fn both_ways(m: IpvsMessage, captured: &str) {
    let want = hex(captured);
    assert_eq!(encode(&m), want, "emitted bytes differ from ipvsadm's");
    assert_eq!(decode(&want), m, "the capture parses to something else");
}

fn svc(
    addr: &str,
    protocol: u16,
    port: u16,
    scheduler: &str,
    flags: u32,
    timeout: u32,
) -> VirtualService {
    VirtualService {
        address: addr.parse().unwrap(),
        protocol,
        port,
        scheduler: scheduler.into(),
        flags,
        timeout,
    }
}

fn server(addr: &str, port: u16, weight: u32) -> RealServer {
    RealServer {
        address: addr.parse().unwrap(),
        port,
        weight,
        forward: FWD_MASQ,
    }
}

/// ipvsadm names the service of a server command with every attribute, its scheduler empty.
fn svc_as_ipvsadm_names_it(s: &VirtualService) -> Vec<ServiceAttribute> {
    let mut v = s.clone();
    v.scheduler = String::new();
    v.full_attributes()
}

const ADD_SVC: &str = "010100005400018006000100020000000600020006000000140003000a60000a000000000000000000000000060004000035000007000600727200000c00070000000000ffffffff080008000000000008000900ffffffff";
const ADD_SVC_PERSIST_UDP_WRR: &str = "010100005400018006000100020000000600020011000000140003000a60000a000000000000000000000000060004000035000008000600777272000c00070001000000ffffffff08000800302a000008000900ffffffff";
const ADD_SVC6_SH: &str = "0101000054000180060001000a000000060002000600000014000300fd000000000000000000000000000010060004000050000007000600736800000c00070000000000ffffffff08000800000000000800090080000000";
const ADD_DEST: &str = "050100005400018006000100020000000600020006000000140003000a60000a000000000000000000000000060004000035000005000600000000000c00070000000000ffffffff080008000000000008000900ffffffff6000028006000b0002000000140001000af40105000000000000000000000000060002001f7500000800030000000000080004000100000005000d000000000006000e000000000006000f000000000008000500000000000800060000000000";
const EDIT_DEST_WEIGHT0: &str = "060100005400018006000100020000000600020006000000140003000a60000a000000000000000000000000060004000035000005000600000000000c00070000000000ffffffff080008000000000008000900ffffffff6000028006000b0002000000140001000af40105000000000000000000000000060002001f7500000800030000000000080004000000000005000d000000000006000e000000000006000f000000000008000500000000000800060000000000";
const ADD_DEST6: &str = "0501000054000180060001000a000000060002000600000014000300fd000000000000000000000000000010060004000050000005000600000000000c00070000000000ffffffff080008000000000008000900800000006000028006000b000a00000014000100fd000010024400000000000000000005060002001f9000000800030000000000080004000100000005000d000000000006000e000000000006000f000000000008000500000000000800060000000000";
const DEL_DEST: &str = "070100005400018006000100020000000600020006000000140003000a60000a000000000000000000000000060004000035000005000600000000000c00070000000000ffffffff080008000000000008000900ffffffff6000028006000b0002000000140001000af40105000000000000000000000000060002001f7500000800030003000000080004000100000005000d000000000006000e000000000006000f000000000008000500000000000800060000000000";
const DEL_SVC: &str = "030100005400018006000100020000000600020006000000140003000a60000a000000000000000000000000060004000035000005000600000000000c00070000000000ffffffff080008000000000008000900ffffffff";
const FLUSH: &str = "11010000";
const SET_TIMEOUTS: &str = "0c01000008000400840300000800050078000000080006002c010000";
const GET_CONFIG: &str = "0d010000";
const GET_CONFIG_ANSWER: &str = "0c01000008000400840300000800050078000000080006002c010000";
const GET_INFO: &str = "0f010000";
const GET_INFO_ANSWER: &str = "0e01000008000100010201000800020000100000";
const DUMP_SERVICES: &str = "04010000";
const LISTED_SVC6: &str = "0101000054010100060001000a000000060002000600000014000300fd000000000000000000000000000010060004000050000007000600736800000c00070002000000ffffffff0800080000000000080009008000000060000a000800010000000000080002000000000008000300000000000c000400000000000000000004000b000c0005000000000000000000080006000000000008000700000000000800080000000000080009000000000008000a0000000000a0000c000c000100000000000000000004000b000c000200000000000000000004000b000c000300000000000000000004000b000c000400000000000000000004000b000c000500000000000000000004000b000c000600000000000000000004000b000c000700000000000000000004000b000c000800000000000000000004000b000c000900000000000000000004000b000c000a000000000000000000";
const LISTED_UDP_PERSIST: &str = "010100005401010006000100020000000600020011000000140003000a60000a000000000000000000000000060004000035000008000600777272000c00070003000000ffffffff08000800302a000008000900ffffffff60000a000800010000000000080002000000000008000300000000000c000400000000000000000004000b000c0005000000000000000000080006000000000008000700000000000800080000000000080009000000000008000a0000000000a0000c000c000100000000000000000004000b000c000200000000000000000004000b000c000300000000000000000004000b000c000400000000000000000004000b000c000500000000000000000004000b000c000600000000000000000004000b000c000700000000000000000004000b000c000800000000000000000004000b000c000900000000000000000004000b000c000a000000000000000000";
const LISTED_TCP: &str = "010100005401010006000100020000000600020006000000140003000a60000a000000000000000000000000060004000035000007000600727200000c00070002000000ffffffff080008000000000008000900ffffffff60000a000800010000000000080002000000000008000300000000000c000400000000000000000004000b000c0005000000000000000000080006000000000008000700000000000800080000000000080009000000000008000a0000000000a0000c000c000100000000000000000004000b000c000200000000000000000004000b000c000300000000000000000004000b000c000400000000000000000004000b000c000500000000000000000004000b000c000600000000000000000004000b000c000700000000000000000004000b000c000800000000000000000004000b000c000900000000000000000004000b000c000a000000000000000000";
const DUMP_DESTS: &str = "080100003000018006000100020000000600020006000000140003000a60000a0000000000000000000000000600040000350000";
const LISTED_DEST: &str = "050100007c010200140001000af40105000000000000000000000000060002001f7500000800030000000000080004000000000005000d000000000006000e000000000006000f00000000000800050000000000080006000000000008000700000000000800080000000000080009000000000006000b000200000064000a0008000100000000000800020000000000080003000000000004000b000c000400000000000000000004000b000c0005000000000000000000080006000000000008000700000000000800080000000000080009000000000008000a0000000000a0000c000c000100000000000000000004000b000c000200000000000000000004000b000c000300000000000000000004000b000c000400000000000000000004000b000c000500000000000000000004000b000c000600000000000000000004000b000c000700000000000000000004000b000c000800000000000000000004000b000c000900000000000000000004000b000c000a000000000000000000";

#[test]
fn add_service_tcp_rr() {
    let s = svc("10.96.0.10", 6, 53, "rr", 0, 0);
    both_ways(
        IpvsMessage {
            command: IpvsCommand::NewService,
            attributes: vec![IpvsAttribute::Service(s.full_attributes())],
        },
        ADD_SVC,
    );
}

#[test]
fn add_service_udp_persistent_wrr() {
    let s = svc("10.96.0.10", 17, 53, "wrr", SVC_F_PERSISTENT, 10800);
    both_ways(
        IpvsMessage {
            command: IpvsCommand::NewService,
            attributes: vec![IpvsAttribute::Service(s.full_attributes())],
        },
        ADD_SVC_PERSIST_UDP_WRR,
    );
}

#[test]
fn add_service_ipv6_sh() {
    let s = svc("fd00::10", 6, 80, "sh", 0, 0);
    both_ways(
        IpvsMessage {
            command: IpvsCommand::NewService,
            attributes: vec![IpvsAttribute::Service(s.full_attributes())],
        },
        ADD_SVC6_SH,
    );
}

#[test]
fn real_server_add_edit_delete() {
    let s = svc("10.96.0.10", 6, 53, "rr", 0, 0);
    let service = || IpvsAttribute::Service(svc_as_ipvsadm_names_it(&s));
    both_ways(
        IpvsMessage {
            command: IpvsCommand::NewDest,
            attributes: vec![
                service(),
                IpvsAttribute::Dest(server("10.244.1.5", 8053, 1).full_attributes()),
            ],
        },
        ADD_DEST,
    );
    both_ways(
        IpvsMessage {
            command: IpvsCommand::SetDest,
            attributes: vec![
                service(),
                IpvsAttribute::Dest(server("10.244.1.5", 8053, 0).full_attributes()),
            ],
        },
        EDIT_DEST_WEIGHT0,
    );
    // ipvsadm's delete carries forwarding method 3 (its default for -d); the kernel ignores it.
    let mut del = server("10.244.1.5", 8053, 1);
    del.forward = FWD_DROUTE;
    both_ways(
        IpvsMessage {
            command: IpvsCommand::DelDest,
            attributes: vec![service(), IpvsAttribute::Dest(del.full_attributes())],
        },
        DEL_DEST,
    );
}

#[test]
fn real_server_ipv6() {
    let s = svc("fd00::10", 6, 80, "", 0, 0);
    both_ways(
        IpvsMessage {
            command: IpvsCommand::NewDest,
            attributes: vec![
                IpvsAttribute::Service(svc_as_ipvsadm_names_it(&s)),
                IpvsAttribute::Dest(server("fd00:10:244::5", 8080, 1).full_attributes()),
            ],
        },
        ADD_DEST6,
    );
}

#[test]
fn delete_service_flush_and_timeouts() {
    let s = svc("10.96.0.10", 6, 53, "rr", 0, 0);
    both_ways(
        IpvsMessage {
            command: IpvsCommand::DelService,
            attributes: vec![IpvsAttribute::Service(svc_as_ipvsadm_names_it(&s))],
        },
        DEL_SVC,
    );
    both_ways(
        IpvsMessage {
            command: IpvsCommand::Flush,
            attributes: vec![],
        },
        FLUSH,
    );
    both_ways(
        IpvsMessage {
            command: IpvsCommand::SetConfig,
            attributes: vec![
                IpvsAttribute::TimeoutTcp(900),
                IpvsAttribute::TimeoutTcpFin(120),
                IpvsAttribute::TimeoutUdp(300),
            ],
        },
        SET_TIMEOUTS,
    );
    both_ways(
        IpvsMessage {
            command: IpvsCommand::GetConfig,
            attributes: vec![],
        },
        GET_CONFIG,
    );
    // The kernel answers GetConfig with SetConfig and the three timeouts.
    assert_eq!(
        decode(&hex(GET_CONFIG_ANSWER)),
        IpvsMessage {
            command: IpvsCommand::SetConfig,
            attributes: vec![
                IpvsAttribute::TimeoutTcp(900),
                IpvsAttribute::TimeoutTcpFin(120),
                IpvsAttribute::TimeoutUdp(300),
            ],
        }
    );
}

#[test]
fn info_answer() {
    both_ways(
        IpvsMessage {
            command: IpvsCommand::GetInfo,
            attributes: vec![],
        },
        GET_INFO,
    );
    assert_eq!(
        decode(&hex(GET_INFO_ANSWER)),
        IpvsMessage {
            command: IpvsCommand::SetInfo,
            attributes: vec![
                IpvsAttribute::InfoVersion(0x010201),
                IpvsAttribute::InfoConnTableSize(4096),
            ],
        }
    );
}

#[test]
fn dumps_and_listed_services() {
    both_ways(
        IpvsMessage {
            command: IpvsCommand::GetService,
            attributes: vec![],
        },
        DUMP_SERVICES,
    );
    let listed = |h: &str| {
        let m = decode(&hex(h));
        assert_eq!(m.command, IpvsCommand::NewService);
        let [IpvsAttribute::Service(attrs)] = m.attributes.as_slice() else {
            panic!("{m:?}")
        };
        VirtualService::from_attributes(attrs).unwrap().0
    };
    assert_eq!(
        listed(LISTED_SVC6),
        svc("fd00::10", 6, 80, "sh", SVC_F_HASHED, 0)
    );
    assert_eq!(
        listed(LISTED_UDP_PERSIST),
        svc(
            "10.96.0.10",
            17,
            53,
            "wrr",
            SVC_F_HASHED | SVC_F_PERSISTENT,
            10800
        )
    );
    assert_eq!(
        listed(LISTED_TCP),
        svc("10.96.0.10", 6, 53, "rr", SVC_F_HASHED, 0)
    );

    let s = svc("10.96.0.10", 6, 53, "", 0, 0);
    both_ways(
        IpvsMessage {
            command: IpvsCommand::GetDest,
            attributes: vec![IpvsAttribute::Service(s.key_attributes())],
        },
        DUMP_DESTS,
    );
    let m = decode(&hex(LISTED_DEST));
    assert_eq!(m.command, IpvsCommand::NewDest);
    let [IpvsAttribute::Dest(attrs)] = m.attributes.as_slice() else {
        panic!("{m:?}")
    };
    let listed = ListedServer::from_attributes(attrs, AF_INET).unwrap();
    assert_eq!(listed.server, server("10.244.1.5", 8053, 0));
    assert_eq!((listed.active, listed.inactive), (0, 0));
}
