//! The jumps from the built-in chains into a mode's chains, and the one way every mode ensures
//! them.
//!
//! A restore of a mode's own chains never touches the built-in chains (flushing `nat PREROUTING`
//! would cut every other tool's rules), so each mode adds its jumps one by one and checks them
//! again on every full sync: a flushed built-in chain would otherwise stay without them until a
//! restart. Presence is judged by meaning, not by text: iptables prints a rule in its own order
//! and quoting (iptables-nft and legacy differ), so a listed rule is the jump when it has the same
//! target and the same words, in any order.

use std::fmt::Write as _;

use crate::exec::{ExecError, IptablesOps};

/// Where in its built-in chain a jump goes when it is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// Inserted at the top (`-I <from> 1`): evaluated before other tools' rules. Jumps listed
    /// first stay first.
    First,
    /// Appended (`-A <from>`): after every other rule, for catch-alls such as userspace mode's
    /// node-port jumps.
    Last,
}

/// One `-A <built-in> … -j <chain of a mode>` rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Jump {
    /// The table (`nat`, `filter`, `mangle`).
    pub table: &'static str,
    /// The built-in chain (`PREROUTING`, `INPUT`, …).
    pub from: &'static str,
    /// The mode's chain.
    pub to: &'static str,
    /// The rule's comment (`None` for a jump without one, e.g. the localnet guard).
    pub comment: Option<&'static str>,
    /// Extra matches, e.g. `-m conntrack --ctstate NEW` (empty for none).
    pub matches: &'static str,
    /// Whether the matches are written before the comment (upstream's userspace proxier's
    /// order); only the text differs, not the rule.
    pub matches_first: bool,
    /// Where a missing jump is added.
    pub position: Position,
}

impl Jump {
    /// A jump with a comment and no other match, inserted first.
    pub const fn commented(
        table: &'static str,
        from: &'static str,
        to: &'static str,
        comment: &'static str,
    ) -> Self {
        Self {
            table,
            from,
            to,
            comment: Some(comment),
            matches: "",
            matches_first: false,
            position: Position::First,
        }
    }

    /// The same jump with extra matches written after the comment.
    pub const fn with_matches(mut self, matches: &'static str) -> Self {
        self.matches = matches;
        self
    }

    /// The same jump with its matches written before the comment.
    pub const fn matches_first(mut self) -> Self {
        self.matches_first = true;
        self
    }

    /// The same jump, appended rather than inserted when it is missing.
    pub const fn last(mut self) -> Self {
        self.position = Position::Last;
        self
    }

    /// The rule spec after `-A <from> `, as iptables-save prints it.
    pub fn spec(&self) -> String {
        let mut s = String::new();
        let matches = |s: &mut String| {
            if !self.matches.is_empty() {
                s.push_str(self.matches);
                s.push(' ');
            }
        };
        if self.matches_first {
            matches(&mut s);
        }
        if let Some(c) = self.comment {
            let _ = write!(s, "-m comment --comment \"{c}\" ");
        }
        if !self.matches_first {
            matches(&mut s);
        }
        s.push_str("-j ");
        s.push_str(self.to);
        s
    }

    /// Whether `listed`, one rule of `from` as `iptables -S` or `iptables-save` prints it (with
    /// or without the leading `-A <from> `), is this jump: the same words in any order.
    pub fn is_listed_as(&self, listed: &str) -> bool {
        let rest = listed.strip_prefix("-A ").map_or(listed, |r| {
            r.strip_prefix(self.from)
                .and_then(|r| r.strip_prefix(' '))
                .unwrap_or("")
        });
        if rest.is_empty() {
            return false;
        }
        let mut have = split_spec(rest);
        let spec = self.spec();
        let mut want = split_spec(&spec);
        have.sort_unstable();
        want.sort_unstable();
        have == want
    }
}

/// Splits a rule spec into arguments as a shell would for these specs: words separated by
/// spaces, `"quoted words"` kept together without their quotes. For `iptables -C/-I/-D <chain>
/// <spec>` with a spec written as iptables-save prints it.
pub fn split_spec(spec: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = spec.trim();
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            out.push(&quoted[..end]);
            rest = quoted.get(end + 1..).unwrap_or("").trim_start();
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            out.push(&rest[..end]);
            rest = rest[end..].trim_start();
        }
    }
    out
}

/// The target of a rule (`-j X`, `--jump X`, `-g X`), from its saved text.
pub fn rule_target(rule: &str) -> Option<&str> {
    let mut words = rule.split_whitespace();
    while let Some(w) = words.next() {
        if matches!(w, "-j" | "--jump" | "-g" | "--goto") {
            return words.next();
        }
    }
    None
}

/// An iptables call made while checking or adding jumps, and which one.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {source}")]
pub struct JumpError {
    /// What was being done, e.g. `listing PREROUTING in the nat table`.
    pub operation: String,
    /// The failed call.
    #[source]
    pub source: ExecError,
}

impl JumpError {
    /// Whether iptables could not be started at all (not installed: retrying cannot help).
    pub fn is_spawn(&self) -> bool {
        matches!(self.source, ExecError::Spawn { .. })
    }
}

/// The jumps of `jumps` that no rule of their built-in chain is: one `iptables -S <chain>` per
/// built-in chain named (cheap even with 20,000 Services' rules in the table).
pub fn missing_jumps<'a>(
    iptables: &mut dyn IptablesOps,
    jumps: &'a [Jump],
) -> Result<Vec<&'a Jump>, JumpError> {
    let mut builtins: Vec<(&str, &str)> = Vec::new();
    for j in jumps {
        if !builtins.contains(&(j.table, j.from)) {
            builtins.push((j.table, j.from));
        }
    }
    let mut missing = Vec::new();
    for (table, from) in builtins {
        let listed = iptables
            .list_chain(table, from)
            .map_err(|source| JumpError {
                operation: format!("listing {from} in the {table} table"),
                source,
            })?;
        let prefix = format!("-A {from} ");
        missing.extend(
            jumps
                .iter()
                .filter(|j| j.table == table && j.from == from)
                .filter(|j| {
                    !listed
                        .lines()
                        .filter(|l| l.starts_with(&prefix))
                        .any(|l| j.is_listed_as(l))
                }),
        );
    }
    Ok(missing)
}

/// Writes the restore lines that add `missing` jumps of `table`: [`Position::First`] ones with
/// `-I <from> 1` in reverse (so a chain that had none ends up in the listed order), then
/// [`Position::Last`] ones with `-A`. Writes nothing for a table without missing jumps.
pub fn write_additions(table: &str, missing: &[&Jump], out: &mut String) {
    let of_table = || missing.iter().filter(|j| j.table == table);
    for j in of_table()
        .filter(|j| j.position == Position::First)
        .collect::<Vec<_>>()
        .iter()
        .rev()
    {
        let _ = writeln!(out, "-I {} 1 {}", j.from, j.spec());
    }
    for j in of_table().filter(|j| j.position == Position::Last) {
        let _ = writeln!(out, "-A {} {}", j.from, j.spec());
    }
}

/// Adds the jumps of `jumps` that are missing, with one restore for every table; returns the
/// ones it added (for the caller's log: a missing jump means someone flushed a built-in chain).
pub fn ensure_jumps<'a>(
    iptables: &mut dyn IptablesOps,
    jumps: &'a [Jump],
) -> Result<Vec<&'a Jump>, JumpError> {
    let missing = missing_jumps(iptables, jumps)?;
    if missing.is_empty() {
        return Ok(missing);
    }
    let mut text = String::new();
    let mut tables: Vec<&str> = Vec::new();
    for j in &missing {
        if !tables.contains(&j.table) {
            tables.push(j.table);
        }
    }
    for table in tables {
        let _ = writeln!(text, "*{table}");
        write_additions(table, &missing, &mut text);
        text.push_str("COMMIT\n");
    }
    iptables
        .restore(&mut |w| w.write_all(text.as_bytes()))
        .map_err(|source| JumpError {
            operation: "adding the jumps from the built-in chains".into(),
            source,
        })?;
    Ok(missing)
}

/// `table from -> to` for each jump, for a log line.
pub fn describe(jumps: &[&Jump]) -> String {
    jumps
        .iter()
        .map(|j| format!("{} {} -> {}", j.table, j.from, j.to))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORTALS: Jump = Jump::commented(
        "nat",
        "PREROUTING",
        "KUBE-SERVICES",
        "kubernetes service portals",
    );

    #[test]
    fn specs_split_like_a_shell() {
        assert_eq!(
            split_spec("-m comment --comment \"a b; c\" -j X"),
            ["-m", "comment", "--comment", "a b; c", "-j", "X"]
        );
    }

    #[test]
    fn a_listed_rule_is_the_jump_whatever_its_word_order() {
        let j = PORTALS.with_matches("-m conntrack --ctstate NEW");
        assert_eq!(
            j.spec(),
            "-m comment --comment \"kubernetes service portals\" -m conntrack --ctstate NEW -j KUBE-SERVICES"
        );
        assert!(j.is_listed_as(&format!("-A PREROUTING {}", j.spec())));
        // iptables-nft prints the comment last.
        assert!(j.is_listed_as(
            "-A PREROUTING -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
        ));
        // Another chain, another target or fewer matches is not the jump.
        assert!(!j.is_listed_as(&format!("-A OUTPUT {}", j.spec())));
        assert!(!j.is_listed_as(&format!("-A PREROUTING {}", PORTALS.spec())));
        assert!(!PORTALS.is_listed_as(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-NODEPORTS"
        ));
    }

    #[test]
    fn additions_keep_the_listed_order_first_and_append_the_last() {
        let a = PORTALS;
        let b = Jump::commented("nat", "PREROUTING", "KUBE-B", "b");
        let c = Jump::commented("nat", "PREROUTING", "KUBE-C", "c")
            .with_matches("-m addrtype --dst-type LOCAL")
            .matches_first()
            .last();
        let mut out = String::new();
        write_additions("nat", &[&a, &b, &c], &mut out);
        assert_eq!(
            out,
            "-I PREROUTING 1 -m comment --comment \"b\" -j KUBE-B\n\
             -I PREROUTING 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A PREROUTING -m addrtype --dst-type LOCAL -m comment --comment \"c\" -j KUBE-C\n"
        );
        let mut none = String::new();
        write_additions("filter", &[&a], &mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn targets_are_read_from_saved_rules() {
        assert_eq!(
            rule_target("-A X -m comment --comment y -j KUBE-A"),
            Some("KUBE-A")
        );
        assert_eq!(rule_target("-A X -g KUBE-B"), Some("KUBE-B"));
        assert_eq!(rule_target("-A X -p tcp"), None);
    }
}
