//! `kproxy state`: print the desired state computed from manifests.

use std::io::Write;

use crate::args::StateArgs;
use crate::input;

/// Loads, builds and prints the state.
pub(crate) fn run(args: &StateArgs) -> anyhow::Result<()> {
    crate::modes::check_built(args.proxy_mode)?;
    let input = input::load(&args.manifests)?;
    let state = input::build_state(&input, args.ip_family);
    let text = proxy_core::describe(&state);
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}
