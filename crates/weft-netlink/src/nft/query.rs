//! Questions to nf_tables: which tables there are.

use std::path::Path;

use super::objects::Family;
use super::socket::Socket;
use super::wire::{self, Msg, NLM_F_ACK, NLM_F_REQUEST, NLM_F_ROOT_MATCH, Writer};
use crate::error::Result;

const GETTABLE: u16 = 1;
const NEWTABLE: u16 = 0;
const NFTA_TABLE_NAME: u16 = 1;

/// The table name in a NEWTABLE message (what a GETTABLE answers with).
fn table_name(m: &Msg) -> Option<String> {
    if m.ty != (10 << 8) | NEWTABLE {
        return None;
    }
    m.nf_attrs().find(|(t, _)| *t == NFTA_TABLE_NAME).map(|(_, v)| wire::attr_str(v))
}

/// Whether the table is there, in the network namespace `netns` (here when `None`).
pub fn table_exists(netns: Option<&Path>, family: Family, name: &str) -> Result<bool> {
    let name = name.to_string();
    crate::ns::run_in(netns, move || -> Result<bool> {
        let mut w = Writer::default();
        w.str(NFTA_TABLE_NAME, &name);
        let req = wire::message((10 << 8) | GETTABLE, NLM_F_REQUEST | NLM_F_ACK, 1, family as u8, 0, &w.buf);
        let mut found = false;
        match Socket::open()?.request(&req, &format!("looking up table {} {name}", family.as_str()), |m| {
            found |= table_name(m).is_some_and(|n| n == name)
        }) {
            Ok(()) => Ok(found),
            Err(e) if e.is_missing() => Ok(false),
            Err(e) => Err(e),
        }
    })?
}

/// The names of the tables of `family`, in the network namespace `netns` (here when `None`).
pub fn list_tables(netns: Option<&Path>, family: Family) -> Result<Vec<String>> {
    crate::ns::run_in(netns, move || -> Result<Vec<String>> {
        let req = wire::message((10 << 8) | GETTABLE, NLM_F_REQUEST | NLM_F_ROOT_MATCH, 1, family as u8, 0, &[]);
        let mut names = vec![];
        Socket::open()?.request(&req, "listing tables", |m| names.extend(table_name(m)))?;
        Ok(names)
    })?
}

/// Reads table names out of received bytes (for the fuzz test: any bytes, no panic).
#[doc(hidden)]
pub fn table_names_in(buf: &[u8]) -> Vec<String> {
    wire::messages(buf).filter_map(|m| table_name(&m)).collect()
}
