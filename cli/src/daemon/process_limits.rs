//! Process-wide limits the daemon sets at start: open files (the userspace mode holds sockets per
//! connection) and glibc's malloc arenas (RSS at 20,000 Services).

/// Raises the soft limit on open files to the hard limit, as Go's runtime does for kube-proxy:
/// the userspace mode holds two sockets per proxied connection, and 1,024 would cap it at ~500.
pub(crate) fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("cannot raise the open files limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the open files limit: {e}"),
    }
}

/// How many malloc arenas the daemon uses. glibc gives each thread that allocates concurrently an
/// arena of its own (up to 8 per core) and keeps freed pages in each; the daemon's big, short-lived
/// buffers (a full restore's text, decoded list pages) then leave most arenas holding free memory
/// no other thread reuses. Two arenas: steady RSS at 20,000 Services 196 MiB → 140 MiB
/// (BENCHMARKS.md), with the sync thread and two tokio workers.
const MALLOC_ARENAS: i32 = 2;

/// Limits glibc's malloc arenas (see [`MALLOC_ARENAS`]), unless the operator set
/// `MALLOC_ARENA_MAX`, which glibc reads itself and which wins. Call before threads start.
pub(crate) fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: mallopt only changes glibc's tuning; called before the daemon's threads exist.
    let ok = unsafe { nix::libc::mallopt(nix::libc::M_ARENA_MAX, MALLOC_ARENAS) };
    if ok != 1 {
        tracing::debug!("mallopt(M_ARENA_MAX) refused; keeping glibc's default arenas");
    }
}
