//! A faithful fake of [`IptablesOps`] over the in-memory [`Ruleset`], for tests without root.
//!
//! It applies restores with the kernel's all-or-nothing semantics, answers saves from its state, and
//! records every call, so tests can assert both the resulting rules and how many processes the real
//! proxier would have started. Failures can be injected.

use std::io::{self, Write};

use crate::exec::{ExecError, IptablesOps};
use crate::ruleset::Ruleset;

/// One call the proxier made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `iptables-restore` with this input.
    Restore(String),
    /// `iptables-save -t` this table.
    Save(String),
    /// `iptables` with these arguments.
    Run(Vec<String>),
    /// `iptables -t <table> -S <chain>`.
    ListChain(String, String),
}

/// The fake.
#[derive(Debug, Default)]
pub struct FakeIptables {
    /// The tables.
    pub rules: Ruleset,
    /// Every call, in order.
    pub calls: Vec<Call>,
    /// Make the next restore fail (as iptables-restore would, changing nothing).
    pub fail_next_restore: bool,
}

impl FakeIptables {
    /// Empty tables.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many restores were run.
    pub fn restores(&self) -> usize {
        self.calls
            .iter()
            .filter(|c| matches!(c, Call::Restore(_)))
            .count()
    }
}

fn failed(program: &str, stderr: String, line: Option<usize>) -> ExecError {
    ExecError::Failed {
        program: program.to_owned(),
        status: "exit status: 1".into(),
        stderr,
        line,
    }
}

impl IptablesOps for FakeIptables {
    fn restore(
        &mut self,
        write: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> Result<(), ExecError> {
        let mut buf = Vec::new();
        write(&mut buf).map_err(|source| ExecError::Write {
            program: "fake-iptables-restore".into(),
            source,
        })?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        self.calls.push(Call::Restore(text.clone()));
        if std::mem::take(&mut self.fail_next_restore) {
            return Err(failed(
                "fake-iptables-restore",
                "injected failure".into(),
                Some(1),
            ));
        }
        self.rules
            .apply_restore(&text)
            .map_err(|e| failed("fake-iptables-restore", e.to_string(), Some(e.line)))
    }

    fn save(&mut self, table: &str) -> Result<String, ExecError> {
        self.calls.push(Call::Save(table.to_owned()));
        self.rules
            .save(table)
            .ok_or_else(|| failed("fake-iptables-save", format!("no table {table}"), None))
    }

    fn list_chain(&mut self, table: &str, chain: &str) -> Result<String, ExecError> {
        self.calls
            .push(Call::ListChain(table.to_owned(), chain.to_owned()));
        let saved = self
            .rules
            .save(table)
            .ok_or_else(|| failed("fake-iptables", format!("no table {table}"), None))?;
        let prefix = format!("-A {chain} ");
        let mut out = format!("-N {chain}\n");
        for line in saved.lines().filter(|l| l.starts_with(&prefix)) {
            out.push_str(line);
            out.push('\n');
        }
        Ok(out)
    }

    fn run(&mut self, args: &[&str]) -> Result<bool, ExecError> {
        self.calls
            .push(Call::Run(args.iter().map(|s| (*s).to_owned()).collect()));
        Ok(self.rules.command(args).unwrap_or(false))
    }
}

/// A [`FakeIptables`] shared between a test and the proxier that owns its boxed copy: clones see
/// the same tables and calls.
#[derive(Debug, Clone, Default)]
pub struct SharedFake(pub std::sync::Arc<std::sync::Mutex<FakeIptables>>);

impl SharedFake {
    /// Locks the fake for inspection (a panicked holder's state is still returned).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, FakeIptables> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl IptablesOps for SharedFake {
    fn restore(
        &mut self,
        write: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> Result<(), ExecError> {
        self.lock().restore(write)
    }
    fn save(&mut self, table: &str) -> Result<String, ExecError> {
        self.lock().save(table)
    }
    fn run(&mut self, args: &[&str]) -> Result<bool, ExecError> {
        self.lock().run(args)
    }
    fn list_chain(&mut self, table: &str, chain: &str) -> Result<String, ExecError> {
        self.lock().list_chain(table, chain)
    }
}
