//! nf_tables through netlink: a typed model of tables, chains, sets and maps, rules and set
//! elements, encoded by hand and committed as one nfnetlink batch (one atomic transaction), plus
//! the queries weft needs. With it weft programs nf_tables without the `nft` binary.
//!
//! Why by hand: the Rust crates that speak nf_tables (`nftnl`, `rustables`, and libnftnl they
//! follow) are GPL, and weft is Apache-2.0. The codec is small on purpose: only the expressions
//! weft's rules use, laid out as `nft` lays them out (`nft --debug=netlink` shows the same
//! bytecode), every received byte read with its length checked, and fuzzed (no input panics).
//!
//! ```no_run
//! use weft_netlink::nft::*;
//! let mut b = Batch::new();
//! b.add_table(&Table::new(Family::Ip, "demo"));
//! b.add_chain(Family::Ip, "demo", &Chain::base("out", ChainType::Filter, Hook::Output, 0));
//! b.add_rule(Family::Ip, "demo", &Rule { chain: "out".into(), exprs: vec![Expr::Counter] });
//! b.commit_in(None).unwrap();
//! ```

mod batch;
mod expr;
mod objects;
mod query;
pub(crate) mod socket;
pub mod wire;

pub use batch::Batch;
pub use expr::{
    ByteOrderOp, CmpOp, CtKey, Expr, FibResult, MetaKey, NatKind, PayloadBase, Reg, Reject, Verdict, addr_type,
    ct_state, fib_flags,
};
pub use objects::{
    BaseChain, Chain, ChainType, Elem, ElemData, Family, FieldType, Hook, Interval, Key, Rule, Set, SetData, Table,
    Typeof, datatype, priority,
};
pub use query::{list_tables, table_exists, table_names_in};
