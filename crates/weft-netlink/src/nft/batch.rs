//! A batch: any number of operations on tables, chains, sets, rules and elements, sent as ONE
//! nfnetlink transaction (all or nothing). Every message asks for an acknowledgement, so a
//! refusal names the operation the kernel refused.

use std::path::Path;

use nix::errno::Errno;

use super::objects::{self, Chain, Elem, Family, Interval, Rule, Set, Table};
use super::socket::Socket;
use super::wire::{self, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, Writer};
use crate::error::{Error, Result};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NEWTABLE: u16 = 0;
const DELTABLE: u16 = 2;
const NEWCHAIN: u16 = 3;
const DELCHAIN: u16 = 5;
const NEWRULE: u16 = 6;
const DELRULE: u16 = 8;
const NEWSET: u16 = 9;
const DELSET: u16 = 11;
const NEWSETELEM: u16 = 12;
const DELSETELEM: u16 = 14;
/// Element bytes per message: a message's element list is one attribute, whose length is 16 bits.
const ELEMENT_BYTES_PER_MESSAGE: usize = 48 * 1024;

/// Operations to commit in one transaction. Objects are referred to by name, and may refer to
/// objects added earlier in the same batch (a rule to a set, an element to a chain).
#[derive(Default)]
pub struct Batch {
    /// The encoded messages, in order, without the batch's begin and end.
    buf: Vec<u8>,
    /// What each message does (message `i` has sequence number `i + 1`).
    ops: Vec<String>,
    next_set_id: u32,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    /// The number of messages (not elements).
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    /// What the messages do, in order (for diagnostics).
    pub fn operations(&self) -> &[String] {
        &self.ops
    }

    fn push(&mut self, ty: u16, flags: u16, family: Family, what: String, body: impl FnOnce(&mut Writer)) {
        let mut w = Writer::default();
        body(&mut w);
        let seq = self.ops.len() as u32 + 1;
        wire::push_message(
            &mut self.buf,
            (NFNL_SUBSYS_NFTABLES << 8) | ty,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            seq,
            family as u8,
            0,
            &w.buf,
        );
        self.ops.push(what);
    }

    /// Adds a table (nothing happens if it exists).
    pub fn add_table(&mut self, t: &Table) {
        self.push(NEWTABLE, NLM_F_CREATE, t.family, format!("add table {} {}", t.family.as_str(), t.name), |w| {
            objects::encode_table(w, t)
        });
    }
    /// Deletes a table and everything in it (an error if it is missing: add it first to make
    /// the delete unconditional).
    pub fn delete_table(&mut self, family: Family, table: &str) {
        self.push(DELTABLE, 0, family, format!("delete table {} {table}", family.as_str()), |w| w.str(1, table));
    }
    /// Removes every rule of every chain of a table.
    pub fn flush_table(&mut self, family: Family, table: &str) {
        self.push(DELRULE, 0, family, format!("flush table {} {table}", family.as_str()), |w| w.str(1, table));
    }
    /// Adds a chain (a base chain attaches to its hook); nothing happens if it exists.
    pub fn add_chain(&mut self, family: Family, table: &str, c: &Chain) {
        self.push(NEWCHAIN, NLM_F_CREATE, family, format!("add chain {} {table} {}", family.as_str(), c.name), |w| {
            objects::encode_chain(w, table, c)
        });
    }
    /// Removes a chain's rules.
    pub fn flush_chain(&mut self, family: Family, table: &str, chain: &str) {
        self.push(DELRULE, 0, family, format!("flush chain {} {table} {chain}", family.as_str()), |w| {
            w.str(1, table);
            w.str(2, chain);
        });
    }
    pub fn delete_chain(&mut self, family: Family, table: &str, chain: &str) {
        self.push(DELCHAIN, 0, family, format!("delete chain {} {table} {chain}", family.as_str()), |w| {
            w.str(1, table);
            w.str(3, chain);
        });
    }
    /// Appends a rule to its chain.
    pub fn add_rule(&mut self, family: Family, table: &str, r: &Rule) {
        self.push(
            NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            family,
            format!("add rule {} {table} {} ({} expressions)", family.as_str(), r.chain, r.exprs.len()),
            |w| objects::encode_rule(w, table, r),
        );
    }
    /// Adds a set or map (nothing happens if one of that name and shape exists).
    pub fn add_set(&mut self, family: Family, table: &str, s: &Set) {
        self.next_set_id += 1;
        let id = self.next_set_id;
        let kind = if s.data.is_some() { "map" } else { "set" };
        self.push(NEWSET, NLM_F_CREATE, family, format!("add {kind} {} {table} {}", family.as_str(), s.name), |w| {
            objects::encode_set(w, table, s, id)
        });
    }
    pub fn delete_set(&mut self, family: Family, table: &str, set: &str) {
        self.push(DELSET, 0, family, format!("delete set {} {table} {set}", family.as_str()), |w| {
            w.str(1, table);
            w.str(2, set);
        });
    }
    /// Removes every element of a set.
    pub fn flush_set(&mut self, family: Family, table: &str, set: &str) {
        self.push(DELSETELEM, 0, family, format!("flush set {} {table} {set}", family.as_str()), |w| {
            w.str(1, table);
            w.str(2, set);
        });
    }
    /// Adds elements (as many messages as their size needs).
    pub fn add_elements(&mut self, family: Family, table: &str, set: &str, elems: &[Elem]) {
        self.elements(true, family, table, set, elems);
    }
    /// Deletes elements (by key; data is not sent).
    pub fn delete_elements(&mut self, family: Family, table: &str, set: &str, elems: &[Elem]) {
        self.elements(false, family, table, set, elems);
    }

    /// Adds ranges to a one-field interval set (an end and a start may share a key: adjacent
    /// ranges are fine; overlapping ones are refused).
    pub fn add_intervals(&mut self, family: Family, table: &str, set: &str, ranges: &[Interval]) {
        self.element_messages(true, family, table, set, ranges, objects::encode_interval);
    }
    /// Deletes ranges from a one-field interval set (each exactly as it was added).
    pub fn delete_intervals(&mut self, family: Family, table: &str, set: &str, ranges: &[Interval]) {
        self.element_messages(false, family, table, set, ranges, objects::encode_interval);
    }

    fn elements(&mut self, add: bool, family: Family, table: &str, set: &str, elems: &[Elem]) {
        self.element_messages(add, family, table, set, elems, |w, e| objects::encode_elem(w, e, add));
    }

    /// Element messages for `items`, each encoded by `encode`, split under the attribute limit.
    fn element_messages<T>(
        &mut self,
        add: bool,
        family: Family,
        table: &str,
        set: &str,
        items: &[T],
        encode: impl Fn(&mut Writer, &T),
    ) {
        let mut list = Writer::default();
        let mut count = 0;
        for (i, e) in items.iter().enumerate() {
            encode(&mut list, e);
            count += 1;
            if list.buf.len() >= ELEMENT_BYTES_PER_MESSAGE || i + 1 == items.len() {
                let (ty, flags, verb) = if add { (NEWSETELEM, NLM_F_CREATE, "add") } else { (DELSETELEM, 0, "delete") };
                let what = format!("{verb} {count} elements of {} {table} {set}", family.as_str());
                let encoded = std::mem::take(&mut list.buf);
                self.push(ty, flags, family, what, |w| {
                    w.str(1, table);
                    w.str(2, set);
                    // NFTA_SET_ELEM_LIST_ELEMENTS, nested, holding the encoded list.
                    w.nested(3, |w| w.buf.extend_from_slice(&encoded));
                });
                count = 0;
            }
        }
    }

    /// The whole batch as sent: begin, the messages, end.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buf.len() + 40);
        wire::push_message(&mut out, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, 0, NFNL_SUBSYS_NFTABLES, &[]);
        out.extend_from_slice(&self.buf);
        let end = self.ops.len() as u32 + 1;
        wire::push_message(&mut out, NFNL_MSG_BATCH_END, NLM_F_REQUEST, end, 0, NFNL_SUBSYS_NFTABLES, &[]);
        out
    }

    /// Commits the batch in this thread's network namespace: everything or nothing. A refusal
    /// is an [`Error::Kernel`] with the kernel's errno that names the first refused operation.
    pub fn commit(&self) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        commit_bytes(&self.encode(), &self.ops)
    }

    /// [`commit`](Self::commit) in the network namespace `netns` (here when `None`).
    pub fn commit_in(&self, netns: Option<&Path>) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        if netns.is_none() {
            return self.commit();
        }
        let (bytes, ops) = (self.encode(), self.ops.clone());
        crate::ns::run_in(netns, move || commit_bytes(&bytes, &ops))?
    }
}

/// Sends an encoded batch and reads every acknowledgement. The kernel handles a batch while it
/// is sent, so all the answers are queued when `send` returns.
fn commit_bytes(bytes: &[u8], ops: &[String]) -> Result<()> {
    let sock = Socket::open()?;
    sock.size_for(bytes.len(), ops.len());
    sock.send(bytes)?;
    let mut pending = vec![true; ops.len()];
    let mut left = ops.len();
    let mut refused: Option<(u32, i32, Option<String>)> = None;
    while left > 0 {
        // Blocking only until the first answer; the rest is queued already.
        let Some(buf) = sock.recv(left == ops.len())? else { break };
        for m in wire::messages(&buf) {
            let Some(code) = m.error_code() else { continue };
            let Some(slot) = (m.seq as usize).checked_sub(1).and_then(|i| pending.get_mut(i)) else { continue };
            if std::mem::take(slot) {
                left -= 1;
            }
            if code != 0 && refused.as_ref().is_none_or(|(s, _, _)| m.seq < *s) {
                refused = Some((m.seq, code, wire::ext_ack_msg(&m)));
            }
        }
    }
    // Closing an nfnetlink socket right after a transaction that deleted something waits for
    // the kernel to release it (a grace period, 10-20 ms here), though the transaction is
    // already in force: the socket is closed off the caller's path. (A transaction that follows
    // within the grace period still waits for it in the kernel.)
    std::thread::spawn(move || drop(sock));
    match refused {
        Some((seq, code, msg)) => {
            let op = &ops[seq as usize - 1];
            let detail = msg.map(|m| format!(" ({m})")).unwrap_or_default();
            Err(Error::errno(
                format!("nf_tables refused `{op}`{detail}, message {seq} of {}", ops.len()),
                Errno::from_raw(-code),
            ))
        }
        None if left > 0 => {
            Err(Error::other(format!("nf_tables acknowledged {} of {} messages", ops.len() - left, ops.len())))
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::{FieldType, Key};

    #[test]
    fn a_batch_is_begin_messages_end_with_one_sequence_number_each() {
        let mut b = Batch::new();
        b.add_table(&Table::new(Family::Ip, "t"));
        b.delete_table(Family::Ip, "t");
        let bytes = b.encode();
        let msgs: Vec<_> = wire::messages(&bytes).collect();
        assert_eq!(
            msgs.iter().map(|m| (m.ty, m.seq)).collect::<Vec<_>>(),
            [(0x10, 0), (0xa00, 1), (0xa02, 2), (0x11, 3)]
        );
        // The table message: nfgenmsg (family ip), then NFTA_TABLE_NAME "t".
        assert_eq!(msgs[1].body, [2, 0, 0, 0, 6, 0, 1, 0, b't', 0, 0, 0]);
        assert_eq!(msgs[1].flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE);
        // Begin and end carry the nftables subsystem as their resource id (big-endian).
        assert_eq!(msgs[0].body, [0, 0, 0, 10]);
    }

    #[test]
    fn many_elements_are_split_into_messages_under_the_attribute_limit() {
        let elems: Vec<Elem> = (0..20_000u32).map(|i| Elem::key(Key::new().host_u32(i).bytes())).collect();
        let mut b = Batch::new();
        b.add_set(Family::Ip, "t", &Set::plain("s", &[FieldType::U32]));
        b.add_elements(Family::Ip, "t", "s", &elems);
        assert!(b.len() > 3, "{} messages", b.len());
        let bytes = b.encode();
        let mut total = 0;
        for m in wire::messages(&bytes).filter(|m| m.ty == 0xa0c) {
            let list = m.nf_attrs().find(|a| a.0 == 3).unwrap().1;
            assert!(list.len() < 65535);
            total += wire::Attrs(list).count();
        }
        assert_eq!(total, 20_000);
    }
}
