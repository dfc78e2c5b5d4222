//! weft's Ingress controller (`weft ingress`, and the `weft-ingress` binary its pod runs).
//!
//! The shape is the rest of weft's: a pure compiler turns objects into a desired data plane, a
//! thin applier installs it. [`Inputs`] (Ingresses, IngressClasses, Services, EndpointSlices,
//! TLS Secrets; from the API, [`watch`], or from a file, [`file`]) go through
//! [`compile::compile`] into a [`RouteTable`] and the problems to report; the [`proxy`] serves
//! whatever table is installed last, swapped atomically, so a change never reloads a worker or
//! drops a connection.

pub mod annotations;
pub mod cli;
pub mod compile;
pub mod file;
pub mod proxy;
pub mod table;
pub mod watch;

pub use table::*;
