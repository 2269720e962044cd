//! [`IpsetClient`]: ipset's commands over a netlink socket of the caller's network namespace.

use std::collections::HashMap;

use kproxy_netlink::ipset::{
    DataAttribute, IpsetAttribute, IpsetCommand, IpsetMessage, FLAG_LIST_SETNAME, IPSET_PROTOCOL,
};
use kproxy_netlink::socket::{NetlinkSocket, SocketError};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};

use crate::error::{from_kernel, Context, IpsetError};
use crate::types::{check_name, Entry, EntryOptions, SetFamily, SetSpec, SetType};

const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

/// How many bytes of entries go in one batched add or delete: well under the socket's send
/// buffer, large enough that a 20,000-entry set takes a few dozen messages.
const BATCH_BYTES: usize = 48 * 1024;

/// A set as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedSet {
    /// The name.
    pub name: String,
    /// The type's name as the kernel has it (e.g. `hash:ip,port`).
    pub type_name: String,
    /// The type, when kproxy knows it.
    pub set_type: Option<SetType>,
    /// The type's revision.
    pub revision: u8,
    /// The family (`None` for `bitmap:port`).
    pub family: Option<SetFamily>,
    /// `hashsize` (hash types).
    pub hashsize: Option<u32>,
    /// `maxelem` (hash types).
    pub maxelem: Option<u32>,
    /// The port range (`bitmap:port`).
    pub port_range: Option<(u16, u16)>,
    /// The default timeout, when the set has the timeout extension.
    pub timeout: Option<u32>,
    /// Whether entries may carry comments.
    pub comment: bool,
    /// How many rules or sets reference it.
    pub references: u32,
    /// The members (members of a type kproxy does not know are left out).
    pub entries: Vec<ListedEntry>,
}

/// One listed member with its extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedEntry {
    /// The member.
    pub entry: Entry,
    /// Its comment, if any.
    pub comment: Option<String>,
    /// Seconds left before it expires, if the set has timeouts.
    pub timeout: Option<u32>,
}

/// What is known of a set's type (from a create or a header request), to check entries before
/// they are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SetShape {
    set_type: SetType,
    family: Option<SetFamily>,
    port_range: Option<(u16, u16)>,
}

/// ipset over netlink, in the network namespace the client was opened in.
///
/// Every command names the set (and the entry) in its error. Entries are checked against the
/// set's type before anything is sent: the client learns a set's type when it creates it, or asks
/// the kernel once (`IPSET_CMD_HEADER`) as the CLI does.
#[derive(Debug)]
pub struct IpsetClient {
    socket: NetlinkSocket,
    protocol: u8,
    revisions: HashMap<(SetType, u8), u8>,
    shapes: HashMap<String, SetShape>,
}

fn message(
    command: IpsetCommand,
    flags: u16,
    attrs: Vec<IpsetAttribute>,
) -> NetlinkMessage<IpsetMessage> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(IpsetMessage::request(command, attrs)),
    )
}

fn set_name(name: &str) -> IpsetAttribute {
    IpsetAttribute::SetName(name.to_owned())
}

impl IpsetClient {
    /// Opens a socket and negotiates the protocol: the kernel must speak version 7 (every kernel
    /// since 3.x does; older ones answer with a lower maximum).
    pub fn open() -> Result<Self, IpsetError> {
        let socket =
            NetlinkSocket::open(netlink_sys_protocol()).map_err(|source| IpsetError::Socket {
                operation: "open",
                source,
            })?;
        let mut client = Self {
            socket,
            protocol: 0,
            revisions: HashMap::new(),
            shapes: HashMap::new(),
        };
        let answers = client.send(
            "protocol",
            message(IpsetCommand::Protocol, NLM_F_REQUEST | NLM_F_ACK, vec![]),
            "",
            None,
        )?;
        let (mut max, mut min) = (None, None);
        for a in answers.iter().flat_map(|m| &m.attributes) {
            match a {
                IpsetAttribute::Protocol(p) => max = Some(*p),
                IpsetAttribute::RevisionMin(p) => min = Some(*p),
                _ => {}
            }
        }
        let max = max.ok_or_else(|| IpsetError::Unexpected {
            operation: "protocol",
            reason: "no protocol version in the answer".into(),
        })?;
        if max < IPSET_PROTOCOL || min.is_some_and(|m| m > IPSET_PROTOCOL) {
            return Err(IpsetError::Unexpected {
                operation: "protocol",
                reason: format!(
                    "the kernel speaks ipset protocol {}-{max}, kproxy speaks {IPSET_PROTOCOL}",
                    min.unwrap_or(max)
                ),
            });
        }
        client.protocol = max;
        Ok(client)
    }

    /// The protocol version the kernel offered.
    pub fn protocol(&self) -> u8 {
        self.protocol
    }

    fn send(
        &mut self,
        operation: &'static str,
        msg: NetlinkMessage<IpsetMessage>,
        set: &str,
        entry: Option<&Entry>,
    ) -> Result<Vec<IpsetMessage>, IpsetError> {
        self.send_ctx(operation, msg, set, None, entry)
    }

    fn send_ctx(
        &mut self,
        operation: &'static str,
        msg: NetlinkMessage<IpsetMessage>,
        set: &str,
        other_set: Option<&str>,
        entry: Option<&Entry>,
    ) -> Result<Vec<IpsetMessage>, IpsetError> {
        self.socket
            .request(msg, operation)
            .map_err(|e: SocketError| {
                let set_type = self.shapes.get(set).map(|s| s.set_type);
                from_kernel(
                    Context {
                        operation,
                        set,
                        other_set,
                        entry: entry.map(|e| e.to_string()),
                        set_type: set_type.or(entry.map(|e| e.set_type())),
                    },
                    e,
                )
            })
    }

    /// The newest revision of `set_type` the kernel has for `family` (asked once, then cached).
    fn revision(&mut self, set_type: SetType, family: u8) -> Result<u8, IpsetError> {
        if let Some(r) = self.revisions.get(&(set_type, family)) {
            return Ok(*r);
        }
        let msg = message(
            IpsetCommand::Type,
            NLM_F_REQUEST | NLM_F_ACK,
            vec![
                IpsetAttribute::TypeName(set_type.name().into()),
                IpsetAttribute::Family(family),
            ],
        );
        let answers = self.send("type", msg, set_type.name(), None)?;
        let revision = answers
            .iter()
            .flat_map(|m| &m.attributes)
            .find_map(|a| match a {
                IpsetAttribute::Revision(r) => Some(*r),
                _ => None,
            })
            .ok_or_else(|| IpsetError::Unexpected {
                operation: "type",
                reason: format!("no revision for {set_type}"),
            })?;
        self.revisions.insert((set_type, family), revision);
        Ok(revision)
    }

    /// Creates a set. With `exist_ok`, an existing set of the same type and options is not an
    /// error (the kernel still refuses one that differs).
    pub fn create(&mut self, spec: &SetSpec, exist_ok: bool) -> Result<(), IpsetError> {
        spec.validate()?;
        let family = if spec.set_type.has_family() {
            spec.family.nfproto()
        } else {
            kproxy_netlink::ipset::NFPROTO_UNSPEC
        };
        let revision = self.revision(spec.set_type, family)?;
        let flags =
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | if exist_ok { 0 } else { NLM_F_EXCL };
        let msg = message(
            IpsetCommand::Create,
            flags,
            vec![
                set_name(&spec.name),
                IpsetAttribute::TypeName(spec.set_type.name().into()),
                IpsetAttribute::Revision(revision),
                IpsetAttribute::Family(family),
                IpsetAttribute::Data(spec.create_data()),
            ],
        );
        self.send("create", msg, &spec.name, None)?;
        self.shapes.insert(
            spec.name.clone(),
            SetShape {
                set_type: spec.set_type,
                family: spec.set_type.has_family().then_some(spec.family),
                port_range: spec.port_range,
            },
        );
        Ok(())
    }

    /// Destroys a set. With `missing_ok`, a set that does not exist is not an error.
    pub fn destroy(&mut self, name: &str, missing_ok: bool) -> Result<(), IpsetError> {
        check_name(name)?;
        let msg = message(
            IpsetCommand::Destroy,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL,
            vec![set_name(name)],
        );
        match self.send("destroy", msg, name, None) {
            Err(IpsetError::SetMissing { .. }) if missing_ok => {}
            other => {
                other?;
            }
        }
        self.shapes.remove(name);
        Ok(())
    }

    /// Removes every member of a set.
    pub fn flush(&mut self, name: &str) -> Result<(), IpsetError> {
        check_name(name)?;
        let msg = message(
            IpsetCommand::Flush,
            NLM_F_REQUEST | NLM_F_ACK,
            vec![set_name(name)],
        );
        self.send("flush", msg, name, None).map(drop)
    }

    /// Renames a set (`to` must not exist).
    pub fn rename(&mut self, from: &str, to: &str) -> Result<(), IpsetError> {
        check_name(from)?;
        check_name(to)?;
        let msg = message(
            IpsetCommand::Rename,
            NLM_F_REQUEST | NLM_F_ACK,
            vec![set_name(from), IpsetAttribute::TypeName(to.into())],
        );
        self.send_ctx("rename", msg, from, Some(to), None)?;
        if let Some(shape) = self.shapes.remove(from) {
            self.shapes.insert(to.to_owned(), shape);
        }
        Ok(())
    }

    /// Swaps two sets of the same type: each name then holds the other's members. What makes an
    /// atomic replace possible: rules referencing `b` see the new members at once.
    pub fn swap(&mut self, a: &str, b: &str) -> Result<(), IpsetError> {
        check_name(a)?;
        check_name(b)?;
        let msg = message(
            IpsetCommand::Swap,
            NLM_F_REQUEST | NLM_F_ACK,
            vec![set_name(a), IpsetAttribute::TypeName(b.into())],
        );
        self.send_ctx("swap", msg, a, Some(b), None).map(drop)
    }

    /// What the client knows of a set's type, asking the kernel (`IPSET_CMD_HEADER`) once.
    fn shape(&mut self, name: &str) -> Result<SetShape, IpsetError> {
        if let Some(s) = self.shapes.get(name) {
            return Ok(*s);
        }
        let listed = self.list(name)?;
        Ok(self.shapes[&listed.name])
    }

    fn check_entry(&mut self, set: &str, entry: &Entry) -> Result<(), IpsetError> {
        check_name(set)?;
        let shape = self.shape(set)?;
        entry.check_fits(set, shape.set_type, shape.family, shape.port_range)
    }

    /// Adds an entry. With `exist_ok`, an entry already present is not an error.
    pub fn add(
        &mut self,
        set: &str,
        entry: &Entry,
        options: &EntryOptions,
        exist_ok: bool,
    ) -> Result<(), IpsetError> {
        self.check_entry(set, entry)?;
        self.send_entry(IpsetCommand::Add, set, entry, options, exist_ok)
    }

    /// Deletes an entry. With `missing_ok`, an entry that is not there is not an error.
    pub fn del(&mut self, set: &str, entry: &Entry, missing_ok: bool) -> Result<(), IpsetError> {
        self.check_entry(set, entry)?;
        self.send_entry(
            IpsetCommand::Del,
            set,
            entry,
            &EntryOptions::default(),
            missing_ok,
        )
    }

    /// One add or del of one entry (already checked); `tolerant`: no `NLM_F_EXCL`, so a present
    /// entry (add) or an absent one (del) is not an error.
    fn send_entry(
        &mut self,
        command: IpsetCommand,
        set: &str,
        entry: &Entry,
        options: &EntryOptions,
        tolerant: bool,
    ) -> Result<(), IpsetError> {
        let operation = if command == IpsetCommand::Add {
            "add"
        } else {
            "del"
        };
        let mut data = entry.to_data(options);
        data.push(DataAttribute::LineNo(0));
        let flags = NLM_F_REQUEST | NLM_F_ACK | if tolerant { 0 } else { NLM_F_EXCL };
        let msg = message(
            command,
            flags,
            vec![set_name(set), IpsetAttribute::Data(data)],
        );
        self.send(operation, msg, set, Some(entry)).map(drop)
    }

    /// Whether `entry` is in the set.
    pub fn test(&mut self, set: &str, entry: &Entry) -> Result<bool, IpsetError> {
        self.check_entry(set, entry)?;
        let data = entry.to_data(&EntryOptions::default());
        let msg = message(
            IpsetCommand::Test,
            NLM_F_REQUEST | NLM_F_ACK,
            vec![set_name(set), IpsetAttribute::Data(data)],
        );
        match self.send("test", msg, set, Some(entry)) {
            Ok(_) => Ok(true),
            // The kernel answers "not a member" with IPSET_ERR_EXIST.
            Err(IpsetError::EntryExists { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds many entries. With `exist_ok` (what syncs use), in few messages (`IPSET_ATTR_ADT`
    /// batches), present entries skipped; without it, one message per entry, so the first
    /// duplicate is named exactly. Every entry is checked against the set first, so a misfit
    /// sends nothing. If the kernel refuses an entry of a batch, the batch is replayed one entry
    /// at a time to name it; entries before it stay added.
    pub fn add_many<'e>(
        &mut self,
        set: &str,
        entries: impl IntoIterator<Item = &'e Entry>,
        exist_ok: bool,
    ) -> Result<usize, IpsetError> {
        self.batch(IpsetCommand::Add, set, entries, exist_ok)
    }

    /// Deletes many entries in few messages; with `missing_ok`, absent ones are skipped.
    pub fn del_many<'e>(
        &mut self,
        set: &str,
        entries: impl IntoIterator<Item = &'e Entry>,
        missing_ok: bool,
    ) -> Result<usize, IpsetError> {
        self.batch(IpsetCommand::Del, set, entries, missing_ok)
    }

    fn batch<'e>(
        &mut self,
        command: IpsetCommand,
        set: &str,
        entries: impl IntoIterator<Item = &'e Entry>,
        tolerant: bool,
    ) -> Result<usize, IpsetError> {
        check_name(set)?;
        let shape = self.shape(set)?;
        let entries: Vec<&Entry> = entries.into_iter().collect();
        for e in &entries {
            e.check_fits(set, shape.set_type, shape.family, shape.port_range)?;
        }
        let operation = if command == IpsetCommand::Add {
            "add"
        } else {
            "del"
        };
        let flags = NLM_F_REQUEST | NLM_F_ACK | if tolerant { 0 } else { NLM_F_EXCL };
        if !tolerant {
            // A batch is not atomic: entries before a refused one stay applied. Without tolerance
            // a replay could not tell them from real duplicates, so go one by one.
            for entry in &entries {
                self.send_entry(command, set, entry, &EntryOptions::default(), false)?;
            }
            return Ok(entries.len());
        }
        let mut start = 0;
        while start < entries.len() {
            let mut bytes = 0;
            let mut adt = Vec::new();
            let mut end = start;
            while end < entries.len() && bytes < BATCH_BYTES {
                let data = entries[end].to_data(&EntryOptions::default());
                bytes += 8 + data.len() * 16;
                adt.push(data);
                end += 1;
            }
            // The kernel takes a batch only with a command-level line number.
            let msg = message(
                command,
                flags,
                vec![
                    set_name(set),
                    IpsetAttribute::LineNo(0),
                    IpsetAttribute::Adt(adt),
                ],
            );
            if let Err(e) = self.send(operation, msg, set, None) {
                // Name the entry: replay the batch one by one, tolerant as the batch was (the
                // entries before the refused one are already applied).
                tracing::debug!(
                    "ipset {operation} batch on {set} failed ({e}); replaying one by one"
                );
                for entry in &entries[start..end] {
                    self.send_entry(command, set, entry, &EntryOptions::default(), true)?;
                }
                tracing::warn!(
                    "ipset {operation} batch on {set} failed ({e}), one by one it did not"
                );
            }
            start = end;
        }
        Ok(entries.len())
    }

    /// Lists one set with its members.
    pub fn list(&mut self, name: &str) -> Result<ListedSet, IpsetError> {
        check_name(name)?;
        let msg = message(
            IpsetCommand::List,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP,
            vec![set_name(name)],
        );
        let answers = self.send("list", msg, name, None)?;
        let mut sets = self.collect_sets(answers);
        sets.pop().ok_or_else(|| IpsetError::SetMissing {
            operation: "list",
            set: name.to_owned(),
        })
    }

    /// Lists every set with its members.
    pub fn list_all(&mut self) -> Result<Vec<ListedSet>, IpsetError> {
        let msg = message(
            IpsetCommand::List,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP,
            vec![],
        );
        let answers = self.send("list", msg, "", None)?;
        Ok(self.collect_sets(answers))
    }

    /// The names of every set.
    pub fn list_names(&mut self) -> Result<Vec<String>, IpsetError> {
        let msg = message(
            IpsetCommand::List,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP,
            vec![IpsetAttribute::Flags(FLAG_LIST_SETNAME)],
        );
        let answers = self.send("list", msg, "", None)?;
        let mut names: Vec<String> = Vec::new();
        for a in answers.iter().flat_map(|m| &m.attributes) {
            if let IpsetAttribute::SetName(n) = a {
                if names.last() != Some(n) {
                    names.push(n.clone());
                }
            }
        }
        Ok(names)
    }

    /// Folds list answers (a set may span several messages, the first with its header) into sets,
    /// and remembers each set's shape.
    fn collect_sets(&mut self, answers: Vec<IpsetMessage>) -> Vec<ListedSet> {
        let mut sets: Vec<ListedSet> = Vec::new();
        for m in answers {
            let Some(name) = m.attributes.iter().find_map(|a| match a {
                IpsetAttribute::SetName(n) => Some(n.clone()),
                _ => None,
            }) else {
                continue;
            };
            if sets.last().is_none_or(|s| s.name != name) {
                sets.push(ListedSet {
                    name,
                    type_name: String::new(),
                    set_type: None,
                    revision: 0,
                    family: None,
                    hashsize: None,
                    maxelem: None,
                    port_range: None,
                    timeout: None,
                    comment: false,
                    references: 0,
                    entries: Vec::new(),
                });
            }
            let set = sets.last_mut().expect("just pushed");
            let mut members = Vec::new();
            for a in m.attributes {
                match a {
                    IpsetAttribute::TypeName(t) => {
                        set.set_type = SetType::from_name(&t);
                        set.type_name = t;
                    }
                    IpsetAttribute::Revision(r) => set.revision = r,
                    IpsetAttribute::Family(f) => set.family = SetFamily::from_listed(f),
                    IpsetAttribute::Data(header) => read_header(set, &header),
                    IpsetAttribute::Adt(entries) => members = entries,
                    _ => {}
                }
            }
            if let Some(t) = set.set_type {
                for data in members {
                    let Some(entry) = Entry::from_data(t, &data) else {
                        continue;
                    };
                    let mut listed = ListedEntry {
                        entry,
                        comment: None,
                        timeout: None,
                    };
                    for a in data {
                        match a {
                            DataAttribute::Comment(c) => listed.comment = Some(c),
                            DataAttribute::Timeout(t) => listed.timeout = Some(t),
                            _ => {}
                        }
                    }
                    set.entries.push(listed);
                }
            }
        }
        for s in &sets {
            if let Some(set_type) = s.set_type {
                self.shapes.insert(
                    s.name.clone(),
                    SetShape {
                        set_type,
                        family: s.family,
                        port_range: s.port_range,
                    },
                );
            }
        }
        sets
    }
}

fn read_header(set: &mut ListedSet, header: &[DataAttribute]) {
    let (mut from, mut to) = (None, None);
    for a in header {
        match *a {
            DataAttribute::HashSize(v) => set.hashsize = Some(v),
            DataAttribute::MaxElem(v) => set.maxelem = Some(v),
            DataAttribute::References(v) => set.references = v,
            DataAttribute::Timeout(v) => set.timeout = Some(v),
            DataAttribute::CadtFlags(f) => {
                set.comment = f & kproxy_netlink::ipset::FLAG_WITH_COMMENT != 0
            }
            DataAttribute::Port(p) => from = Some(p),
            DataAttribute::PortTo(p) => to = Some(p),
            _ => {}
        }
    }
    if let (Some(f), Some(t)) = (from, to) {
        set.port_range = Some((f, t));
    }
}

fn netlink_sys_protocol() -> isize {
    12 // NETLINK_NETFILTER
}
