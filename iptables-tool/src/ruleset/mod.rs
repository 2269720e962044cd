//! An in-memory iptables: restore input applied with kernel-like semantics, and a packet-flow
//! evaluator over the result.
//!
//! This is the faithful fake of the datapath that lets render and partial-sync logic be tested
//! without root: `apply_restore` commits a table all or nothing, rejects jumps to missing chains,
//! `-D` of a rule that does not exist and `-X` of a chain in use, exactly where iptables-restore
//! would. [`Ruleset::evaluate`] walks a packet through the chains.

mod eval;
mod parse;
mod rule;

use std::collections::{BTreeMap, BTreeSet};

pub use eval::{Environment, Origin, Outcome, Packet, Verdict};
pub use parse::ParseError;
pub use rule::{Match, Rule, Target};

use crate::jump::Jump;

const BUILTIN: &[(&str, &[&str])] = &[
    ("filter", &["INPUT", "FORWARD", "OUTPUT"]),
    ("nat", &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]),
    (
        "mangle",
        &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
    ),
];

fn is_builtin(table: &str, chain: &str) -> bool {
    BUILTIN
        .iter()
        .any(|(t, chains)| *t == table && chains.contains(&chain))
}

/// One table's chains.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TableRules {
    chains: BTreeMap<String, Vec<Rule>>,
}

impl TableRules {
    /// A chain's rules.
    pub fn chain(&self, name: &str) -> Option<&[Rule]> {
        self.chains.get(name).map(Vec::as_slice)
    }

    /// Every chain, by name.
    pub fn chains(&self) -> impl Iterator<Item = (&str, &[Rule])> + '_ {
        self.chains.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    fn references(&self, chain: &str) -> usize {
        self.chains
            .values()
            .flatten()
            .filter(|r| r.jump_target() == Some(chain))
            .count()
    }
}

/// The filter, nat and mangle tables of one IP family.
#[derive(Clone, Debug, PartialEq)]
pub struct Ruleset {
    tables: BTreeMap<String, TableRules>,
}

impl Default for Ruleset {
    fn default() -> Self {
        Self::new()
    }
}

fn err(line: usize, text: &str, reason: impl Into<String>) -> ParseError {
    ParseError {
        line,
        reason: reason.into(),
        text: text.to_owned(),
    }
}

impl Ruleset {
    /// Empty tables with their built-in chains.
    pub fn new() -> Self {
        let tables = BUILTIN
            .iter()
            .map(|(t, chains)| {
                let chains = chains
                    .iter()
                    .map(|c| ((*c).to_owned(), Vec::new()))
                    .collect();
                ((*t).to_owned(), TableRules { chains })
            })
            .collect();
        Self { tables }
    }

    /// A table.
    pub fn table(&self, name: &str) -> Option<&TableRules> {
        self.tables.get(name)
    }

    /// Applies iptables-restore input with `--noflush` semantics: a `:CHAIN` line creates or
    /// flushes that chain, other chains are left alone. Each table's section commits all or
    /// nothing; on error the table is unchanged (sections committed before stay committed, as with
    /// the real tool).
    pub fn apply_restore(&mut self, text: &str) -> Result<(), ParseError> {
        let mut current: Option<(String, TableRules)> = None;
        for (n, raw) in text.lines().enumerate() {
            let line_no = n + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(table) = line.strip_prefix('*') {
                if current.is_some() {
                    return Err(err(line_no, raw, "table started before COMMIT"));
                }
                let rules = self
                    .tables
                    .get(table)
                    .cloned()
                    .ok_or_else(|| err(line_no, raw, "unknown table"))?;
                current = Some((table.to_owned(), rules));
                continue;
            }
            let Some((table_name, table)) = current.as_mut() else {
                return Err(err(line_no, raw, "rule outside a table"));
            };
            if line == "COMMIT" {
                let (name, rules) = current.take().expect("inside a table");
                self.tables.insert(name, rules);
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or_default();
                if is_builtin(table_name, name) {
                    return Err(err(line_no, raw, "refusing to flush a built-in chain"));
                }
                table.chains.insert(name.to_owned(), Vec::new());
                continue;
            }
            let words = parse::tokenize(line).map_err(|e| err(line_no, raw, e))?;
            apply_command(table_name, table, &words).map_err(|e| err(line_no, raw, e))?;
        }
        if current.is_some() {
            return Err(err(0, "", "missing COMMIT"));
        }
        Ok(())
    }

    /// The table in `iptables-save` form: chain declarations, then every rule.
    pub fn save(&self, table: &str) -> Option<String> {
        let t = self.tables.get(table)?;
        let mut out = format!("*{table}\n");
        for name in t.chains.keys() {
            let policy = if is_builtin(table, name) {
                "ACCEPT"
            } else {
                "-"
            };
            out.push_str(&format!(":{name} {policy} [0:0]\n"));
        }
        for (name, rules) in &t.chains {
            for r in rules {
                out.push_str(&format!("-A {name} {r}\n"));
            }
        }
        out.push_str("COMMIT\n");
        Some(out)
    }

    /// Runs a single iptables command (`-t TABLE` then `-A/-I/-D/-N/-X/-F/-C/-S`), as the fake
    /// iptables does. `Ok(false)` for a `-C` or `-S` that finds nothing.
    pub fn command(&mut self, args: &[&str]) -> Result<bool, String> {
        let (table, rest) = match args {
            ["-t", table, rest @ ..] => (*table, rest),
            rest => ("filter", rest),
        };
        let words: Vec<String> = rest.iter().map(|s| (*s).to_owned()).collect();
        let t = self
            .tables
            .get_mut(table)
            .ok_or_else(|| format!("unknown table {table}"))?;
        match words.first().map(String::as_str) {
            Some("-C") => {
                let chain = words.get(1).ok_or("-C needs a chain")?;
                let rule = parse::parse_spec(&words[2..])?;
                Ok(t.chains
                    .get(chain)
                    .is_some_and(|rules| rules.contains(&rule)))
            }
            Some("-S") => Ok(words.get(1).is_some_and(|c| t.chains.contains_key(c))),
            _ => apply_command(table, t, &words).map(|()| true),
        }
    }

    /// Appends the jumps from built-in chains (what the applier ensures outside the restore).
    pub fn add_jumps(&mut self, jumps: &[Jump]) -> Result<(), ParseError> {
        for j in jumps {
            let table = self
                .tables
                .get_mut(j.table)
                .ok_or_else(|| err(0, j.from, "unknown table"))?;
            let line = format!("-A {} {}", j.from, j.spec());
            let words = parse::tokenize(&line).map_err(|e| err(0, &line, e))?;
            apply_command(j.table, table, &words).map_err(|e| err(0, &line, e))?;
        }
        Ok(())
    }
}

fn apply_command(table_name: &str, table: &mut TableRules, words: &[String]) -> Result<(), String> {
    let (cmd, rest) = words.split_first().ok_or("empty command")?;
    if matches!(cmd.as_str(), "-S" | "--list-rules") {
        // Listing changes nothing; restore prints it (to nowhere). A named chain must exist.
        return match rest.first() {
            Some(chain) if !table.chains.contains_key(chain) => {
                Err(format!("no chain {chain} in {table_name}"))
            }
            _ => Ok(()),
        };
    }
    let (chain, spec) = rest.split_first().ok_or("command without a chain")?;
    let check_target = |table: &TableRules, rule: &Rule| -> Result<(), String> {
        match rule.jump_target() {
            Some(t) if !table.chains.contains_key(t) => {
                Err(format!("Couldn't load target `{t}': no such chain"))
            }
            _ => Ok(()),
        }
    };
    match cmd.as_str() {
        "-A" | "--append" => {
            let rule = parse::parse_spec(spec)?;
            check_target(table, &rule)?;
            table
                .chains
                .get_mut(chain)
                .ok_or_else(|| format!("no chain {chain} in {table_name}"))?
                .push(rule);
        }
        "-I" | "--insert" => {
            let (position, spec) = match spec.first().and_then(|w| w.parse::<usize>().ok()) {
                Some(p) => (p, &spec[1..]),
                None => (1, spec),
            };
            let rule = parse::parse_spec(spec)?;
            check_target(table, &rule)?;
            let rules = table
                .chains
                .get_mut(chain)
                .ok_or_else(|| format!("no chain {chain} in {table_name}"))?;
            if position == 0 || position > rules.len() + 1 {
                return Err(format!("index {position} out of range"));
            }
            rules.insert(position - 1, rule);
        }
        "-D" | "--delete" => {
            let rule = parse::parse_spec(spec)?;
            let rules = table
                .chains
                .get_mut(chain)
                .ok_or_else(|| format!("no chain {chain} in {table_name}"))?;
            let at = rules
                .iter()
                .position(|r| *r == rule)
                .ok_or("Bad rule (does a matching rule exist in that chain?)")?;
            rules.remove(at);
        }
        "-N" | "--new-chain" => {
            if table.chains.contains_key(chain) {
                return Err(format!("chain {chain} already exists"));
            }
            table.chains.insert(chain.clone(), Vec::new());
        }
        "-F" | "--flush" => table
            .chains
            .get_mut(chain)
            .ok_or_else(|| format!("no chain {chain} in {table_name}"))?
            .clear(),
        "-X" | "--delete-chain" => {
            if is_builtin(table_name, chain) {
                return Err("cannot delete a built-in chain".into());
            }
            let rules = table
                .chains
                .get(chain)
                .ok_or_else(|| format!("no chain {chain} in {table_name}"))?;
            if !rules.is_empty() {
                return Err(format!("chain {chain} is not empty"));
            }
            if table.references(chain) > 0 {
                return Err(format!("chain {chain} is still referenced"));
            }
            table.chains.remove(chain);
        }
        other => return Err(format!("unsupported command {other}")),
    }
    Ok(())
}

/// Chains whose rule order carries no meaning (each rule matches a different address and port), so
/// partial syncs may insert into them anywhere; every other chain is compared rule for rule.
/// nat `KUBE-SERVICES` is the exception's exception: its last rule (the NodePorts jump) must stay
/// last, and [`Ruleset::equivalent_to`] checks that separately.
const ORDER_FREE: &[(&str, &str)] = &[
    ("nat", "KUBE-SERVICES"),
    ("nat", "KUBE-NODEPORTS"),
    ("filter", "KUBE-SERVICES"),
    ("filter", "KUBE-EXTERNAL-SERVICES"),
    ("filter", "KUBE-NODEPORTS"),
    ("filter", "KUBE-PROXY-FIREWALL"),
];

impl Ruleset {
    /// Whether two rulesets behave the same: the same chains, the same rules in the same order,
    /// except that the order-free shared chains are compared as multisets (with nat
    /// `KUBE-SERVICES`' last rule compared in place). Returns the first difference.
    pub fn equivalent_to(&self, other: &Ruleset) -> Result<(), String> {
        for (table_name, table) in &self.tables {
            let Some(other_table) = other.tables.get(table_name) else {
                return Err(format!("table {table_name} missing"));
            };
            let names: BTreeSet<&String> = table
                .chains
                .keys()
                .chain(other_table.chains.keys())
                .collect();
            for chain in names {
                let (Some(a), Some(b)) = (table.chains.get(chain), other_table.chains.get(chain))
                else {
                    return Err(format!("{table_name} {chain}: present on one side only"));
                };
                let order_free = ORDER_FREE
                    .iter()
                    .any(|(t, c)| t == table_name && c == chain);
                if !order_free {
                    if a != b {
                        return Err(format!("{table_name} {chain}: {a:?}\n  vs {b:?}"));
                    }
                    continue;
                }
                if table_name == "nat" && chain == "KUBE-SERVICES" && a.last() != b.last() {
                    return Err(format!(
                        "nat KUBE-SERVICES ends with {:?} vs {:?}",
                        a.last(),
                        b.last()
                    ));
                }
                let sorted = |rules: &[Rule]| {
                    let mut v: Vec<String> = rules.iter().map(|r| format!("{r:?}")).collect();
                    v.sort();
                    v
                };
                if sorted(a) != sorted(b) {
                    return Err(format!("{table_name} {chain}: different rules"));
                }
            }
        }
        Ok(())
    }
}
