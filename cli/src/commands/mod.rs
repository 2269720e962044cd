//! One module per subcommand.

pub(crate) mod cleanup;
pub(crate) mod render;
pub(crate) mod state;
pub(crate) mod sync;
