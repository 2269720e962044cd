//! The iptables tool as kproxy's modes use it, apart from any one mode: running `iptables-restore`,
//! `-save` and single commands for a variant (nft or legacy) and a family; the jumps from the
//! built-in chains and the one way to ensure them; removing a mode's leftovers at a handover or a
//! cleanup; and, for tests, an in-memory iptables with a packet-flow evaluator and a fake
//! [`IptablesOps`] over it.
//!
//! iptables mode, IPVS mode (its masquerading and filtering rules) and userspace mode (its
//! REDIRECTs) all program iptables; none of them depends on another for it.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![deny(rustdoc::broken_intra_doc_links)]

pub mod exec;
#[cfg(feature = "test-util")]
pub mod fake;
pub mod jump;
pub mod leftovers;
#[cfg(feature = "test-util")]
pub mod ruleset;

pub use exec::{detect_variant, ExecError, IptablesCmd, IptablesOps, Variant};
pub use jump::{ensure_jumps, missing_jumps, Jump, JumpError, Position};
pub use leftovers::{remove_leftovers, Footprint, Keep, LeftoverError, Removed};
