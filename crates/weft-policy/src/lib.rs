//! weft's NetworkPolicy engine.

pub mod compile;
pub mod eval;
pub mod model;

#[cfg(test)]
mod tests;
