//! weft's NetworkPolicy engine.

pub mod apply;
pub mod compile;
pub mod eval;
pub mod model;
pub mod rules;

#[cfg(test)]
mod tests;
