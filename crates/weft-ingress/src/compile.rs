//! Objects in, route table out (pure: no I/O, no clock).

use crate::{ClassConfig, Compiled, Inputs};

/// Compiles `inputs` into the table to serve and the problems to report. `generation` is the
/// table's [`crate::RouteTable::generation`].
pub fn compile(inputs: &Inputs, cfg: &ClassConfig, generation: u64) -> Compiled {
    let _ = (inputs, cfg);
    let mut c = Compiled::default();
    c.table.generation = generation;
    c
}
