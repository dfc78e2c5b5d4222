//! The kinds weft serves, with the names the REST paths, discovery and the CLI use for them.

/// One served resource in one group/version.
#[derive(Debug, PartialEq, Eq)]
pub struct Kind {
    /// API group; empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Subresources beyond the object itself (`status`, `scale`, `log`).
    pub subresources: &'static [&'static str],
    /// Served only for compatibility: stored and answered in the preferred version.
    pub legacy: bool,
    /// A review (TokenReview, SubjectAccessReview, ...): only created, answered at once and
    /// never stored (`weft_apiserver::reviews`).
    pub create_only: bool,
}

impl Kind {
    /// `apiVersion` as written in manifests.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }
    /// The store's resource key: the plural, qualified with its group outside the core group.
    /// All versions of a kind share it, and so do the views of it in other groups ([`STORED_AS`]).
    pub fn resource_key(&self) -> String {
        let group = STORED_AS.iter().find(|s| s.0 == self.group && s.1 == self.kind).map_or(self.group, |s| s.2);
        if group.is_empty() { self.plural.to_string() } else { format!("{}.{}", self.plural, group) }
    }
    /// The version objects are stored in (and the one the CLI prefers).
    pub fn storage(&'static self) -> &'static Kind {
        if let Some(&(_, kind, group, version)) = STORED_AS.iter().find(|s| s.0 == self.group && s.1 == self.kind) {
            return ALL.iter().find(|k| k.group == group && k.version == version && k.kind == kind).unwrap_or(self);
        }
        if !self.legacy {
            return self;
        }
        ALL.iter().find(|k| k.group == self.group && k.plural == self.plural && !k.legacy).unwrap_or(self)
    }
    pub fn has_subresource(&self, s: &str) -> bool {
        self.subresources.contains(&s)
    }
}

/// Kinds served in one group that are views of a kind stored in another, as (group, kind,
/// stored group, stored version): kube-apiserver keeps `events.k8s.io/v1` Event and core/v1
/// Event in one storage (`weft_api::convert` converts between them).
pub const STORED_AS: &[(&str, &str, &str, &str)] = &[("events.k8s.io", "Event", "", "v1")];

macro_rules! kind {
    ($g:expr, $v:expr, $k:expr, $p:expr, $s:expr, $ns:expr, [$($sn:expr),*], [$($sub:expr),*]) => {
        Kind { group: $g, version: $v, kind: $k, plural: $p, singular: $s, namespaced: $ns,
               short_names: &[$($sn),*], subresources: &[$($sub),*], legacy: false, create_only: false }
    };
}

/// A create-only kind ([`Kind::create_only`]).
#[allow(unused_macros)]
macro_rules! review {
    ($g:expr, $v:expr, $k:expr, $p:expr, $s:expr, $ns:expr) => {
        Kind {
            group: $g,
            version: $v,
            kind: $k,
            plural: $p,
            singular: $s,
            namespaced: $ns,
            short_names: &[],
            subresources: &[],
            legacy: false,
            create_only: true,
        }
    };
}

pub static ALL: &[Kind] = &[
    kind!("", "v1", "Namespace", "namespaces", "namespace", false, ["ns"], ["status"]),
    kind!("", "v1", "Node", "nodes", "node", false, ["no"], ["status"]),
    kind!("", "v1", "Pod", "pods", "pod", true, ["po"], ["status", "log", "exec", "attach", "portforward"]),
    kind!("", "v1", "Service", "services", "service", true, ["svc"], ["status"]),
    kind!("", "v1", "Endpoints", "endpoints", "endpoints", true, ["ep"], []),
    kind!("", "v1", "Secret", "secrets", "secret", true, [], []),
    kind!("", "v1", "ConfigMap", "configmaps", "configmap", true, ["cm"], []),
    kind!(
        "",
        "v1",
        "ReplicationController",
        "replicationcontrollers",
        "replicationcontroller",
        true,
        ["rc"],
        ["status", "scale"]
    ),
    kind!("", "v1", "Event", "events", "event", true, ["ev"], []),
    kind!("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", true, ["sa"], ["token"]),
    kind!("apps", "v1", "Deployment", "deployments", "deployment", true, ["deploy"], ["status", "scale"]),
    kind!("apps", "v1", "ReplicaSet", "replicasets", "replicaset", true, ["rs"], ["status", "scale"]),
    kind!("apps", "v1", "DaemonSet", "daemonsets", "daemonset", true, ["ds"], ["status"]),
    kind!("apps", "v1", "StatefulSet", "statefulsets", "statefulset", true, ["sts"], ["status", "scale"]),
    kind!("apps", "v1", "ControllerRevision", "controllerrevisions", "controllerrevision", true, [], []),
    kind!("batch", "v1", "Job", "jobs", "job", true, [], ["status"]),
    kind!("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", true, [], []),
    kind!("networking.k8s.io", "v1", "Ingress", "ingresses", "ingress", true, ["ing"], ["status"]),
    kind!("networking.k8s.io", "v1", "IngressClass", "ingressclasses", "ingressclass", false, [], []),
    kind!("events.k8s.io", "v1", "Event", "events", "event", true, ["ev"], []),
    kind!("coordination.k8s.io", "v1", "Lease", "leases", "lease", true, [], []),
    kind!("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", "networkpolicy", true, ["netpol"], []),
    kind!("rbac.authorization.k8s.io", "v1", "Role", "roles", "role", true, [], []),
    kind!("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", "clusterrole", false, [], []),
    kind!("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", "rolebinding", true, [], []),
    kind!(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        false,
        [],
        []
    ),
    review!("authorization.k8s.io", "v1", "SubjectAccessReview", "subjectaccessreviews", "subjectaccessreview", false),
    review!(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        "selfsubjectaccessreview",
        false
    ),
    review!(
        "authorization.k8s.io",
        "v1",
        "LocalSubjectAccessReview",
        "localsubjectaccessreviews",
        "localsubjectaccessreview",
        true
    ),
    review!(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectRulesReview",
        "selfsubjectrulesreviews",
        "selfsubjectrulesreview",
        false
    ),
    review!("authentication.k8s.io", "v1", "TokenReview", "tokenreviews", "tokenreview", false),
    review!("authentication.k8s.io", "v1", "SelfSubjectReview", "selfsubjectreviews", "selfsubjectreview", false),
    Kind {
        group: "networking.k8s.io",
        version: "v1beta1",
        kind: "Ingress",
        plural: "ingresses",
        singular: "ingress",
        namespaced: true,
        short_names: &["ing"],
        subresources: &["status"],
        legacy: true,
        create_only: false,
    },
];

/// The group/versions served, in discovery order: (group, version, preferred).
pub fn group_versions() -> Vec<(&'static str, &'static str, bool)> {
    let mut out: Vec<(&str, &str, bool)> = vec![];
    for k in ALL {
        if !out.iter().any(|(g, v, _)| *g == k.group && *v == k.version) {
            out.push((k.group, k.version, !k.legacy));
        }
    }
    out
}

/// Finds a kind by REST path coordinates.
pub fn by_path(group: &str, version: &str, plural: &str) -> Option<&'static Kind> {
    ALL.iter().find(|k| k.group == group && k.version == version && k.plural == plural)
}

/// Finds a kind by `apiVersion` and `kind` as written in a manifest.
pub fn by_gvk(api_version: &str, kind: &str) -> Option<&'static Kind> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    ALL.iter().find(|k| k.group == group && k.version == version && k.kind == kind)
}

/// Resolves what a user types on the command line (`svc`, `services`, `Service`,
/// `deployments.apps`, `ing`) to the preferred version of a kind.
pub fn by_cli_name(name: &str) -> Option<&'static Kind> {
    let lower = name.to_ascii_lowercase();
    let (base, group) = match lower.split_once('.') {
        Some((b, g)) => (b.to_string(), Some(g.to_string())),
        None => (lower, None),
    };
    ALL.iter().filter(|k| !k.legacy).find(|k| {
        group.as_deref().is_none_or(|g| g == k.group || (g == "v1" && k.group.is_empty()))
            && (k.plural == base
                || k.singular == base
                || k.kind.eq_ignore_ascii_case(&base)
                || k.short_names.contains(&base.as_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_names_resolve() {
        for (n, plural) in [
            ("svc", "services"),
            ("ep", "endpoints"),
            ("ns", "namespaces"),
            ("po", "pods"),
            ("ing", "ingresses"),
            ("netpol", "networkpolicies"),
            ("deploy", "deployments"),
            ("rs", "replicasets"),
            ("rc", "replicationcontrollers"),
            ("ds", "daemonsets"),
            ("sts", "statefulsets"),
            ("controllerrevisions", "controllerrevisions"),
            ("jobs.batch", "jobs"),
            ("Service", "services"),
            ("deployments.apps", "deployments"),
            ("endpointslices", "endpointslices"),
        ] {
            assert_eq!(by_cli_name(n).map(|k| k.plural), Some(plural), "{n}");
        }
        assert!(by_cli_name("nonsense").is_none());
    }

    #[test]
    fn events_k8s_io_events_are_stored_as_core_events() {
        let k = by_gvk("events.k8s.io/v1", "Event").unwrap();
        assert_eq!(k.storage(), by_gvk("v1", "Event").unwrap());
        assert_eq!(k.resource_key(), "events");
        // The CLI's `events` and `ev` stay the core kind, as kubectl's group priority has it.
        assert_eq!(by_cli_name("ev").unwrap().group, "");
        assert_eq!(by_cli_name("events.events.k8s.io").unwrap().group, "events.k8s.io");
    }

    #[test]
    fn legacy_ingress_stores_as_v1() {
        let k = by_gvk("networking.k8s.io/v1beta1", "Ingress").unwrap();
        assert_eq!(k.storage().version, "v1");
        assert_eq!(k.resource_key(), "ingresses.networking.k8s.io");
    }
}
