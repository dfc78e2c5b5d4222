//! The lab tests: each module drives whole labs (`weft up`) with the real kubectl, kube-rs and
//! real packets. They are one test binary, not one per file, because every test binary links
//! the whole of weft: sixteen of them filled a CI machine's disk. `netpol.rs` stays its own
//! binary so its serialised probe matrices do not share the machine with other labs.

mod api;
mod apply;
mod cli;
mod cluster_mode;
mod deletion;
mod dns;
mod end_to_end;
mod exec;
mod host_network;
mod in_cluster;
mod ingress;
mod ingress_controller;
mod ingress_seed;
mod isolation;
mod kubectl;
mod lifecycle;
mod logs_events;
mod netpol_denials;
mod openapi;
mod protobuf;
mod rbac;
mod robustness;
mod serviceaccounts;
mod services;
mod workloads;
