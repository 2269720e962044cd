//! Keeping a set equal to what is wanted: the fewest adds and deletes ([`sync_set`]) for everyday
//! syncs, an atomic replace ([`replace_set`]) for full resyncs.

use std::collections::HashSet;

use crate::client::IpsetClient;
use crate::error::IpsetError;
use crate::types::{check_name, Entry, SetSpec};

/// What separates a set's members from the wanted ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetDiff {
    /// Wanted, missing: to add. Sorted.
    pub add: Vec<Entry>,
    /// Present, unwanted: to delete. Sorted.
    pub del: Vec<Entry>,
}

impl SetDiff {
    /// The difference between `current` and `desired`: O(n) with hashing.
    pub fn between<'a>(
        current: impl IntoIterator<Item = &'a Entry>,
        desired: &HashSet<Entry>,
    ) -> Self {
        let current: HashSet<Entry> = current.into_iter().copied().collect();
        let mut add: Vec<Entry> = desired.difference(&current).copied().collect();
        let mut del: Vec<Entry> = current.difference(desired).copied().collect();
        add.sort_unstable();
        del.sort_unstable();
        Self { add, del }
    }

    /// Whether the set already matches.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.del.is_empty()
    }
}

/// Makes the set `spec` describes hold exactly `desired`: creates it if missing, lists what the
/// kernel holds, deletes the unwanted entries and adds the missing ones (batched). Returns what it
/// changed. Entries are checked against the set before anything is changed.
pub fn sync_set(
    client: &mut IpsetClient,
    spec: &SetSpec,
    desired: &HashSet<Entry>,
) -> Result<SetDiff, IpsetError> {
    spec.validate()?;
    for e in desired {
        e.check_fits(
            &spec.name,
            spec.set_type,
            spec.set_type.has_family().then_some(spec.family),
            spec.port_range,
        )?;
    }
    client.create(&presized(spec, desired.len()), true)?;
    let listed = client.list(&spec.name)?;
    let diff = SetDiff::between(listed.entries.iter().map(|e| &e.entry), desired);
    client.del_many(&spec.name, &diff.del, true)?;
    client.add_many(&spec.name, &diff.add, true)?;
    Ok(diff)
}

/// `spec` with an initial hash size fitting `members` when the caller left it to the kernel: a
/// set created at the default 1024 buckets and filled with 20,000 entries is rehashed several
/// times on the way. The kernel ignores the size when the set exists already.
fn presized(spec: &SetSpec, members: usize) -> SetSpec {
    let mut s = spec.clone();
    if s.set_type != crate::types::SetType::BitmapPort && s.hashsize.is_none() && members > 1024 {
        let cap = s.maxelem.unwrap_or(65_536) as usize;
        s.hashsize = Some(members.min(cap).next_power_of_two() as u32);
    }
    s
}

/// The temporary set a replace fills: the name with `-tmp` appended, shortened to fit 31 bytes.
pub fn temporary_name(name: &str) -> String {
    const SUFFIX: &str = "-tmp";
    let mut keep = name.len().min(31 - SUFFIX.len());
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{SUFFIX}", &name[..keep])
}

/// Replaces the set's members with `desired` atomically: fills a temporary set of the same spec,
/// swaps it with the set (rules referencing the set see the new members at once, never a partial
/// set) and destroys the temporary. Creates the set first if it does not exist.
pub fn replace_set(
    client: &mut IpsetClient,
    spec: &SetSpec,
    desired: &HashSet<Entry>,
) -> Result<(), IpsetError> {
    spec.validate()?;
    let tmp_name = temporary_name(&spec.name);
    check_name(&tmp_name)?;
    let tmp = SetSpec {
        name: tmp_name.clone(),
        ..spec.clone()
    };
    for e in desired {
        e.check_fits(
            &spec.name,
            spec.set_type,
            spec.set_type.has_family().then_some(spec.family),
            spec.port_range,
        )?;
    }
    client.destroy(&tmp_name, true)?;
    client.create(&presized(&tmp, desired.len()), false)?;
    let filled = client
        .add_many(&tmp_name, desired, true)
        .and_then(|_| client.create(spec, true))
        .and_then(|()| client.swap(&tmp_name, &spec.name));
    let cleaned = client.destroy(&tmp_name, true);
    filled?;
    cleaned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_adds_what_is_missing_and_deletes_what_is_unwanted() {
        let e = |p| Entry::Port(p);
        let current = [e(1), e(2), e(3)];
        let desired: HashSet<Entry> = [e(2), e(3), e(4), e(5)].into();
        let d = SetDiff::between(&current, &desired);
        assert_eq!(d.add, vec![e(4), e(5)]);
        assert_eq!(d.del, vec![e(1)]);
        assert!(SetDiff::between(&[e(4), e(5), e(3), e(2)], &desired).is_empty());
    }

    #[test]
    fn temporary_names_fit() {
        assert_eq!(temporary_name("KUBE-CLUSTER-IP"), "KUBE-CLUSTER-IP-tmp");
        let long = "KUBE-LOAD-BALANCER-SOURCE-CIDR";
        let t = temporary_name(long);
        assert!(t.len() <= 31 && t.ends_with("-tmp") && t != long, "{t}");
    }
}
