//! nf_tables messages built by `kproxy_netlink::nftables` against what `nft` 1.0.6 sends for the
//! same statements, byte for byte, in both directions: every message of the capture parses into
//! the message built here, and the message built here serializes to the captured bytes (sequence
//! numbers aside). Each capture (`tests/captures/nft/<name>.hex`) is `nft -f <name>.nft` recorded
//! with `tests/captures/nft/capture.py` (strace of the batch `sendmsg`, run in a scratch network
//! namespace): `sample` (upstream's layout: verdict maps, base chains, every expression kproxy's
//! rules use), `dnat-map` (NAT targets looked up by `numgen` slot, the hairpin set) and
//! `interval-map` (NAT targets by range of `meta random`, nftables mode's load balancing).

use kproxy_netlink::nftables::batch::Transaction;
use kproxy_netlink::nftables::expr::{
    ct, fib, meta, reg32, CmpOp, Expr, ImmediateData, PayloadBase, Verdict, REG_1, REG_2,
    REG_VERDICT,
};
use kproxy_netlink::nftables::objects::{
    add_elements, datatype, delete_chain, delete_elements, delete_table, flush_chain, new_chain,
    new_counter, new_rule, new_set, new_table, set_flags, BaseChain, Command, Element, SetSpec,
    SetUserData, NFPROTO_IPV4,
};
use kproxy_netlink::nftables::wire::NftMessage;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};

const T: &str = "kube-proxy";
const F: u8 = NFPROTO_IPV4;

fn captured() -> Vec<Vec<u8>> {
    parse_hex(include_str!("captures/nft/sample.hex"))
}

fn parse_hex(text: &str) -> Vec<Vec<u8>> {
    text.lines()
        .map(|l| {
            (0..l.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap())
                .collect()
        })
        .collect()
}

fn jump(chain: &str) -> Expr {
    Expr::Immediate {
        dreg: REG_VERDICT,
        data: ImmediateData::Verdict(Verdict::Jump(chain.into())),
    }
}

fn goto(chain: &str) -> Expr {
    Expr::Immediate {
        dreg: REG_VERDICT,
        data: ImmediateData::Verdict(Verdict::Goto(chain.into())),
    }
}

fn verdict(v: Verdict) -> Expr {
    Expr::Immediate {
        dreg: REG_VERDICT,
        data: ImmediateData::Verdict(v),
    }
}

fn payload(base: PayloadBase, offset: u32, len: u32, dreg: u32) -> Expr {
    Expr::Payload {
        dreg,
        base,
        offset,
        len,
    }
}

fn cmp(op: CmpOp, data: &[u8]) -> Expr {
    Expr::Cmp {
        sreg: REG_1,
        op,
        data: data.to_vec(),
    }
}

fn bitwise_op(mask: u32, xor: u32, explicit_op: bool) -> Expr {
    Expr::Bitwise {
        sreg: REG_1,
        dreg: REG_1,
        mask: mask.to_ne_bytes().to_vec(),
        xor: xor.to_ne_bytes().to_vec(),
        explicit_op,
    }
}

fn bitwise(mask: u32, xor: u32) -> Expr {
    bitwise_op(mask, xor, false)
}

fn bitwise_set(mask: u32, xor: u32) -> Expr {
    bitwise_op(mask, xor, true)
}

fn daddr() -> Expr {
    payload(PayloadBase::Network, 16, 4, REG_1)
}

fn saddr() -> Expr {
    payload(PayloadBase::Network, 12, 4, REG_1)
}

fn tuple_key() -> Vec<Expr> {
    vec![
        daddr(),
        Expr::Meta {
            key: meta::L4PROTO,
            dreg: reg32(1),
        },
        payload(PayloadBase::Transport, 2, 2, reg32(2)),
    ]
}

fn rule(chain: &str, exprs: Vec<Expr>) -> Command {
    new_rule(F, T, chain, &exprs, None)
}

fn set_key(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::new();
    for p in parts {
        k.extend_from_slice(p);
        k.resize(k.len().div_ceil(4) * 4, 0);
    }
    k
}

/// The commands `sample.nft` sends, in nft's order (chains, counter, sets, rules, elements).
fn built() -> Vec<Command> {
    let mut c = vec![new_table(F, T, Some("rules for kube-proxy"))];
    c.push(new_chain(
        F,
        T,
        "filter-input",
        Some(&BaseChain {
            chain_type: "filter",
            hook: 1,
            priority: -110,
        }),
    ));
    c.push(new_chain(
        F,
        T,
        "nat-prerouting",
        Some(&BaseChain {
            chain_type: "nat",
            hook: 0,
            priority: -100,
        }),
    ));
    for name in [
        "cluster-ips-check",
        "mark-for-masquerade",
        "masquerading",
        "services",
        "ep",
        "svc",
        "ext",
    ] {
        c.push(new_chain(F, T, name, None));
    }
    c.push(new_counter(F, T, "svc-c"));
    let tuple = datatype::concat(&[
        (datatype::IPV4_ADDR, 4),
        (datatype::INET_PROTO, 1),
        (datatype::INET_SERVICE, 2),
    ]);
    let np = datatype::concat(&[(datatype::INET_PROTO, 1), (datatype::INET_SERVICE, 2)]);
    let sets = [
        SetSpec {
            table: T,
            name: "cluster-ips",
            flags: 0,
            key: (datatype::IPV4_ADDR, 4),
            data: None,
            timeout_ms: None,
            user_data: SetUserData::Addresses {
                comment: Some("Active ClusterIPs"),
            },
            id: 1,
        },
        SetSpec {
            table: T,
            name: "service-ips",
            flags: set_flags::MAP,
            key: tuple,
            data: Some((datatype::VERDICT, 0)),
            timeout_ms: None,
            user_data: SetUserData::ConcatVerdictMap {
                comment: Some("ClusterIP, ExternalIP and LoadBalancer IP traffic"),
            },
            id: 2,
        },
        SetSpec {
            table: T,
            name: "service-nodeports",
            flags: set_flags::MAP,
            key: np,
            data: Some((datatype::VERDICT, 0)),
            timeout_ms: None,
            user_data: SetUserData::ConcatVerdictMap {
                comment: Some("NodePort traffic"),
            },
            id: 3,
        },
        SetSpec {
            table: T,
            name: "endpoint-select",
            flags: set_flags::MAP,
            key: (datatype::INTEGER, 4),
            data: Some((datatype::VERDICT, 0)),
            timeout_ms: None,
            user_data: SetUserData::NumgenVerdictMap { comment: None },
            id: 4,
        },
        SetSpec {
            table: T,
            name: "affinity-x",
            flags: set_flags::TIMEOUT | set_flags::EVAL,
            key: (datatype::IPV4_ADDR, 4),
            data: None,
            timeout_ms: Some(3 * 3600 * 1000),
            user_data: SetUserData::Addresses { comment: None },
            id: 5,
        },
    ];
    for s in &sets {
        c.push(new_set(F, s));
    }
    let ct_new = vec![
        Expr::Ct {
            key: ct::STATE,
            dreg: REG_1,
        },
        bitwise(ct::STATE_NEW, 0),
        cmp(CmpOp::Neq, &0u32.to_ne_bytes()),
    ];
    c.push(rule(
        "filter-input",
        [ct_new, vec![jump("cluster-ips-check")]].concat(),
    ));
    c.push(rule("nat-prerouting", vec![jump("services")]));
    c.push(rule(
        "cluster-ips-check",
        vec![
            daddr(),
            Expr::Lookup {
                set: "cluster-ips".into(),
                set_id: 1,
                sreg: REG_1,
                dreg: None,
                invert: false,
            },
            Expr::Reject { kind: 0, code: 3 },
        ],
    ));
    c.push(rule(
        "cluster-ips-check",
        vec![
            payload(PayloadBase::Network, 16, 2, REG_1),
            cmp(CmpOp::Eq, &[10, 96]),
            verdict(Verdict::Drop),
        ],
    ));
    let mark = || Expr::Meta {
        key: meta::MARK,
        dreg: REG_1,
    };
    let set_mark = Expr::MetaSet {
        key: meta::MARK,
        sreg: REG_1,
    };
    c.push(rule(
        "mark-for-masquerade",
        vec![mark(), bitwise_set(!0x4000, 0x4000), set_mark.clone()],
    ));
    c.push(rule(
        "masquerading",
        vec![
            mark(),
            bitwise_set(0x4000, 0),
            cmp(CmpOp::Eq, &0u32.to_ne_bytes()),
            verdict(Verdict::Return),
        ],
    ));
    c.push(rule(
        "masquerading",
        vec![mark(), bitwise_set(!0, 0x4000), set_mark],
    ));
    c.push(rule(
        "masquerading",
        vec![Expr::Masquerade { fully_random: true }],
    ));
    let vmap = |set: &str, set_id: u32, sreg: u32| Expr::Lookup {
        set: set.into(),
        set_id,
        sreg,
        dreg: Some(REG_VERDICT),
        invert: false,
    };
    c.push(rule(
        "services",
        [tuple_key(), vec![vmap("service-ips", 2, REG_1)]].concat(),
    ));
    c.push(rule(
        "services",
        vec![
            Expr::Fib {
                dreg: REG_1,
                result: fib::RESULT_ADDRTYPE,
                flags: fib::F_DADDR,
            },
            cmp(CmpOp::Eq, &fib::RTN_LOCAL.to_ne_bytes()),
            payload(PayloadBase::Network, 16, 1, REG_1),
            cmp(CmpOp::Neq, &[127]),
            Expr::Meta {
                key: meta::L4PROTO,
                dreg: REG_1,
            },
            payload(PayloadBase::Transport, 2, 2, reg32(1)),
            vmap("service-nodeports", 3, REG_1),
        ],
    ));
    let l4 = |p: u8| {
        vec![
            Expr::Meta {
                key: meta::L4PROTO,
                dreg: REG_1,
            },
            cmp(CmpOp::Eq, &[p]),
        ]
    };
    c.push(rule(
        "ep",
        vec![
            saddr(),
            cmp(CmpOp::Eq, &[10, 180, 0, 1]),
            jump("mark-for-masquerade"),
        ],
    ));
    c.push(rule(
        "ep",
        vec![
            saddr(),
            Expr::DynsetUpdate {
                set: "affinity-x".into(),
                set_id: 5,
                sreg: REG_1,
            },
        ],
    ));
    c.push(rule(
        "ep",
        [
            l4(6),
            vec![
                Expr::Immediate {
                    dreg: REG_1,
                    data: ImmediateData::Value(vec![10, 180, 0, 1]),
                },
                Expr::Immediate {
                    dreg: REG_2,
                    data: ImmediateData::Value(80u16.to_be_bytes().to_vec()),
                },
                Expr::Dnat {
                    family: u32::from(F),
                    addr: REG_1,
                    port: REG_2,
                    flags: Some(2),
                },
            ],
        ]
        .concat(),
    ));
    c.push(rule(
        "svc",
        [
            vec![daddr(), cmp(CmpOp::Eq, &[172, 30, 0, 41])],
            l4(6),
            vec![
                payload(PayloadBase::Transport, 2, 2, REG_1),
                cmp(CmpOp::Eq, &80u16.to_be_bytes()),
                payload(PayloadBase::Network, 12, 1, REG_1),
                cmp(CmpOp::Neq, &[10]),
                jump("mark-for-masquerade"),
            ],
        ]
        .concat(),
    ));
    c.push(rule(
        "svc",
        vec![
            saddr(),
            Expr::Lookup {
                set: "affinity-x".into(),
                set_id: 5,
                sreg: REG_1,
                dreg: None,
                invert: false,
            },
            goto("ep"),
        ],
    ));
    c.push(rule(
        "svc",
        vec![Expr::CounterRef {
            name: "svc-c".into(),
        }],
    ));
    c.push(rule(
        "svc",
        vec![
            Expr::Numgen {
                dreg: REG_1,
                modulus: 3,
                offset: 7,
            },
            vmap("endpoint-select", 4, REG_1),
        ],
    ));
    c.push(rule(
        "ext",
        vec![
            payload(PayloadBase::Network, 12, 1, REG_1),
            cmp(CmpOp::Eq, &[10]),
            goto("svc"),
        ],
    ));
    c.push(rule(
        "ext",
        vec![
            Expr::Fib {
                dreg: REG_1,
                result: fib::RESULT_ADDRTYPE,
                flags: fib::F_SADDR,
            },
            cmp(CmpOp::Eq, &fib::RTN_LOCAL.to_ne_bytes()),
            jump("mark-for-masquerade"),
        ],
    ));
    let mut eth0 = b"eth0".to_vec();
    eth0.resize(16, 0);
    c.push(rule(
        "ext",
        vec![
            Expr::Meta {
                key: meta::IIFNAME,
                dreg: REG_1,
            },
            cmp(CmpOp::Eq, &eth0),
            goto("svc"),
        ],
    ));
    c.push(rule("ext", vec![goto("svc")]));
    let el = |key: Vec<u8>, chain: &str| Element {
        key,
        verdict: Some(Verdict::Goto(chain.into())),
        data: None,
        interval_end: false,
    };
    c.push(add_elements(
        F,
        T,
        "service-ips",
        2,
        &[
            el(
                set_key(&[&[172, 30, 0, 41], &[6], &80u16.to_be_bytes()]),
                "svc",
            ),
            el(
                set_key(&[&[172, 30, 0, 42], &[17], &53u16.to_be_bytes()]),
                "ext",
            ),
        ],
    ));
    c.push(add_elements(
        F,
        T,
        "service-nodeports",
        3,
        &[el(set_key(&[&[6], &30001u16.to_be_bytes()]), "ext")],
    ));
    c.push(add_elements(
        F,
        T,
        "endpoint-select",
        4,
        &[
            el(7u32.to_ne_bytes().to_vec(), "ep"),
            el(8u32.to_ne_bytes().to_vec(), "ep"),
        ],
    ));
    let ip = Element {
        key: vec![172, 30, 0, 41],
        verdict: None,
        data: None,
        interval_end: false,
    };
    c.push(add_elements(
        F,
        T,
        "cluster-ips",
        1,
        std::slice::from_ref(&ip),
    ));
    c.push(delete_elements(F, T, "cluster-ips", &[ip]));
    c.push(new_chain(F, T, "old", None));
    c.push(flush_chain(F, T, "old"));
    c.push(delete_chain(F, T, "old"));
    c.push(delete_table(F, T));
    c
}

fn serialize(command: &Command) -> Vec<u8> {
    let mut tx = Transaction::new();
    tx.push(command.clone());
    tx.messages();
    let (flags, message) = tx.messages().remove(0);
    let mut header = netlink_packet_core::NetlinkHeader::default();
    header.flags = flags;
    let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    m.finalize();
    let mut out = vec![0; m.buffer_len()];
    m.serialize(&mut out);
    out
}

fn without_sequence(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes[8..12].fill(0);
    bytes
}

#[test]
fn every_command_is_what_nft_sends() {
    check_bytes(&captured(), &built());
    check_bytes(
        &parse_hex(include_str!("captures/nft/dnat-map.hex")),
        &built_dnat_map(),
    );
    check_bytes(
        &parse_hex(include_str!("captures/nft/interval-map.hex")),
        &built_interval_map(),
    );
}

fn check_bytes(captured: &[Vec<u8>], built: &[Command]) {
    // The capture holds one batch: begin, the commands, end.
    assert_eq!(captured.len(), built.len() + 2, "message count");
    for (i, (command, bytes)) in built.iter().zip(&captured[1..]).enumerate() {
        let ours = without_sequence(serialize(command));
        let theirs = without_sequence(bytes.clone());
        assert_eq!(
            hex(&ours),
            hex(&theirs),
            "command {i} ({:?}) differs from nft's",
            kproxy_netlink::nftables::batch::describe(&command.message)
        );
    }
}

#[test]
fn every_captured_message_parses_into_the_built_one() {
    check_parse(&captured(), &built());
    check_parse(
        &parse_hex(include_str!("captures/nft/dnat-map.hex")),
        &built_dnat_map(),
    );
    check_parse(
        &parse_hex(include_str!("captures/nft/interval-map.hex")),
        &built_interval_map(),
    );
}

fn check_parse(captured: &[Vec<u8>], built: &[Command]) {
    for (i, (command, bytes)) in built.iter().zip(&captured[1..]).enumerate() {
        let parsed = NetlinkMessage::<NftMessage>::deserialize(bytes).unwrap();
        assert_eq!(
            parsed.header.flags & !0x4,
            command.flags | 1,
            "flags of {i}"
        );
        match parsed.payload {
            NetlinkPayload::InnerMessage(m) => assert_eq!(m, command.message, "message {i}"),
            other => panic!("message {i}: {other:?}"),
        }
    }
    // The delimiters too.
    for (bytes, expected) in [
        (&captured[0], NftMessage::batch_begin()),
        (captured.last().unwrap(), NftMessage::batch_end()),
    ] {
        let parsed = NetlinkMessage::<NftMessage>::deserialize(bytes).unwrap();
        assert_eq!(parsed.payload, NetlinkPayload::InnerMessage(expected));
    }
}

/// The commands `dnat-map.nft` sends: NAT targets looked up by `numgen` slot, a concatenated
/// set for hairpin traffic, and load balancing by a cascade of `numgen` matches.
fn built_dnat_map() -> Vec<Command> {
    const K: &str = "k";
    let mut c = vec![new_table(F, K, None)];
    for name in ["svc", "aff", "masq"] {
        c.push(new_chain(F, K, name, None));
    }
    c.push(new_set(
        F,
        &SetSpec {
            table: K,
            name: "endpoints",
            flags: set_flags::MAP,
            key: (datatype::INTEGER, 4),
            data: Some(datatype::concat(&[
                (datatype::IPV4_ADDR, 4),
                (datatype::INET_SERVICE, 2),
            ])),
            timeout_ms: None,
            user_data: SetUserData::NumgenAddressPortMap {
                ipv6: false,
                comment: Some("c"),
            },
            id: 1,
        },
    ));
    c.push(new_set(
        F,
        &SetSpec {
            table: K,
            name: "hairpin",
            flags: 0,
            key: datatype::concat(&[(datatype::IPV4_ADDR, 4), (datatype::IPV4_ADDR, 4)]),
            data: None,
            timeout_ms: None,
            user_data: SetUserData::Concat { comment: None },
            id: 2,
        },
    ));
    let r = |chain: &str, exprs: Vec<Expr>| new_rule(F, K, chain, &exprs, None);
    c.push(r(
        "svc",
        vec![
            Expr::Meta {
                key: meta::L4PROTO,
                dreg: REG_1,
            },
            cmp(CmpOp::Eq, &[6]),
            Expr::Numgen {
                dreg: REG_1,
                modulus: 3,
                offset: 7,
            },
            Expr::Lookup {
                set: "endpoints".into(),
                set_id: 1,
                sreg: REG_1,
                dreg: Some(REG_1),
                invert: false,
            },
            Expr::Dnat {
                family: u32::from(F),
                addr: REG_1,
                port: reg32(1),
                flags: None,
            },
        ],
    ));
    for modulus in [3, 2] {
        c.push(r(
            "aff",
            vec![
                Expr::Numgen {
                    dreg: REG_1,
                    modulus,
                    offset: 0,
                },
                cmp(CmpOp::Eq, &0u32.to_ne_bytes()),
                goto("svc"),
            ],
        ));
    }
    c.push(r(
        "masq",
        vec![
            saddr(),
            payload(PayloadBase::Network, 16, 4, reg32(1)),
            Expr::Lookup {
                set: "hairpin".into(),
                set_id: 2,
                sreg: REG_1,
                dreg: None,
                invert: false,
            },
            Expr::Masquerade { fully_random: true },
        ],
    ));
    let target = |ip: [u8; 4], port: u16| {
        let mut v = ip.to_vec();
        v.extend_from_slice(&port.to_be_bytes());
        v.extend_from_slice(&[0, 0]);
        v
    };
    c.push(add_elements(
        F,
        K,
        "endpoints",
        1,
        &[
            Element {
                key: 7u32.to_ne_bytes().to_vec(),
                verdict: None,
                data: Some(target([10, 0, 0, 1], 80)),
                interval_end: false,
            },
            Element {
                key: 8u32.to_ne_bytes().to_vec(),
                verdict: None,
                data: Some(target([10, 0, 0, 2], 8080)),
                interval_end: false,
            },
        ],
    ));
    c.push(add_elements(
        F,
        K,
        "hairpin",
        2,
        &[Element {
            key: vec![10, 0, 0, 1, 10, 0, 0, 1],
            verdict: None,
            data: None,
            interval_end: false,
        }],
    ));
    c
}

/// The commands `interval-map.nft` sends: NAT targets by range of `meta random`, the ranges'
/// ends as interval-end elements (nft adds one at 0 for the gap before the first range).
fn built_interval_map() -> Vec<Command> {
    const K: &str = "k";
    let mut c = vec![new_table(F, K, None), new_chain(F, K, "svc", None)];
    c.push(new_set(
        F,
        &SetSpec {
            table: K,
            name: "se3",
            flags: set_flags::MAP | set_flags::INTERVAL,
            key: (datatype::INTEGER, 4),
            data: Some(datatype::concat(&[
                (datatype::IPV4_ADDR, 4),
                (datatype::INET_SERVICE, 2),
            ])),
            timeout_ms: None,
            user_data: SetUserData::RandomRangeAddressPortMap {
                ipv6: false,
                comment: None,
            },
            id: 1,
        },
    ));
    let start = |key: u32, ip: [u8; 4], port: u16| {
        let mut data = ip.to_vec();
        data.extend_from_slice(&port.to_be_bytes());
        data.extend_from_slice(&[0, 0]);
        Element {
            key: key.to_be_bytes().to_vec(),
            verdict: None,
            data: Some(data),
            interval_end: false,
        }
    };
    let end = |key: u32| Element {
        key: key.to_be_bytes().to_vec(),
        verdict: None,
        data: None,
        interval_end: true,
    };
    c.push(add_elements(
        F,
        K,
        "se3",
        1,
        &[
            end(0),
            start(0x8000, [10, 0, 0, 1], 80),
            end(0xc000),
            start(0xc000, [10, 0, 0, 2], 8080),
            end(0x10000),
        ],
    ));
    c.push(new_rule(
        F,
        K,
        "svc",
        &[
            Expr::Meta {
                key: meta::L4PROTO,
                dreg: REG_1,
            },
            cmp(CmpOp::Eq, &[6]),
            Expr::Meta {
                key: meta::PRANDOM,
                dreg: REG_1,
            },
            Expr::Bitwise {
                sreg: REG_1,
                dreg: REG_1,
                mask: 0x7fffu32.to_be_bytes().to_vec(),
                xor: 0x8000u32.to_be_bytes().to_vec(),
                explicit_op: true,
            },
            Expr::Lookup {
                set: "se3".into(),
                set_id: 1,
                sreg: REG_1,
                dreg: Some(REG_1),
                invert: false,
            },
            Expr::Dnat {
                family: u32::from(F),
                addr: REG_1,
                port: reg32(1),
                flags: None,
            },
        ],
        None,
    ));
    c
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
