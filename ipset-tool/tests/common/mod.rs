//! Network namespaces for tests against the real kernel: each test gets fresh ones, deleted when
//! dropped (also on panic). Needs root; [`Netns::new`] returns `None`, saying why, elsewhere.
#![allow(dead_code)]

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A named network namespace (`ip netns`).
pub struct Netns {
    pub name: String,
}

pub fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// A fresh namespace for `test`, with loopback up; `None` (printing why) without root.
    pub fn new(test: &str) -> Option<Self> {
        if !fixtures::running_as_root() {
            eprintln!("skipping kernel test {test}: not root");
            return None;
        }
        let name = format!(
            "kpi-{}-{}-{}",
            test.chars().take(10).collect::<String>(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        if let Err(e) = sh(&["ip", "netns", "add", &name]) {
            eprintln!("skipping kernel test {test}: {e}");
            return None;
        }
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]).expect("lo up");
        Some(ns)
    }

    /// Runs a command in the namespace; its stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs `f` on a thread inside the namespace (sockets it opens stay in it).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(path).expect("netns file");
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in the namespace")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}

/// Whether the `ipset` CLI is installed (cross-checks skip without it).
pub fn have_ipset_cli() -> bool {
    Command::new("ipset").arg("--version").output().is_ok()
}
