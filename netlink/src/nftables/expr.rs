//! nf_tables expressions: the instructions a rule is made of, as `NFTA_LIST_ELEM` nests of
//! `NFTA_EXPR_NAME` and `NFTA_EXPR_DATA`. Only what kproxy's rules use, each emitted with its
//! attributes in the order `nft` (libnftnl) sends them, so a rule built here is byte for byte the
//! rule `nft -f` would send for the same text.

use super::wire::NftAttribute;

/// `NFTA_LIST_ELEM`: one item of a list (expressions of a rule, elements of a set).
pub const NFTA_LIST_ELEM: u16 = 1;

/// A register: `NFT_REG_VERDICT` (0), the 128-bit `NFT_REG_1..4` (1–4) or the 32-bit
/// `NFT_REG32_00..15` (8–23), which concatenations use.
pub type Register = u32;
/// The verdict register.
pub const REG_VERDICT: Register = 0;
/// The first 128-bit register.
pub const REG_1: Register = 1;
/// The second 128-bit register (a NAT target's port).
pub const REG_2: Register = 2;
/// The 32-bit register `n` (0–15).
pub const fn reg32(n: u32) -> Register {
    8 + n
}

/// A verdict: accept, drop, continue, return, or a jump/goto to a chain.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// `NF_ACCEPT`.
    Accept,
    /// `NF_DROP`.
    Drop,
    /// `NFT_RETURN`.
    Return,
    /// `NFT_JUMP` to the chain.
    Jump(String),
    /// `NFT_GOTO` to the chain.
    Goto(String),
}

impl Verdict {
    /// The verdict code (`NF_ACCEPT`, `NFT_JUMP`, …).
    pub fn code(&self) -> i32 {
        match self {
            Verdict::Accept => 1,
            Verdict::Drop => 0,
            Verdict::Return => -5,
            Verdict::Jump(_) => -3,
            Verdict::Goto(_) => -4,
        }
    }

    /// `NFTA_DATA_VERDICT` with its code and chain, as it sits in an immediate or a map element.
    pub fn data_attribute(&self) -> NftAttribute {
        // nft_verdict_attributes: CODE 1, CHAIN 2.
        let mut v = vec![NftAttribute::bytes(1, self.code().to_be_bytes())];
        if let Verdict::Jump(c) | Verdict::Goto(c) = self {
            v.push(NftAttribute::string(2, c));
        }
        NftAttribute::nested(2, v)
    }

    /// Reads a `NFTA_DATA_VERDICT` nest.
    pub fn from_data(children: &[NftAttribute]) -> Option<Self> {
        let code = i32::from_be_bytes(
            children
                .iter()
                .find(|a| a.kind == 1)?
                .value_bytes()
                .get(..4)?
                .try_into()
                .ok()?,
        );
        let chain = || children.iter().find(|a| a.kind == 2)?.as_string();
        Some(match code {
            1 => Verdict::Accept,
            0 => Verdict::Drop,
            -5 => Verdict::Return,
            -3 => Verdict::Jump(chain()?),
            -4 => Verdict::Goto(chain()?),
            _ => return None,
        })
    }
}

/// Where a payload load reads from (`enum nft_payload_bases`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadBase {
    /// The network header (IP).
    Network = 1,
    /// The transport header (TCP/UDP/SCTP ports).
    Transport = 2,
}

/// Comparison operators (`enum nft_cmp_ops`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// `==`.
    Eq = 0,
    /// `!=`.
    Neq = 1,
}

/// `NFT_META_*` keys kproxy reads or sets.
pub mod meta {
    /// The packet mark.
    pub const MARK: u32 = 3;
    /// Input interface name.
    pub const IIFNAME: u32 = 6;
    /// The layer-4 protocol number.
    pub const L4PROTO: u32 = 16;
    /// A pseudo-random 32-bit number (`meta random`).
    pub const PRANDOM: u32 = 24;
}

/// `NFT_CT_*` keys.
pub mod ct {
    /// The connection's state bits (`new` is bit 3).
    pub const STATE: u32 = 0;
    /// The `ct status` bits.
    pub const STATUS: u32 = 2;
    /// `ct state new`'s bit.
    pub const STATE_NEW: u32 = 8;
}

/// `NFT_FIB_RESULT_ADDRTYPE`; flags `NFTA_FIB_F_SADDR` (1), `_DADDR` (2).
pub mod fib {
    /// Result: the address type (`RTN_*`: local is 2).
    pub const RESULT_ADDRTYPE: u32 = 3;
    /// Look the source address up.
    pub const F_SADDR: u32 = 1;
    /// Look the destination address up.
    pub const F_DADDR: u32 = 2;
    /// `RTN_LOCAL`.
    pub const RTN_LOCAL: u32 = 2;
}

/// One expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// Load `len` bytes at `offset` of a header into `dreg`.
    Payload {
        /// Destination register.
        dreg: Register,
        /// Which header.
        base: PayloadBase,
        /// Byte offset in it.
        offset: u32,
        /// Byte count.
        len: u32,
    },
    /// Load a meta key into `dreg`.
    Meta {
        /// `NFT_META_*`.
        key: u32,
        /// Destination register.
        dreg: Register,
    },
    /// Set a meta key from `sreg`.
    MetaSet {
        /// `NFT_META_*`.
        key: u32,
        /// Source register.
        sreg: Register,
    },
    /// Load a conntrack key into `dreg`.
    Ct {
        /// `NFT_CT_*`.
        key: u32,
        /// Destination register.
        dreg: Register,
    },
    /// `(sreg & mask) ^ xor` into `dreg`, over `mask.len()` bytes.
    Bitwise {
        /// Source register.
        sreg: Register,
        /// Destination register.
        dreg: Register,
        /// The mask.
        mask: Vec<u8>,
        /// The xor.
        xor: Vec<u8>,
        /// Send `NFTA_BITWISE_OP` (mask-and-xor) explicitly: `nft` does for a written binary
        /// operation (`meta mark & x == 0`, `meta mark set meta mark | x`), not for the mask it
        /// derives from a flag match (`ct state new`).
        explicit_op: bool,
    },
    /// Compare `sreg` with `data`; the rule stops here when false.
    Cmp {
        /// Source register.
        sreg: Register,
        /// Operator.
        op: CmpOp,
        /// The value compared with.
        data: Vec<u8>,
    },
    /// Load a constant or set the verdict.
    Immediate {
        /// Destination register (`REG_VERDICT` for a verdict).
        dreg: Register,
        /// What to load.
        data: ImmediateData,
    },
    /// Look `sreg` up in a named set; with `dreg` a map's value is loaded (0: a verdict map).
    Lookup {
        /// The set's name.
        set: String,
        /// The set's id in the transaction that created it (`nft` sends it; the kernel uses it
        /// only for a set created in the same transaction). 0 when unknown.
        set_id: u32,
        /// Key register.
        sreg: Register,
        /// Value register, for a map.
        dreg: Option<Register>,
        /// `NFT_LOOKUP_F_INV` for "not in".
        invert: bool,
    },
    /// A random (or incrementing) number `offset..offset+modulus` into `dreg`.
    Numgen {
        /// Destination register.
        dreg: Register,
        /// Modulus.
        modulus: u32,
        /// Offset added.
        offset: u32,
    },
    /// Route lookup: the address type of the source or destination into `dreg`.
    Fib {
        /// Destination register.
        dreg: Register,
        /// `fib::RESULT_*`.
        result: u32,
        /// `fib::F_*`.
        flags: u32,
    },
    /// Destination NAT to the address in `addr` and the port in `port`.
    Dnat {
        /// `NFPROTO_IPV4` / `NFPROTO_IPV6`.
        family: u32,
        /// Register holding the address.
        addr: Register,
        /// Register holding the port.
        port: Register,
        /// `NFTA_NAT_FLAGS`, as `nft` sends it: `NF_NAT_RANGE_PROTO_SPECIFIED` (2) for a
        /// constant target, none for a target looked up in a map.
        flags: Option<u32>,
    },
    /// Masquerade (`fully-random` when `fully_random`).
    Masquerade {
        /// `NF_NAT_RANGE_PROTO_RANDOM_FULLY`.
        fully_random: bool,
    },
    /// `reject`: ICMP port unreachable (type 0, code 3), as `nft` sends a bare `reject` in an
    /// ip/ip6 table.
    Reject {
        /// `NFT_REJECT_*`.
        kind: u32,
        /// ICMP code.
        code: u8,
    },
    /// Add or refresh `sreg` in a dynamic set (`update @set { ip saddr }`).
    DynsetUpdate {
        /// The set.
        set: String,
        /// The set's transaction id, as for [`Expr::Lookup`].
        set_id: u32,
        /// Key register.
        sreg: Register,
    },
    /// Count into a named counter object.
    CounterRef {
        /// The counter's name.
        name: String,
    },
}

/// What an immediate loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImmediateData {
    /// Bytes into a data register.
    Value(Vec<u8>),
    /// A verdict.
    Verdict(Verdict),
}

fn reg(kind: u16, r: Register) -> NftAttribute {
    NftAttribute::u32(kind, r)
}

/// `NFTA_DATA_VALUE` nested in the attribute `kind`.
pub fn data_value(kind: u16, value: &[u8]) -> NftAttribute {
    NftAttribute::nested(kind, vec![NftAttribute::bytes(1, value.to_vec())])
}

impl Expr {
    /// The expression's name (`NFTA_EXPR_NAME`).
    pub fn name(&self) -> &'static str {
        match self {
            Expr::Payload { .. } => "payload",
            Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Ct { .. } => "ct",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Cmp { .. } => "cmp",
            Expr::Immediate { .. } => "immediate",
            Expr::Lookup { .. } => "lookup",
            Expr::Numgen { .. } => "numgen",
            Expr::Fib { .. } => "fib",
            Expr::Dnat { .. } => "nat",
            Expr::Masquerade { .. } => "masq",
            Expr::Reject { .. } => "reject",
            Expr::DynsetUpdate { .. } => "dynset",
            Expr::CounterRef { .. } => "objref",
        }
    }

    /// The attributes inside `NFTA_EXPR_DATA`, in libnftnl's order.
    pub fn data(&self) -> Vec<NftAttribute> {
        match self {
            Expr::Payload {
                dreg,
                base,
                offset,
                len,
            } => vec![
                reg(1, *dreg),
                NftAttribute::u32(2, *base as u32),
                NftAttribute::u32(3, *offset),
                NftAttribute::u32(4, *len),
            ],
            Expr::Meta { key, dreg } => vec![NftAttribute::u32(2, *key), reg(1, *dreg)],
            Expr::MetaSet { key, sreg } => vec![NftAttribute::u32(2, *key), reg(3, *sreg)],
            Expr::Ct { key, dreg } => vec![NftAttribute::u32(2, *key), reg(1, *dreg)],
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
                explicit_op,
            } => {
                let mut v = vec![reg(1, *sreg), reg(2, *dreg)];
                if *explicit_op {
                    v.push(NftAttribute::u32(6, 0));
                }
                v.push(NftAttribute::u32(3, mask.len() as u32));
                v.push(data_value(4, mask));
                v.push(data_value(5, xor));
                v
            }
            Expr::Cmp { sreg, op, data } => vec![
                reg(1, *sreg),
                NftAttribute::u32(2, *op as u32),
                data_value(3, data),
            ],
            Expr::Immediate { dreg, data } => vec![
                reg(1, *dreg),
                match data {
                    ImmediateData::Value(v) => data_value(2, v),
                    ImmediateData::Verdict(v) => NftAttribute::nested(2, vec![v.data_attribute()]),
                },
            ],
            Expr::Lookup {
                set,
                set_id,
                sreg,
                dreg,
                invert,
            } => {
                let mut v = vec![reg(2, *sreg)];
                if let Some(d) = dreg {
                    v.push(reg(3, *d));
                }
                v.push(NftAttribute::string(1, set));
                v.push(NftAttribute::u32(4, *set_id));
                if *invert {
                    v.push(NftAttribute::u32(5, 1));
                }
                v
            }
            Expr::Numgen {
                dreg,
                modulus,
                offset,
            } => vec![
                reg(1, *dreg),
                NftAttribute::u32(2, *modulus),
                NftAttribute::u32(3, 1),
                NftAttribute::u32(4, *offset),
            ],
            Expr::Fib {
                dreg,
                result,
                flags,
            } => vec![
                NftAttribute::u32(3, *flags),
                NftAttribute::u32(2, *result),
                reg(1, *dreg),
            ],
            Expr::Dnat {
                family,
                addr,
                port,
                flags,
            } => {
                let mut v = vec![
                    NftAttribute::u32(1, 1),
                    NftAttribute::u32(2, *family),
                    reg(3, *addr),
                    reg(5, *port),
                ];
                if let Some(f) = flags {
                    v.push(NftAttribute::u32(7, *f));
                }
                v
            }
            Expr::Masquerade { fully_random } => {
                if *fully_random {
                    vec![NftAttribute::u32(1, 0x10)]
                } else {
                    Vec::new()
                }
            }
            Expr::Reject { kind, code } => vec![
                NftAttribute::u32(1, *kind),
                NftAttribute::bytes(2, vec![*code]),
            ],
            Expr::DynsetUpdate { set, set_id, sreg } => vec![
                reg(4, *sreg),
                NftAttribute::u32(3, 1),
                NftAttribute::string(1, set),
                NftAttribute::u32(2, *set_id),
            ],
            Expr::CounterRef { name } => {
                // nft sends the object's name without a terminating NUL.
                vec![
                    NftAttribute::u32(1, 1),
                    NftAttribute::bytes(2, name.as_bytes().to_vec()),
                ]
            }
        }
    }

    /// The expression as one `NFTA_LIST_ELEM` of a rule's `NFTA_RULE_EXPRESSIONS`.
    pub fn to_attribute(&self) -> NftAttribute {
        NftAttribute::nested(
            NFTA_LIST_ELEM,
            vec![
                NftAttribute::string(1, self.name()),
                NftAttribute::nested(2, self.data()),
            ],
        )
    }
}
