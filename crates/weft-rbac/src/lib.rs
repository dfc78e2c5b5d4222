//! Kubernetes RBAC, decided as kube-apiserver's RBAC authorizer decides it
//! (plugin/pkg/auth/authorizer/rbac and pkg/registry/rbac upstream):
//!
//! - [`rules`]: whether a PolicyRule allows a request, and whether rules cover others;
//! - [`index`]: the Roles, ClusterRoles and their bindings, indexed by subject once per change
//!   of them, which every request is decided on ([`index::Index::authorize`]);
//! - [`escalation`]: a Role, ClusterRole or binding may be written only by a user who holds
//!   what it grants (or may `escalate` / `bind`);
//! - [`aggregate`]: a ClusterRole's aggregated rules;
//! - [`bootstrap`]: the default roles and bindings, and how existing ones are reconciled.
//!
//! Architecture invariant: pure functions over k8s-openapi types and JSON; no I/O, no clock.

pub mod aggregate;
pub mod bootstrap;
pub mod escalation;
pub mod index;
pub mod quote;
pub mod rules;

pub use index::{Decision, Index, User};
pub use rules::Request;

/// The API group of the RBAC kinds.
pub const GROUP: &str = "rbac.authorization.k8s.io";
/// The group whose members may do anything (kube-apiserver's superuser group).
pub const SYSTEM_MASTERS: &str = "system:masters";
