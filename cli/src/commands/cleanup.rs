//! `kproxy cleanup` / `kproxy --cleanup`: remove what kproxy created, in every mode.

/// Removes what every mode left on this node (each mode's cleanup needs no running proxier); other
/// tools' rules stay.
pub(crate) fn run() -> anyhow::Result<()> {
    crate::modes::cleanup_all()
}
