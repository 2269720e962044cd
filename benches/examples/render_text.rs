//! Writes the full iptables render of the generated cluster (N services × M endpoints) to stdout,
//! for feeding iptables-restore by hand: `cargo run --release -p kproxy-benches --example
//! render_text -- 5000 10 > rules.txt`.

use std::io::Write;

use backend_iptables::Renderer;
use kproxy_benches::{build_state_streaming, iptables_config};

fn main() {
    let mut args = std::env::args().skip(1);
    let services: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let endpoints: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let (_, state) = build_state_streaming(services, endpoints);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    Renderer::new(iptables_config())
        .expect("valid config")
        .render_full_to(&state, &mut out)
        .expect("stdout");
    out.flush().expect("stdout");
}
