//! [`IpsetError`]: what went wrong, naming the set and the entry.
//!
//! The kernel answers ipset requests with an errno: a standard one (`ENOENT`: no such set) or one
//! of ipset's own (`IPSET_ERR_*`, 4096 and up; from 4352 they depend on the set type). They are
//! mapped here to variants a caller can match on, each saying which set (and entry) it was about.

use kproxy_netlink::socket::SocketError;

use crate::types::SetType;

const ENOENT: i32 = 2;
const EEXIST: i32 = 17;
const IPSET_ERR_PROTOCOL: i32 = 4097;
const IPSET_ERR_FIND_TYPE: i32 = 4098;
const IPSET_ERR_MAX_SETS: i32 = 4099;
const IPSET_ERR_BUSY: i32 = 4100;
const IPSET_ERR_EXIST_SETNAME2: i32 = 4101;
const IPSET_ERR_TYPE_MISMATCH: i32 = 4102;
const IPSET_ERR_EXIST: i32 = 4103;
const IPSET_ERR_INVALID_CIDR: i32 = 4104;
const IPSET_ERR_INVALID_FAMILY: i32 = 4106;
const IPSET_ERR_TIMEOUT: i32 = 4107;
const IPSET_ERR_REFERENCED: i32 = 4108;
const IPSET_ERR_IPADDR_IPV4: i32 = 4109;
const IPSET_ERR_IPADDR_IPV6: i32 = 4110;
const IPSET_ERR_COMMENT: i32 = 4112;
const IPSET_ERR_TYPE_SPECIFIC: i32 = 4352;

/// An ipset operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum IpsetError {
    /// A set name the kernel cannot take (empty, over 31 bytes, or with a NUL).
    #[error("ipset: invalid set name {name:?} (1 to 31 bytes)")]
    BadName {
        /// The name.
        name: String,
    },
    /// A set specification that cannot work.
    #[error("ipset: set {set}: {reason}")]
    BadSpec {
        /// The set.
        set: String,
        /// Why.
        reason: String,
    },
    /// An entry of the wrong shape or family for its set; nothing was sent.
    #[error("ipset: entry {entry} does not fit set {set}: {reason}")]
    EntryDoesNotFit {
        /// The set.
        set: String,
        /// The entry, as the CLI prints it.
        entry: String,
        /// Why.
        reason: String,
    },
    /// The set does not exist.
    #[error("ipset: {operation}: set {set} does not exist")]
    SetMissing {
        /// What was being done.
        operation: &'static str,
        /// The set.
        set: String,
    },
    /// A set of that name exists already (create without `exist_ok`, rename onto it).
    #[error("ipset: {operation}: set {set} already exists")]
    SetExists {
        /// What was being done.
        operation: &'static str,
        /// The set.
        set: String,
    },
    /// The set is in use by a rule (or another set) and cannot be destroyed or renamed.
    #[error("ipset: {operation}: set {set} is in use by a rule or another set")]
    InUse {
        /// What was being done.
        operation: &'static str,
        /// The set.
        set: String,
    },
    /// Two sets that cannot be swapped: their types or families differ.
    #[error("ipset: swap: sets {set} and {other} are of different types or families")]
    TypeMismatch {
        /// The first set.
        set: String,
        /// The second.
        other: String,
    },
    /// The entry is already in the set (an add without `exist_ok`).
    #[error("ipset: add: {entry} is already in set {set}")]
    EntryExists {
        /// The set.
        set: String,
        /// The entry.
        entry: String,
    },
    /// The entry is not in the set (a del without `missing_ok`).
    #[error("ipset: del: {entry} is not in set {set}")]
    EntryMissing {
        /// The set.
        set: String,
        /// The entry.
        entry: String,
    },
    /// A bitmap entry outside the set's range.
    #[error("ipset: {operation}: {entry} is outside the range of set {set}")]
    OutOfRange {
        /// What was being done.
        operation: &'static str,
        /// The set.
        set: String,
        /// The entry.
        entry: String,
    },
    /// A hash set at its `maxelem`.
    #[error("ipset: add: set {set} is full (maxelem) adding {entry}")]
    SetFull {
        /// The set.
        set: String,
        /// The entry.
        entry: String,
    },
    /// The kernel refused an entry's shape or values for this set.
    #[error("ipset: {operation}: set {set} refuses {entry}: {reason}")]
    EntryRefused {
        /// What was being done.
        operation: &'static str,
        /// The set.
        set: String,
        /// The entry.
        entry: String,
        /// The kernel's reason.
        reason: String,
    },
    /// Any other kernel error.
    #[error("ipset: {operation} on set {set}: {reason} (errno {errno})")]
    Kernel {
        /// What was being done.
        operation: &'static str,
        /// The set ("" for commands without one).
        set: String,
        /// The kernel's reason.
        reason: String,
        /// The errno.
        errno: i32,
    },
    /// The socket itself failed, or an answer did not parse.
    #[error("ipset: {operation}: {source}")]
    Socket {
        /// What was being done.
        operation: &'static str,
        /// The error.
        #[source]
        source: SocketError,
    },
    /// An answer that says nothing sensible (e.g. a protocol answer without a version).
    #[error("ipset: {operation}: unexpected answer: {reason}")]
    Unexpected {
        /// What was being done.
        operation: &'static str,
        /// What was wrong with it.
        reason: String,
    },
}

/// The context of a failed request, for [`from_kernel`].
pub(crate) struct Context<'a> {
    pub(crate) operation: &'static str,
    pub(crate) set: &'a str,
    pub(crate) other_set: Option<&'a str>,
    pub(crate) entry: Option<String>,
    pub(crate) set_type: Option<SetType>,
}

/// Turns the kernel's answer to a request into an [`IpsetError`].
pub(crate) fn from_kernel(ctx: Context<'_>, err: SocketError) -> IpsetError {
    let Some(errno) = err.errno() else {
        return IpsetError::Socket {
            operation: ctx.operation,
            source: err,
        };
    };
    let set = ctx.set.to_owned();
    let entry = ctx.entry.clone().unwrap_or_default();
    let refused = |reason: &str| IpsetError::EntryRefused {
        operation: ctx.operation,
        set: set.clone(),
        entry: entry.clone(),
        reason: reason.to_owned(),
    };
    match errno {
        ENOENT => IpsetError::SetMissing {
            operation: ctx.operation,
            set: if ctx.operation == "swap" || ctx.operation == "rename" {
                format!("{set} (or {})", ctx.other_set.unwrap_or("?"))
            } else {
                set
            },
        },
        EEXIST => IpsetError::SetExists {
            operation: ctx.operation,
            set,
        },
        IPSET_ERR_EXIST_SETNAME2 => IpsetError::SetExists {
            operation: ctx.operation,
            set: ctx.other_set.unwrap_or_default().to_owned(),
        },
        IPSET_ERR_BUSY | IPSET_ERR_REFERENCED => IpsetError::InUse {
            operation: ctx.operation,
            set,
        },
        IPSET_ERR_TYPE_MISMATCH => IpsetError::TypeMismatch {
            set,
            other: ctx.other_set.unwrap_or_default().to_owned(),
        },
        IPSET_ERR_EXIST if ctx.operation == "del" => IpsetError::EntryMissing { set, entry },
        IPSET_ERR_EXIST => IpsetError::EntryExists { set, entry },
        IPSET_ERR_PROTOCOL if ctx.entry.is_some() => {
            refused("the entry's shape does not match the set's type")
        }
        IPSET_ERR_INVALID_CIDR => refused("invalid prefix length"),
        IPSET_ERR_INVALID_FAMILY | IPSET_ERR_IPADDR_IPV4 | IPSET_ERR_IPADDR_IPV6 => {
            refused("address of the wrong family")
        }
        IPSET_ERR_TIMEOUT => refused("the set has no timeout extension"),
        IPSET_ERR_COMMENT => refused("the set has no comment extension"),
        // Type-specific codes start at IPSET_ERR_TYPE_SPECIFIC: for bitmaps "out of range" and
        // "range too large"; for hashes "full", "invalid element", "invalid protocol",
        // "missing protocol".
        e if e >= IPSET_ERR_TYPE_SPECIFIC => match (ctx.set_type, e - IPSET_ERR_TYPE_SPECIFIC) {
            (Some(SetType::BitmapPort), 0 | 1) => IpsetError::OutOfRange {
                operation: ctx.operation,
                set,
                entry,
            },
            (Some(_), 0) => IpsetError::SetFull { set, entry },
            (Some(_), 1) => refused("invalid element for this set"),
            (Some(_), 2) => refused("invalid protocol"),
            (Some(_), 3) => refused("missing protocol"),
            (_, n) => refused(&format!("type-specific error {n}")),
        },
        _ => IpsetError::Kernel {
            operation: ctx.operation,
            set,
            reason: match errno {
                IPSET_ERR_PROTOCOL => "protocol error".to_owned(),
                IPSET_ERR_FIND_TYPE => "the kernel lacks this set type or revision".to_owned(),
                IPSET_ERR_MAX_SETS => "too many sets".to_owned(),
                _ => std::io::Error::from_raw_os_error(errno).to_string(),
            },
            errno,
        },
    }
}
