//! Objects in, route table out (pure: no I/O, no clock).
//!
//! Ingress v1 semantics as the API defines them (class selection, host and path matching,
//! backends by Service port number or name, `spec.defaultBackend`, `spec.tls`), and
//! ingress-nginx's behaviour where the API leaves it to the implementation: Ingresses are taken
//! oldest first (creationTimestamp, then namespace/name), so for the same host and path the
//! oldest wins, the oldest `spec.defaultBackend` is the default, and the oldest certificate for a
//! host is served. Nothing here panics on any input: every field a source could leave out or
//! fill with garbage is checked, and refused with a [`Problem`] that names it and the fix.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{HTTPIngressPath, Ingress, IngressBackend, IngressClass};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;

use crate::annotations::{self, Annotations, CanarySpec};
use crate::{
    Backend, BackendProtocol, Canary, ClassConfig, Compiled, HostRoutes, Inputs, ObjectRef, PathPrefix, Problem, Route,
    RouteTable, Target,
};

/// The annotation naming an Ingress's class before `spec.ingressClassName` existed.
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// The annotation that makes an IngressClass the default for Ingresses that name none.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The largest compiled program one path regex may take (a pattern over it is refused).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Compiles `inputs` into the table to serve and the problems to report. `generation` is the
/// table's [`crate::RouteTable::generation`].
pub fn compile(inputs: &Inputs, cfg: &ClassConfig, generation: u64) -> Compiled {
    let mut ours = served(inputs, cfg);
    // Oldest first: the order every "first wins" below relies on.
    ours.sort_by_cached_key(|i| age(i));
    let mut seen = HashSet::new();
    ours.retain(|i| seen.insert(object_ref(i)));

    let mut b = Builder::new(inputs);
    let mut canaries = Vec::new();
    let mut mains = Vec::new();
    for ing in &ours {
        let oref = object_ref(ing);
        let ann = annotations::parse(ing.metadata.annotations.as_ref(), &oref, &mut b.problems);
        if let Some(spec) = ann.canary.clone() {
            canaries.push((*ing, oref, ann, spec));
        } else {
            b.add(ing, &oref, &ann);
            mains.push((*ing, oref));
        }
    }
    for (ing, oref, ann, spec) in &canaries {
        b.add_canary(ing, oref, ann, spec);
    }
    for (ing, oref) in &mains {
        b.add_tls(ing, oref);
    }

    let mut served: Vec<ObjectRef> = ours.iter().map(|i| object_ref(i)).collect();
    served.sort();
    let mut table = b.finish();
    table.generation = generation;
    Compiled { table, problems: b.problems, served }
}

/// The Ingresses this controller serves (not being deleted).
fn served<'a>(inputs: &'a Inputs, cfg: &ClassConfig) -> Vec<&'a Ingress> {
    let mine: Vec<&IngressClass> = inputs
        .classes
        .iter()
        .map(|c| &**c)
        .filter(|c| c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(cfg.controller.as_str()))
        .collect();
    let named = |n: &str| mine.iter().any(|c| c.metadata.name.as_deref() == Some(n));
    let default = cfg.watch_without_class
        || mine.iter().any(|c| {
            c.metadata.annotations.as_ref().and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION)).map(String::as_str)
                == Some("true")
        });
    inputs
        .ingresses
        .iter()
        .map(|i| &**i)
        .filter(|i| i.metadata.deletion_timestamp.is_none())
        .filter(|i| {
            let by_field = i.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref()).filter(|n| !n.is_empty());
            let by_annotation = i
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(CLASS_ANNOTATION))
                .map(String::as_str)
                .filter(|n| !n.is_empty());
            match by_field.or(by_annotation) {
                Some(n) => named(n),
                None => default,
            }
        })
        .collect()
}

fn object_ref(i: &Ingress) -> ObjectRef {
    ObjectRef {
        namespace: i.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        name: i.metadata.name.clone().unwrap_or_default(),
    }
}

type Age = (Option<k8s_openapi::jiff::Timestamp>, ObjectRef);

fn age(i: &Ingress) -> Age {
    (i.metadata.creation_timestamp.as_ref().map(|t| t.0), object_ref(i))
}

/// A value from an object, for a message: quoted, escaped, cut short.
fn show(v: &str) -> String {
    let mut cut: String = v.chars().take(80).collect();
    if cut.len() < v.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

/// Which routes of the table a rule's host goes to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum HostKey {
    Exact(String),
    /// `*.suffix`, by suffix.
    Wildcard(String),
    Any,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Exact,
    Prefix,
    Regex,
}

/// A main route before it is shared: canaries are attached to it first.
struct Entry {
    host: HostKey,
    kind: Kind,
    /// The path as matched: exact path, [`PathPrefix`] string or regex pattern source.
    key: String,
    regex: Option<regex::Regex>,
    route: Route,
}

struct Builder<'a> {
    services: HashMap<(&'a str, &'a str), &'a Service>,
    slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
    secrets: HashMap<(&'a str, &'a str), &'a Secret>,
    entries: Vec<Entry>,
    /// (host, exact, path; non-exact ones without the trailing `/`) → the Ingress whose route
    /// it is (the oldest). A regex and a prefix of the same path are one location in
    /// ingress-nginx, so they conflict too.
    claimed: HashMap<(HostKey, bool, String), ObjectRef>,
    /// The same keys → the main route's entry, for canaries.
    mains: HashMap<(HostKey, bool, String), usize>,
    /// Hosts that have rules (an entry even without paths: such a host does not fall back to
    /// the rules without a host).
    hosts: HashSet<HostKey>,
    default_backend: Option<Route>,
    default_from: Option<ObjectRef>,
    certs: HashMap<String, Arc<CertifiedKey>>,
    parsed_certs: HashMap<(String, String), Result<Arc<CertifiedKey>, String>>,
    tls_hosts: HashSet<HostKey>,
    /// Hosts of each Ingress's rules, for `spec.tls` entries without `hosts`.
    rule_hosts: HashMap<ObjectRef, Vec<String>>,
    problems: Vec<Problem>,
}

impl<'a> Builder<'a> {
    fn new(inputs: &'a Inputs) -> Builder<'a> {
        let key = |m: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            (m.namespace.as_deref().unwrap_or("default"), m.name.as_deref().unwrap_or(""))
        };
        let mut services = HashMap::new();
        for s in &inputs.services {
            services.entry(key(&s.metadata)).or_insert(&**s);
        }
        let mut slices: HashMap<_, Vec<_>> = HashMap::new();
        for s in &inputs.slices {
            let svc = s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let Some(svc) = svc {
                slices
                    .entry((s.metadata.namespace.as_deref().unwrap_or("default"), svc.as_str()))
                    .or_default()
                    .push(&**s);
            }
        }
        let mut secrets = HashMap::new();
        for s in &inputs.secrets {
            secrets.entry(key(&s.metadata)).or_insert(&**s);
        }
        Builder {
            services,
            slices,
            secrets,
            entries: Vec::new(),
            claimed: HashMap::new(),
            mains: HashMap::new(),
            hosts: HashSet::new(),
            default_backend: None,
            default_from: None,
            certs: HashMap::new(),
            parsed_certs: HashMap::new(),
            tls_hosts: HashSet::new(),
            rule_hosts: HashMap::new(),
            problems: Vec::new(),
        }
    }

    fn problem(&mut self, ingress: &ObjectRef, reason: &'static str, message: String) {
        self.problems.push(Problem { ingress: ingress.clone(), reason, message });
    }

    /// The host of `spec.rules[ri]`, validated; `None` (and a Problem) if invalid.
    fn rule_host(&mut self, oref: &ObjectRef, field: &str, host: Option<&str>) -> Option<(HostKey, String)> {
        let written = host.unwrap_or("");
        if written.is_empty() {
            return Some((HostKey::Any, String::new()));
        }
        let host = written.to_ascii_lowercase();
        match host_key(&host) {
            Some(k) => Some((k, host)),
            None => {
                let message = format!(
                    "{field}: {} is not a valid host: a DNS name (lowercase letters, digits, '-' and '.', labels of \
                     at most 63 characters), optionally starting with '*.', without a port and not an IP address; \
                     the rule is skipped",
                    show(written)
                );
                self.problem(oref, "InvalidHost", message);
                None
            }
        }
    }

    /// The routes of a (non-canary) Ingress's rules and its default backend.
    fn add(&mut self, ing: &Ingress, oref: &ObjectRef, ann: &Annotations) {
        let settings = Arc::new(ann.settings.clone());
        let Some(spec) = ing.spec.as_ref() else { return };
        if let Some(db) = spec.default_backend.as_ref() {
            match &self.default_from {
                None => {
                    let target = self.target(oref, ann, db, "spec.defaultBackend");
                    self.default_backend = Some(Route {
                        ingress: oref.clone(),
                        host: String::new(),
                        path: String::new(),
                        target,
                        settings: settings.clone(),
                        canaries: Vec::new(),
                    });
                    self.default_from = Some(oref.clone());
                }
                Some(winner) => {
                    let message = format!(
                        "spec.defaultBackend is not used: the older Ingress {winner} has one, and the oldest serves \
                         requests no rule matches; remove one of them"
                    );
                    self.problem(oref, "DefaultBackendConflict", message);
                }
            }
        }
        let mut my_hosts = Vec::new();
        for (ri, rule) in spec.rules.iter().flatten().enumerate() {
            let Some((host_key, host)) = self.rule_host(oref, &format!("spec.rules[{ri}].host"), rule.host.as_deref())
            else {
                continue;
            };
            if !host.is_empty() {
                my_hosts.push(host.clone());
            }
            self.hosts.insert(host_key.clone());
            for (pi, p) in rule.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
                let field = format!("spec.rules[{ri}].http.paths[{pi}]");
                let Some((kind, key, regex)) = self.path(oref, &field, p, ann.use_regex) else { continue };
                // Non-exact paths are compared without their trailing `/`, regex or not.
                let same = if kind == Kind::Exact { key.clone() } else { PathPrefix::new(&key).0 };
                let claim = (host_key.clone(), kind == Kind::Exact, same);
                if let Some(winner) = self.claimed.get(&claim) {
                    let message = format!(
                        "{field}: host {} path {} ({}) is already routed by Ingress {winner}, which is older and \
                         wins; remove the path from one of them",
                        show(if host.is_empty() { "*" } else { &host }),
                        show(p.path.as_deref().unwrap_or("")),
                        p.path_type
                    );
                    self.problem(oref, "PathConflict", message);
                    continue;
                }
                self.mains.insert(claim.clone(), self.entries.len());
                self.claimed.insert(claim, oref.clone());
                let target = self.target(oref, ann, &p.backend, &format!("{field}.backend"));
                let route = Route {
                    ingress: oref.clone(),
                    host: host.clone(),
                    path: p.path.clone().unwrap_or_default(),
                    target,
                    settings: settings.clone(),
                    canaries: Vec::new(),
                };
                self.entries.push(Entry { host: host_key.clone(), kind, key, regex, route });
            }
        }
        self.rule_hosts.insert(oref.clone(), my_hosts);
    }

    /// A path's kind, match key and regex; `None` (and a Problem) if invalid.
    fn path(
        &mut self,
        oref: &ObjectRef,
        field: &str,
        p: &HTTPIngressPath,
        use_regex: bool,
    ) -> Option<(Kind, String, Option<regex::Regex>)> {
        let path = p.path.as_deref().unwrap_or("");
        let invalid =
            |why: &str| format!("{field}.path: {} ({}) {why}; the path is skipped", show(path), show(&p.path_type));
        let kind = match p.path_type.as_str() {
            "Exact" => Kind::Exact,
            "Prefix" => Kind::Prefix,
            "ImplementationSpecific" => Kind::Prefix,
            _ => {
                let message = format!(
                    "{field}.pathType: {} is not a path type: set Exact, Prefix or ImplementationSpecific; the path is \
                     skipped",
                    show(&p.path_type)
                );
                self.problem(oref, "InvalidPath", message);
                return None;
            }
        };
        // The API's validation (a file source has none): absolute, and for Exact and Prefix no
        // dot segments, `//` or encoded slashes, which would match differently than they read.
        if p.path_type == "ImplementationSpecific" {
            if !path.is_empty() && !path.starts_with('/') {
                self.problem(oref, "InvalidPath", invalid("must be an absolute path (start with '/')"));
                return None;
            }
        } else {
            if !path.starts_with('/') {
                self.problem(oref, "InvalidPath", invalid("must be an absolute path (start with '/')"));
                return None;
            }
            if let Some(seq) = ["//", "/./", "/../", "%2f", "%2F"].iter().find(|s| path.contains(**s)) {
                self.problem(oref, "InvalidPath", invalid(&format!("must not contain '{seq}'")));
                return None;
            }
            if let Some(suf) = ["/..", "/."].iter().find(|s| path.ends_with(**s)) {
                self.problem(oref, "InvalidPath", invalid(&format!("must not end with '{suf}'")));
                return None;
            }
        }
        let path = if path.is_empty() { "/" } else { path };
        match kind {
            Kind::Exact => Some((Kind::Exact, path.to_string(), None)),
            Kind::Prefix if use_regex => {
                // ingress-nginx's `location ~* "^<path>"`: case-insensitive, anchored at the start.
                let pattern = format!("(?i)^{path}");
                match regex::RegexBuilder::new(&pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_SIZE_LIMIT)
                    .build()
                {
                    Ok(re) => Some((Kind::Regex, path.to_string(), Some(re))),
                    Err(e) => {
                        let err = e.to_string();
                        let why = format!(
                            "is not a regular expression weft can use (use-regex or rewrite-target makes paths \
                             regexes; the syntax is Rust's regex crate, without look-around or backreferences): {}",
                            show(&err)
                        );
                        self.problem(oref, "InvalidPath", invalid(&why));
                        None
                    }
                }
            }
            _ => Some((Kind::Prefix, PathPrefix::new(path).0, None)),
        }
    }

    /// Where a path of an Ingress goes: a redirect, 503 for a refused access restriction, or
    /// its backend.
    fn target(&mut self, oref: &ObjectRef, ann: &Annotations, backend: &IngressBackend, field: &str) -> Target {
        if ann.deny.is_some() {
            return Target::Unavailable;
        }
        if let Some((location, code)) = &ann.redirect {
            return Target::Redirect { location: location.clone(), code: *code };
        }
        match self.backend(oref, backend, field, ann.protocol) {
            Some(b) => Target::Service(b),
            None => Target::Unavailable,
        }
    }

    /// A Service backend resolved to its endpoints; `None` (and a Problem) if it cannot be.
    fn backend(
        &mut self,
        oref: &ObjectRef,
        backend: &IngressBackend,
        field: &str,
        protocol: BackendProtocol,
    ) -> Option<Backend> {
        let Some(svc) = backend.service.as_ref() else {
            if backend.resource.is_some() {
                let message = format!(
                    "{field}.resource: weft serves only service backends; use {field}.service (requests to this \
                     path get 503)"
                );
                self.problem(oref, "ResourceBackend", message);
            } else {
                let message = format!("{field}: names no backend; set {field}.service (requests to this path get 503)");
                self.problem(oref, "ServiceNotFound", message);
            }
            return None;
        };
        let ns = oref.namespace.as_str();
        let Some(service) = self.services.get(&(ns, svc.name.as_str())).copied() else {
            let message = format!(
                "{field}.service.name: Service {ns}/{} not found; create it or fix the name (requests to this path \
                 get 503)",
                show(&svc.name)
            );
            self.problem(oref, "ServiceNotFound", message);
            return None;
        };
        let spec = service.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            let message = format!(
                "{field}.service.name: Service {ns}/{} is of type ExternalName, which weft does not support as a \
                 backend; use a Service with a selector or EndpointSlices (requests to this path get 503)",
                svc.name
            );
            self.problem(oref, "ExternalNameService", message);
            return None;
        }
        let ports: &[ServicePort] = spec.and_then(|s| s.ports.as_deref()).unwrap_or(&[]);
        let have = || {
            let list: Vec<String> = ports
                .iter()
                .map(|p| match p.name.as_deref() {
                    Some(n) if !n.is_empty() => format!("{} ({n})", p.port),
                    _ => p.port.to_string(),
                })
                .collect();
            if list.is_empty() { "none".to_string() } else { list.join(", ") }
        };
        let want = svc.port.as_ref();
        let (port, label) = match (want.and_then(|p| p.number), want.and_then(|p| p.name.as_deref())) {
            (Some(n), _) => match ports.iter().find(|p| p.port == n) {
                Some(p) => (p, n.to_string()),
                None => {
                    let message = format!(
                        "{field}.service.port.number: Service {ns}/{} has no port {n} (it has: {}); fix the number \
                         or add the port to the Service (requests to this path get 503)",
                        svc.name,
                        have()
                    );
                    self.problem(oref, "PortNotFound", message);
                    return None;
                }
            },
            (None, Some(name)) if !name.is_empty() => match ports.iter().find(|p| p.name.as_deref() == Some(name)) {
                Some(p) => (p, name.to_string()),
                None => {
                    let message = format!(
                        "{field}.service.port.name: Service {ns}/{} has no port named {} (it has: {}); fix the name \
                         or name the Service's port (requests to this path get 503)",
                        svc.name,
                        show(name),
                        have()
                    );
                    self.problem(oref, "PortNotFound", message);
                    return None;
                }
            },
            _ => {
                let message = format!(
                    "{field}.service.port: names no port; set port.number or port.name (requests to this path get 503)"
                );
                self.problem(oref, "PortNotFound", message);
                return None;
            }
        };
        let (ready, serving_terminating) = self.endpoints(ns, &svc.name, port.name.as_deref().unwrap_or(""));
        Some(Backend {
            service: ObjectRef { namespace: ns.to_string(), name: svc.name.clone() },
            port: label,
            ready,
            serving_terminating,
            protocol,
        })
    }

    /// The endpoints of a Service port (by the port's name, as EndpointSlices name theirs):
    /// ready ones, and terminating ones still serving.
    fn endpoints(&self, ns: &str, service: &str, port_name: &str) -> (Arc<[SocketAddr]>, Arc<[SocketAddr]>) {
        let mut ready = Vec::new();
        let mut draining = Vec::new();
        for slice in self.slices.get(&(ns, service)).into_iter().flatten() {
            if slice.address_type == "FQDN" {
                continue;
            }
            let port = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or("") == port_name)
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0);
            let Some(port) = port else { continue };
            for ep in slice.endpoints.iter().flatten() {
                let c = ep.conditions.as_ref();
                // Unset `ready` means ready (the API's rule for consumers).
                let is_ready = c.and_then(|c| c.ready).unwrap_or(true);
                let serving = c.and_then(|c| c.serving) == Some(true);
                let terminating = c.and_then(|c| c.terminating) == Some(true);
                let into = if is_ready {
                    &mut ready
                } else if serving && terminating {
                    &mut draining
                } else {
                    continue;
                };
                into.extend(
                    ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()).map(|ip| SocketAddr::new(ip, port)),
                );
            }
        }
        ready.sort();
        ready.dedup();
        draining.sort();
        draining.dedup();
        draining.retain(|a| ready.binary_search(a).is_err());
        (ready.into(), draining.into())
    }

    /// A canary Ingress's paths, attached to the main routes of the same host and path.
    fn add_canary(&mut self, ing: &Ingress, oref: &ObjectRef, ann: &Annotations, spec: &CanarySpec) {
        let Some(ispec) = ing.spec.as_ref() else { return };
        if ispec.default_backend.is_some() {
            let message = "spec.defaultBackend of a canary Ingress is not used: canaries attach to the paths of \
                           another Ingress's rules; move it into spec.rules"
                .to_string();
            self.problem(oref, "CanaryWithoutMain", message);
        }
        for (ri, rule) in ispec.rules.iter().flatten().enumerate() {
            let Some((host_key, host)) = self.rule_host(oref, &format!("spec.rules[{ri}].host"), rule.host.as_deref())
            else {
                continue;
            };
            for (pi, p) in rule.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
                let field = format!("spec.rules[{ri}].http.paths[{pi}]");
                let Some((kind, key, _)) = self.path(oref, &field, p, false) else { continue };
                // The main route may be a regex or a prefix: both are Prefix/ImplementationSpecific.
                let Some(&main) = self.mains.get(&(host_key.clone(), kind == Kind::Exact, key)) else {
                    let message = format!(
                        "{field}: canary for host {} path {} has no main route: no non-canary Ingress of this class \
                         routes that host and path; create it or remove canary: \"true\"",
                        show(if host.is_empty() { "*" } else { &host }),
                        show(p.path.as_deref().unwrap_or(""))
                    );
                    self.problem(oref, "CanaryWithoutMain", message);
                    continue;
                };
                // An unresolvable canary backend is left out (its Problem says why): its share of
                // requests stays with the main route rather than getting 503.
                let Some(backend) = self.backend(oref, &p.backend, &format!("{field}.backend"), ann.protocol) else {
                    continue;
                };
                self.entries[main].route.canaries.push(Canary {
                    ingress: oref.clone(),
                    backend,
                    header: spec.header.clone(),
                    cookie: spec.cookie.clone(),
                    weight: spec.weight,
                    weight_total: spec.weight_total,
                });
            }
        }
    }

    /// `spec.tls`: certificates by host, and which hosts are HTTPS.
    fn add_tls(&mut self, ing: &Ingress, oref: &ObjectRef) {
        let Some(spec) = ing.spec.as_ref() else { return };
        for (ti, tls) in spec.tls.iter().flatten().enumerate() {
            let mut hosts = Vec::new();
            match tls.hosts.as_deref() {
                // Without hosts: this Ingress's rule hosts (the API leaves it to the controller).
                None | Some([]) => hosts.extend(self.rule_hosts.get(oref).cloned().unwrap_or_default()),
                Some(list) => {
                    for (hi, h) in list.iter().enumerate() {
                        let lower = h.to_ascii_lowercase();
                        if host_key(&lower).is_some() {
                            hosts.push(lower);
                        } else {
                            let message = format!(
                                "spec.tls[{ti}].hosts[{hi}]: {} is not a valid host (a DNS name, optionally starting \
                                 with '*.'); it is left out",
                                show(h)
                            );
                            self.problem(oref, "InvalidHost", message);
                        }
                    }
                }
            }
            for h in &hosts {
                if let Some(k) = host_key(h) {
                    self.tls_hosts.insert(k);
                }
            }
            let Some(secret) = tls.secret_name.as_deref().filter(|s| !s.is_empty()) else { continue };
            let cert = self.cert(&oref.namespace, secret);
            let ck = match cert {
                Ok(ck) => ck,
                Err(why) => {
                    let message = format!(
                        "spec.tls[{ti}].secretName: Secret {}/{} {why}; the default certificate is served for {} \
                         until it is fixed",
                        oref.namespace,
                        show(secret),
                        if hosts.is_empty() { "its hosts".to_string() } else { hosts.join(", ") }
                    );
                    self.problem(oref, "TLSSecret", message);
                    continue;
                }
            };
            for h in hosts {
                if self.certs.contains_key(&h) {
                    continue; // an older Ingress's certificate for this host wins
                }
                if !covers(&ck, &h) {
                    let message = format!(
                        "spec.tls[{ti}]: the certificate in Secret {}/{secret} does not cover host {h} (not in its \
                         subjectAltName); the default certificate is served for it: issue one that names {h}",
                        oref.namespace
                    );
                    self.problem(oref, "TLSSecret", message);
                    continue;
                }
                self.certs.insert(h, ck.clone());
            }
        }
    }

    /// A `kubernetes.io/tls` Secret's certificate and key, parsed once per compile.
    fn cert(&mut self, ns: &str, name: &str) -> Result<Arc<CertifiedKey>, String> {
        let k = (ns.to_string(), name.to_string());
        if let Some(r) = self.parsed_certs.get(&k) {
            return r.clone();
        }
        let r = match self.secrets.get(&(ns, name)) {
            None => {
                Err("is not found (or is not of type kubernetes.io/tls): create it with tls.crt and tls.key".into())
            }
            Some(s) => load_cert(s),
        };
        self.parsed_certs.insert(k, r.clone());
        r
    }

    fn finish(&mut self) -> RouteTable {
        let mut table = RouteTable::default();
        for h in &self.hosts {
            let _ = slot(&mut table, h);
        }
        for e in self.entries.drain(..) {
            let routes = slot(&mut table, &e.host);
            let route = Arc::new(e.route);
            match (e.kind, e.regex) {
                (Kind::Exact, _) => {
                    routes.exact.entry(e.key).or_insert(route);
                }
                (Kind::Regex, Some(re)) => routes.regexes.push((re, route)),
                _ => routes.prefixes.push((PathPrefix(e.key), route)),
            }
        }
        // Longest first; entries came oldest first, and the sorts are stable.
        let all =
            table.hosts.values_mut().chain(table.wildcards.values_mut()).chain(std::iter::once(&mut table.any_host));
        for routes in all {
            routes.prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.0.len()));
            routes.regexes.sort_by_key(|(re, _)| std::cmp::Reverse(re.as_str().len()));
        }
        for h in &self.tls_hosts {
            let routes = match h {
                HostKey::Exact(h) => table.hosts.get_mut(h),
                HostKey::Wildcard(s) => table.wildcards.get_mut(s),
                HostKey::Any => None,
            };
            if let Some(r) = routes {
                r.tls = true;
            }
        }
        table.default_backend = self.default_backend.take().map(Arc::new);
        table.certs = std::mem::take(&mut self.certs);
        table
    }
}

fn slot<'t>(table: &'t mut RouteTable, h: &HostKey) -> &'t mut HostRoutes {
    match h {
        HostKey::Exact(h) => table.hosts.entry(h.clone()).or_default(),
        HostKey::Wildcard(s) => table.wildcards.entry(s.clone()).or_default(),
        HostKey::Any => &mut table.any_host,
    }
}

/// A lowercase host's key, or `None` if it is not a valid Ingress host: a DNS-1123 subdomain,
/// optionally `*.` and one, never an IP address.
fn host_key(host: &str) -> Option<HostKey> {
    let (wild, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    if name.is_empty() || name.len() > 253 || name.parse::<IpAddr>().is_ok() {
        return None;
    }
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    if !name.split('.').all(label_ok) {
        return None;
    }
    Some(if wild { HostKey::Wildcard(name.to_string()) } else { HostKey::Exact(name.to_string()) })
}

/// Parses a TLS Secret's `tls.crt` (PEM chain) and `tls.key` (PEM PKCS#8, PKCS#1 or SEC1) and
/// checks that they belong together. The error says what is wrong, for the Problem.
fn load_cert(secret: &Secret) -> Result<Arc<CertifiedKey>, String> {
    if secret.type_.as_deref() != Some("kubernetes.io/tls") {
        return Err(format!("is of type {}, not kubernetes.io/tls", show(secret.type_.as_deref().unwrap_or("Opaque"))));
    }
    let field = |k: &str| -> Option<Vec<u8>> {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| b.0.clone())
            .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(k)).map(|s| s.as_bytes().to_vec()))
    };
    let crt = field("tls.crt").ok_or("has no tls.crt: add the PEM certificate chain")?;
    let key = field("tls.key").ok_or("has no tls.key: add the PEM private key")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&crt)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("has a tls.crt that is not valid PEM ({e})"))?;
    if chain.is_empty() {
        return Err("has a tls.crt without a PEM CERTIFICATE block".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&key)
        .map_err(|e| format!("has a tls.key without a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"))?;
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|e| format!("has a tls.key that is not a supported RSA, ECDSA or Ed25519 key ({e})"))?;
    let ck = CertifiedKey::new(chain, signer);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(Arc::new(ck)),
        Err(rustls::Error::InconsistentKeys(_)) => {
            Err("has a tls.key that does not match the first certificate of tls.crt: put the leaf certificate \
                 first and its own key"
                .into())
        }
        Err(e) => Err(format!("has a tls.crt whose first certificate does not parse ({e})")),
    }
}

/// Whether the leaf certificate names `host` (a wildcard host: a name under it).
fn covers(ck: &CertifiedKey, host: &str) -> bool {
    let Ok(leaf) = ck.end_entity_cert() else { return false };
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(leaf) else { return false };
    // `*.foo.com` is covered when a name one label under foo.com is.
    let probe = match host.strip_prefix("*.") {
        Some(suffix) => format!("weft-wildcard-probe.{suffix}"),
        None => host.to_string(),
    };
    match ServerName::try_from(probe) {
        Ok(name) => rustls::client::verify_server_name(&parsed, &name).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Balance, Matched};
    use serde_json::{Value, json};

    const NS: &str = "conf";

    fn obj<T: serde::de::DeserializeOwned>(v: Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    /// An Ingress of class `weft`, `age` seconds after the epoch of the tests.
    fn ing(name: &str, age: u32, annotations: Value, spec: Value) -> Arc<Ingress> {
        let mut spec = spec;
        if spec.get("ingressClassName").is_none() {
            spec["ingressClassName"] = json!("weft");
        }
        obj(json!({
            "metadata": {
                "name": name, "namespace": NS, "annotations": annotations,
                "creationTimestamp": format!("2024-01-01T00:{:02}:{:02}Z", age / 60, age % 60),
            },
            "spec": spec,
        }))
    }

    fn class(name: &str, controller: &str, default: bool) -> Arc<IngressClass> {
        let ann = if default { json!({DEFAULT_CLASS_ANNOTATION: "true"}) } else { json!({}) };
        obj(json!({"metadata": {"name": name, "annotations": ann}, "spec": {"controller": controller}}))
    }

    fn svc(name: &str, ports: Value) -> Arc<Service> {
        obj(json!({"metadata": {"name": name, "namespace": NS}, "spec": {"ports": ports}}))
    }

    /// A Service with port 8080 (named `http`) and one ready endpoint, 10.0.0.1:9376.
    fn echo(name: &str, inputs: &mut Inputs) {
        inputs.services.push(svc(name, json!([{"name": "http", "port": 8080}])));
        inputs.slices.push(slice(name, Some("http"), 9376, json!([{"addresses": ["10.0.0.1"]}])));
    }

    fn slice(service: &str, port_name: Option<&str>, port: i32, endpoints: Value) -> Arc<EndpointSlice> {
        obj(json!({
            "metadata": {"name": format!("{service}-x"), "namespace": NS, "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4",
            "ports": [{"name": port_name, "port": port}],
            "endpoints": endpoints,
        }))
    }

    fn inputs() -> Inputs {
        Inputs { classes: vec![class("weft", crate::CONTROLLER, false)], ..Inputs::default() }
    }

    fn path(p: &str, ty: &str, service: &str) -> Value {
        json!({"path": p, "pathType": ty, "backend": {"service": {"name": service, "port": {"number": 8080}}}})
    }

    fn run(inputs: &Inputs) -> Compiled {
        compile(inputs, &ClassConfig::default(), 7)
    }

    /// What a request gets: the Service's name, `redirect <code> <location>`, `503`, or `404`.
    fn get(c: &Compiled, host: &str, path: &str) -> String {
        match c.table.route(host, path) {
            None => "404".into(),
            Some(Matched { route, .. }) => describe(&route.target),
        }
    }

    fn describe(t: &Target) -> String {
        match t {
            Target::Service(b) => b.service.name.clone(),
            Target::Redirect { location, code } => format!("redirect {code} {location}"),
            Target::Unavailable => "503".into(),
        }
    }

    fn reasons(c: &Compiled) -> Vec<&'static str> {
        c.problems.iter().map(|p| p.reason).collect()
    }

    fn path_rules() -> Inputs {
        let mut i = inputs();
        for s in [
            "foo-exact",
            "foo-prefix",
            "aaa-slash-bbb-prefix",
            "aaa-prefix",
            "aaa-slash-bbb-slash-prefix",
            "foo-slash-exact",
        ] {
            echo(s, &mut i);
        }
        i.ingresses.push(ing(
            "path-rules",
            0,
            json!({}),
            json!({"rules": [
                {"host": "exact-path-rules", "http": {"paths": [path("/foo", "Exact", "foo-exact")]}},
                {"host": "prefix-path-rules", "http": {"paths": [
                    path("/foo", "Prefix", "foo-prefix"),
                    path("/aaa/bbb", "Prefix", "aaa-slash-bbb-prefix"),
                    path("/aaa", "Prefix", "aaa-prefix"),
                ]}},
                {"host": "mixed-path-rules", "http": {"paths": [
                    path("/foo", "Prefix", "foo-prefix"),
                    path("/foo", "Exact", "foo-exact"),
                ]}},
                {"host": "trailing-slash-path-rules", "http": {"paths": [
                    path("/aaa/bbb/", "Prefix", "aaa-slash-bbb-slash-prefix"),
                    path("/foo/", "Exact", "foo-slash-exact"),
                ]}},
            ]}),
        ));
        i
    }

    #[test]
    fn conformance_path_rules() {
        let c = run(&path_rules());
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(c.served, vec![ObjectRef { namespace: NS.into(), name: "path-rules".into() }]);
        assert_eq!(c.table.generation, 7);
        for (host, p, want) in [
            ("exact-path-rules", "/foo", "foo-exact"),
            ("exact-path-rules", "/foo/", "404"),
            ("exact-path-rules", "/FOO", "404"),
            ("exact-path-rules", "/bar", "404"),
            ("prefix-path-rules", "/foo", "foo-prefix"),
            ("prefix-path-rules", "/foo/", "foo-prefix"),
            ("prefix-path-rules", "/FOO", "404"),
            ("prefix-path-rules", "/aaa/bbb", "aaa-slash-bbb-prefix"),
            ("prefix-path-rules", "/aaa/bbb/ccc", "aaa-slash-bbb-prefix"),
            ("prefix-path-rules", "/aaa/ccc", "aaa-prefix"),
            ("prefix-path-rules", "/aaaccc", "404"),
            ("mixed-path-rules", "/foo", "foo-exact"),
            ("mixed-path-rules", "/foo/x", "foo-prefix"),
            ("trailing-slash-path-rules", "/aaa/bbb", "aaa-slash-bbb-slash-prefix"),
            ("trailing-slash-path-rules", "/aaa/bbb/", "aaa-slash-bbb-slash-prefix"),
            ("trailing-slash-path-rules", "/foo", "404"),
            ("trailing-slash-path-rules", "/foo/", "foo-slash-exact"),
            ("no-such-host", "/foo", "404"),
        ] {
            assert_eq!(get(&c, host, p), want, "{host}{p}");
        }
        let b = match &c.table.route("exact-path-rules", "/foo").unwrap().route.target {
            Target::Service(b) => b,
            t => panic!("{t:?}"),
        };
        assert_eq!(&*b.ready, &["10.0.0.1:9376".parse().unwrap()]);
        assert_eq!(b.port, "8080");
    }

    fn tls_pair(names: &[&str]) -> (String, String) {
        let ck = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        (ck.cert.pem(), ck.signing_key.serialize_pem())
    }

    fn secret(name: &str, crt: &str, key: &str) -> Arc<Secret> {
        obj(json!({
            "metadata": {"name": name, "namespace": NS},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": crt, "tls.key": key},
        }))
    }

    fn host_rules() -> Inputs {
        let mut i = inputs();
        echo("wildcard-foo-com", &mut i);
        echo("foo-bar-com", &mut i);
        let (crt, key) = tls_pair(&["foo.bar.com"]);
        i.secrets.push(secret("conformance-tls", &crt, &key));
        i.ingresses.push(ing(
            "host-rules",
            0,
            json!({}),
            json!({
                "tls": [{"hosts": ["foo.bar.com"], "secretName": "conformance-tls"}],
                "rules": [
                    {"host": "*.foo.com", "http": {"paths": [path("/", "Prefix", "wildcard-foo-com")]}},
                    {"host": "foo.bar.com", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                        "backend": {"service": {"name": "foo-bar-com", "port": {"name": "http"}}}}]}},
                ],
            }),
        ));
        i
    }

    #[test]
    fn conformance_host_rules() {
        let c = run(&host_rules());
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        for (host, want) in [
            ("foo.bar.com", "foo-bar-com"),
            ("subdomain.bar.com", "404"),
            ("bar.foo.com", "wildcard-foo-com"),
            ("baz.bar.foo.com", "404"),
            ("foo.com", "404"),
        ] {
            assert_eq!(get(&c, host, "/"), want, "{host}");
        }
        assert!(c.table.certs.contains_key("foo.bar.com"));
        assert!(c.table.hosts["foo.bar.com"].tls);
        assert!(!c.table.wildcards["foo.com"].tls);
        // By port name: the Service port named http is 8080.
        match &c.table.route("foo.bar.com", "/").unwrap().route.target {
            Target::Service(b) => assert_eq!((b.port.as_str(), b.ready.len()), ("http", 1)),
            t => panic!("{t:?}"),
        }
    }

    #[test]
    fn conformance_default_backend_and_load_balancing() {
        let mut i = inputs();
        i.services.push(svc("echo-service", json!([{"port": 8080}])));
        let eps: Vec<Value> = (1..=10).map(|n| json!({"addresses": [format!("10.1.0.{n}")]})).collect();
        i.slices.push(slice("echo-service", None, 9376, json!(eps)));
        i.ingresses.push(ing(
            "default-backend",
            0,
            json!({}),
            json!({"defaultBackend": {"service": {"name": "echo-service", "port": {"number": 8080}}}}),
        ));
        let c = run(&i);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        for (host, p) in [("my-host", "/"), ("my-host", "/sub-path"), ("some-host", "/"), ("", "/resource")] {
            assert_eq!(get(&c, host, p), "echo-service");
        }
        match &c.table.default_backend.as_ref().unwrap().target {
            Target::Service(b) => assert_eq!(b.ready.len(), 10),
            t => panic!("{t:?}"),
        }
    }

    #[test]
    fn conformance_ingress_class() {
        let mut i = path_rules();
        let mut bad = (*ing(
            "test-ingress-class",
            0,
            json!({}),
            json!({"rules": [
                {"host": "ingress-class", "http": {"paths": [path("/", "Prefix", "foo-prefix")]}}
            ]}),
        ))
        .clone();
        bad.spec.as_mut().unwrap().ingress_class_name = Some("some-invalid-class-name".into());
        i.ingresses = vec![Arc::new(bad)];
        let c = run(&i);
        assert!(c.served.is_empty() && c.problems.is_empty());
        assert_eq!(get(&c, "ingress-class", "/"), "404");
    }

    #[test]
    fn class_selection() {
        let spec = |cls: Option<&str>| {
            let mut s = json!({"rules": [{"host": "a.example", "http": {"paths": [path("/", "Prefix", "s")]}}]});
            s["ingressClassName"] = cls.map_or(Value::Null, |c| json!(c));
            s
        };
        let mut i = Inputs {
            classes: vec![class("weft", crate::CONTROLLER, false), class("nginx", "k8s.io/ingress-nginx", true)],
            ..Inputs::default()
        };
        let ours = |i: &Inputs, cfg: &ClassConfig| -> Vec<String> {
            compile(i, cfg, 0).served.into_iter().map(|r| r.name).collect()
        };
        let mut deleted = (*ing("deleted", 5, json!({}), spec(Some("weft")))).clone();
        deleted.metadata.deletion_timestamp = deleted.metadata.creation_timestamp.clone();
        i.ingresses = vec![
            ing("by-field", 1, json!({}), spec(Some("weft"))),
            ing("other", 2, json!({}), spec(Some("nginx"))),
            ing("by-annotation", 3, json!({CLASS_ANNOTATION: "weft"}), spec(None)),
            ing("annotation-other", 4, json!({CLASS_ANNOTATION: "nginx"}), spec(None)),
            // The field wins over the annotation.
            ing("field-wins", 6, json!({CLASS_ANNOTATION: "weft"}), spec(Some("nginx"))),
            ing("no-class", 7, json!({}), spec(None)),
            Arc::new(deleted),
        ];
        i.ingresses[5] = {
            let mut x = (*i.ingresses[5]).clone();
            x.spec.as_mut().unwrap().ingress_class_name = None;
            Arc::new(x)
        };
        i.ingresses[6] = {
            let mut x = (*i.ingresses[6]).clone();
            x.spec.as_mut().unwrap().ingress_class_name = None;
            x.metadata.deletion_timestamp = x.metadata.creation_timestamp.clone();
            Arc::new(x)
        };
        let cfg = ClassConfig::default();
        assert_eq!(ours(&i, &cfg), vec!["by-annotation", "by-field"]);
        // Without a class: ours when one of our classes is the default, or when told to.
        assert_eq!(
            ours(&i, &ClassConfig { watch_without_class: true, ..cfg.clone() }),
            vec!["by-annotation", "by-field", "no-class"]
        );
        i.classes[0] = class("weft", crate::CONTROLLER, true);
        assert_eq!(ours(&i, &cfg), vec!["by-annotation", "by-field", "no-class"]);
        // Another controller's default class does not make class-less Ingresses ours.
        i.classes[0] = class("weft", crate::CONTROLLER, false);
        assert_eq!(ours(&i, &cfg).len(), 2);
        // A class of another controller with our name is not ours.
        i.classes = vec![class("weft", "example.com/other", false)];
        assert!(ours(&i, &cfg).is_empty());
    }

    #[test]
    fn backends_resolve_or_explain() {
        let mut i = inputs();
        i.services.push(svc("web", json!([{"name": "http", "port": 80}, {"name": "admin", "port": 9000}])));
        i.services.push(obj(json!({"metadata": {"name": "ext", "namespace": NS},
            "spec": {"type": "ExternalName", "externalName": "example.com", "ports": [{"port": 80}]}})));
        i.slices.push(obj(json!({
            "metadata": {"name": "web-a", "namespace": NS, "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "admin", "port": 9001}],
            "endpoints": [{"addresses": ["10.0.0.2"]}, {"addresses": ["10.0.0.1"]}],
        })));
        let be = |name: &str, port: Value| json!({"service": {"name": name, "port": port}});
        let p = |path: &str, backend: Value| json!({"path": path, "pathType": "Prefix", "backend": backend});
        i.ingresses.push(ing(
            "i",
            0,
            json!({}),
            json!({"rules": [{"host": "h.example", "http": {"paths": [
                p("/num", be("web", json!({"number": 80}))),
                p("/name", be("web", json!({"name": "admin"}))),
                p("/nosvc", be("gone", json!({"number": 80}))),
                p("/noport", be("web", json!({"number": 81}))),
                p("/noname", be("web", json!({"name": "grpc"}))),
                p("/ext", be("ext", json!({"number": 80}))),
                p("/res", json!({"resource": {"apiGroup": "k8s.example.com", "kind": "StorageBucket", "name": "b"}})),
                p("/none", be("web", json!({}))),
            ]}}]}),
        ));
        let c = run(&i);
        let addrs = |path: &str| match &c.table.route("h.example", path).unwrap().route.target {
            Target::Service(b) => b.ready.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            t => panic!("{path}: {t:?}"),
        };
        assert_eq!(addrs("/num"), vec!["10.0.0.1:8080", "10.0.0.2:8080"]);
        assert_eq!(addrs("/name"), vec!["10.0.0.1:9001", "10.0.0.2:9001"]);
        for path in ["/nosvc", "/noport", "/noname", "/ext", "/res", "/none"] {
            assert_eq!(get(&c, "h.example", path), "503", "{path}");
        }
        assert_eq!(
            reasons(&c),
            vec![
                "ServiceNotFound",
                "PortNotFound",
                "PortNotFound",
                "ExternalNameService",
                "ResourceBackend",
                "PortNotFound"
            ]
        );
        let m: Vec<&str> = c.problems.iter().map(|p| p.message.as_str()).collect();
        assert!(m[0].starts_with("spec.rules[0].http.paths[2].backend.service.name: Service conf/\"gone\" not found"));
        assert!(m[1].starts_with("spec.rules[0].http.paths[3].backend.service.port.number:"), "{}", m[1]);
        assert!(m[1].contains("80 (http), 9000 (admin)"));
        assert!(m[2].starts_with("spec.rules[0].http.paths[4].backend.service.port.name:"));
        assert!(m[3].contains("ExternalName"));
        assert!(m[4].contains("weft serves only service backends; use spec.rules[0].http.paths[6].backend.service"));
    }

    #[test]
    fn endpoint_readiness() {
        let mut i = inputs();
        i.services.push(svc("web", json!([{"port": 80}])));
        i.slices.push(slice(
            "web",
            None,
            8080,
            json!([
                {"addresses": ["10.0.0.5"]},
                {"addresses": ["10.0.0.4"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.0.0.1"], "conditions": {"ready": false, "serving": false, "terminating": true}},
                {"addresses": ["not-an-ip"]},
            ]),
        ));
        // A second slice of the same Service: a duplicate, an IPv6 address.
        let mut s2 =
            (*slice("web", Some(""), 8080, json!([{"addresses": ["10.0.0.4"]}, {"addresses": ["fd00::1"]}]))).clone();
        s2.metadata.name = Some("web-y".into());
        i.slices.push(Arc::new(s2));
        // A slice of the wrong port name, of another Service, and one in another namespace.
        i.slices.push(slice("web", Some("metrics"), 9090, json!([{"addresses": ["10.9.9.9"]}])));
        i.slices.push(slice("other", None, 8080, json!([{"addresses": ["10.8.8.8"]}])));
        let mut far = (*slice("web", None, 8080, json!([{"addresses": ["10.7.7.7"]}]))).clone();
        far.metadata.namespace = Some("elsewhere".into());
        i.slices.push(Arc::new(far));
        i.ingresses.push(ing(
            "i",
            0,
            json!({"nginx.ingress.kubernetes.io/backend-protocol": "GRPC"}),
            json!({
                "defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}
            }),
        ));
        let c = run(&i);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        let Target::Service(b) = &c.table.default_backend.as_ref().unwrap().target else { panic!() };
        let s = |a: &[SocketAddr]| a.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert_eq!(s(&b.ready), vec!["10.0.0.4:8080", "10.0.0.5:8080", "[fd00::1]:8080"]);
        assert_eq!(s(&b.serving_terminating), vec!["10.0.0.2:8080"]);
        assert_eq!(b.protocol, BackendProtocol::Grpc);
    }

    #[test]
    fn oldest_wins_and_prefix_order() {
        let mut i = inputs();
        for s in ["old", "new", "long", "short"] {
            echo(s, &mut i);
        }
        let rule = |paths: Value| json!({"rules": [{"host": "h.example", "http": {"paths": paths}}]});
        // Listed newest first: order comes from creationTimestamp, not the input order.
        i.ingresses.push(ing(
            "b-new",
            20,
            json!({}),
            rule(json!([path("/app", "Prefix", "new"), path("/x", "Exact", "new")])),
        ));
        i.ingresses.push(ing(
            "a-old",
            10,
            json!({}),
            rule(json!([path("/app/", "Prefix", "old"), path("/x", "Exact", "old")])),
        ));
        i.ingresses.push(ing(
            "c",
            30,
            json!({}),
            rule(json!([path("/", "Prefix", "short"), path("/app/v1", "Prefix", "long")])),
        ));
        // Same host and path in another pathType is no conflict.
        i.ingresses.push(ing("d", 40, json!({}), rule(json!([path("/app", "Exact", "new")]))));
        let c = run(&i);
        assert_eq!(reasons(&c), vec!["PathConflict", "PathConflict"]);
        assert!(c.problems.iter().all(|p| p.ingress.name == "b-new" && p.message.contains("Ingress conf/a-old")));
        assert!(c.problems[0].message.starts_with("spec.rules[0].http.paths[0]:"));
        assert_eq!(get(&c, "h.example", "/app/z"), "old");
        assert_eq!(get(&c, "h.example", "/app"), "new");
        assert_eq!(get(&c, "h.example", "/x"), "old");
        assert_eq!(get(&c, "h.example", "/app/v1/z"), "long");
        assert_eq!(get(&c, "h.example", "/other"), "short");
        let order: Vec<&str> = c.table.hosts["h.example"].prefixes.iter().map(|(p, _)| p.0.as_str()).collect();
        assert_eq!(order, vec!["/app/v1", "/app", "/"]);
        assert_eq!(c.served.len(), 4);
        // Same inputs, same result.
        let again = run(&i);
        assert_eq!(again.problems, c.problems);
        assert_eq!(again.served, c.served);
    }

    #[test]
    fn regex_and_prefix_of_one_path_conflict_and_take_canaries() {
        let mut i = inputs();
        echo("re", &mut i);
        echo("pre", &mut i);
        echo("can", &mut i);
        let rule = |p: Value| json!({"rules": [{"host": "h.example", "http": {"paths": [p]}}]});
        i.ingresses.push(ing(
            "a",
            1,
            json!({"nginx.ingress.kubernetes.io/use-regex": "true"}),
            rule(path("/api/", "Prefix", "re")),
        ));
        i.ingresses.push(ing("b", 2, json!({}), rule(path("/api/", "Prefix", "pre"))));
        i.ingresses.push(ing(
            "c",
            3,
            json!({"nginx.ingress.kubernetes.io/canary": "true",
            "nginx.ingress.kubernetes.io/canary-by-cookie": "beta"}),
            rule(path("/api", "ImplementationSpecific", "can")),
        ));
        let c = run(&i);
        assert_eq!(reasons(&c), vec!["PathConflict"]);
        assert_eq!(c.problems[0].ingress.name, "b");
        let r = c.table.route("h.example", "/api/x").unwrap().route;
        assert_eq!((describe(&r.target).as_str(), r.canaries.len()), ("re", 1));
        assert_eq!(r.canaries[0].cookie.as_deref(), Some("beta"));
    }

    #[test]
    fn tie_on_length_goes_to_the_oldest() {
        let mut i = inputs();
        echo("a", &mut i);
        echo("b", &mut i);
        let rule = |p: Value| json!({"rules": [{"http": {"paths": [p]}}]});
        i.ingresses.push(ing("z", 1, json!({}), rule(path("/abc", "Prefix", "a"))));
        i.ingresses.push(ing("y", 2, json!({}), rule(path("/abd", "ImplementationSpecific", "b"))));
        let c = run(&i);
        let order: Vec<&str> = c.table.any_host.prefixes.iter().map(|(_, r)| r.ingress.name.as_str()).collect();
        assert_eq!(order, vec!["z", "y"]);
        assert_eq!(get(&c, "anything", "/abd/e"), "b");
    }

    #[test]
    fn hosts_and_paths_validated() {
        let mut i = inputs();
        echo("s", &mut i);
        i.ingresses.push(ing(
            "i",
            0,
            json!({}),
            json!({"rules": [
                {"host": "UPPER.Example", "http": {"paths": [path("/", "Prefix", "s")]}},
                {"host": "bad_host!", "http": {"paths": [path("/", "Prefix", "s")]}},
                {"host": "10.0.0.1", "http": {"paths": [path("/", "Prefix", "s")]}},
                {"host": "*.*.example", "http": {"paths": [path("/", "Prefix", "s")]}},
                {"host": "h:80", "http": {"paths": [path("/", "Prefix", "s")]}},
                {"host": "p.example", "http": {"paths": [
                    path("rel", "Prefix", "s"),
                    path("/a//b", "Exact", "s"),
                    path("/a/..", "Prefix", "s"),
                    path("/%2fx", "Prefix", "s"),
                    path("/ok", "Sometimes", "s"),
                    path("", "Prefix", "s"),
                    path("", "ImplementationSpecific", "s"),
                ]}},
                {"host": "nohttp.example"},
            ]}),
        ));
        let c = run(&i);
        assert_eq!(
            reasons(&c),
            vec![
                "InvalidHost",
                "InvalidHost",
                "InvalidHost",
                "InvalidHost",
                "InvalidPath",
                "InvalidPath",
                "InvalidPath",
                "InvalidPath",
                "InvalidPath",
                "InvalidPath"
            ]
        );
        assert!(c.problems[0].message.starts_with("spec.rules[1].host: \"bad_host!\""));
        assert!(c.problems[8].message.starts_with("spec.rules[5].http.paths[4].pathType"));
        assert_eq!(get(&c, "upper.example", "/x"), "s");
        // ImplementationSpecific with no path is `/`.
        assert_eq!(get(&c, "p.example", "/anything"), "s");
        // A host with rules but no paths does not fall back to the host-less rules.
        assert!(c.table.hosts.contains_key("nohttp.example"));
        assert_eq!(get(&c, "nohttp.example", "/"), "404");
    }

    #[test]
    fn regex_paths_and_rewrite() {
        let mut i = inputs();
        echo("s", &mut i);
        echo("t", &mut i);
        // Seed 000: rewrite-target `/` on a Prefix path.
        i.ingresses.push(ing("seed", 0, json!({"nginx.ingress.kubernetes.io/rewrite-target": "/"}), json!({"rules": [
            {"host": "seed.example", "http": {"paths": [path("/watch", "Prefix", "s"), path("/exact", "Exact", "t")]}}
        ]})));
        i.ingresses.push(ing(
            "cap",
            1,
            json!({"nginx.ingress.kubernetes.io/rewrite-target": "/$2"}),
            json!({"rules": [
                {"host": "cap.example", "http": {"paths": [
                    path("/something(/|$)(.*)", "ImplementationSpecific", "s"),
                    path("/bad(", "ImplementationSpecific", "s"),
                    path("/(a{1000}){1000}", "ImplementationSpecific", "s"),
                    path("/s", "ImplementationSpecific", "t"),
                ]}}
            ]}),
        ));
        i.ingresses.push(ing(
            "re",
            2,
            json!({"nginx.ingress.kubernetes.io/use-regex": "true"}),
            json!({"rules": [
                {"host": "re.example", "http": {"paths": [path("/v[0-9]+/api", "Prefix", "s")]}}
            ]}),
        ));
        let c = run(&i);
        assert_eq!(reasons(&c), vec!["InvalidPath", "InvalidPath"]);
        assert!(c.problems[0].message.contains("spec.rules[0].http.paths[1].path: \"/bad(\""));
        assert!(
            c.problems[1].message.contains("size limit") || c.problems[1].message.contains("exceeds"),
            "{}",
            c.problems[1].message
        );
        let seed = c.table.host("seed.example");
        assert!(seed.prefixes.is_empty() && seed.regexes.len() == 1 && seed.exact.contains_key("/exact"));
        let m = c.table.route("seed.example", "/watch/x").unwrap();
        assert_eq!(m.route.settings.rewrite_target.as_deref(), Some("/"));
        assert!(m.captures.is_some());
        // Case-insensitive, anchored at the start only (ingress-nginx's `~* ^/watch`).
        assert_eq!(get(&c, "seed.example", "/WATCH"), "s");
        assert_eq!(get(&c, "seed.example", "/watchdog"), "s");
        assert_eq!(get(&c, "seed.example", "/x/watch"), "404");
        assert_eq!(get(&c, "seed.example", "/exact"), "t");
        let m = c.table.route("cap.example", "/something/new").unwrap();
        assert_eq!(m.captures.as_ref().unwrap().get(2).unwrap().as_str(), "new");
        assert_eq!(m.route.path, "/something(/|$)(.*)");
        // Longest pattern first.
        let pats: Vec<&str> = c.table.host("cap.example").regexes.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(pats, vec!["(?i)^/something(/|$)(.*)", "(?i)^/s"]);
        assert_eq!(get(&c, "re.example", "/V2/api/x"), "s");
        assert_eq!(get(&c, "re.example", "/vx/api"), "404");
    }

    #[test]
    fn tls_secrets() {
        let (crt, key) = tls_pair(&["a.example", "*.w.example"]);
        let (_, other_key) = tls_pair(&["a.example"]);
        let mut i = inputs();
        echo("s", &mut i);
        i.secrets.push(secret("good", &crt, &key));
        i.secrets.push(secret("mismatch", &crt, &other_key));
        i.secrets.push(secret(
            "garbage",
            "-----BEGIN CERTIFICATE-----\nnot base64!!\n-----END CERTIFICATE-----\n",
            &key,
        ));
        i.secrets.push(secret("nopem", "hello", &key));
        i.secrets.push(secret("badder", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", &key));
        i.secrets.push(secret("nokey", &crt, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"));
        i.secrets.push(obj(json!({"metadata": {"name": "opaque", "namespace": NS}, "type": "Opaque",
            "data": {"tls.crt": "", "tls.key": ""}})));
        let rules: Vec<Value> = [
            "a.example",
            "*.w.example",
            "b.example",
            "c.example",
            "d.example",
            "e.example",
            "f.example",
            "g.example",
            "h.example",
        ]
        .iter()
        .map(|h| json!({"host": h, "http": {"paths": [path("/", "Prefix", "s")]}}))
        .collect();
        i.ingresses.push(ing(
            "i",
            0,
            json!({}),
            json!({
                "rules": rules,
                "tls": [
                    {"hosts": ["a.example", "*.w.example", "b.example"], "secretName": "good"},
                    {"hosts": ["c.example"], "secretName": "mismatch"},
                    {"hosts": ["d.example"], "secretName": "garbage"},
                    {"hosts": ["e.example"], "secretName": "missing"},
                    {"hosts": ["f.example"], "secretName": "opaque"},
                    {"hosts": ["g.example"], "secretName": "nopem"},
                    {"hosts": ["h.example"], "secretName": "badder"},
                    {"hosts": ["h.example"], "secretName": "nokey"},
                ],
            }),
        ));
        let c = run(&i);
        let msgs: Vec<&str> = c.problems.iter().map(|p| p.message.as_str()).collect();
        assert!(c.problems.iter().all(|p| p.reason == "TLSSecret"), "{msgs:?}");
        assert_eq!(msgs.len(), 8, "{msgs:?}");
        assert!(msgs[0].contains("does not cover host b.example"));
        assert!(msgs[1].contains("\"mismatch\"") && msgs[1].contains("does not match"), "{}", msgs[1]);
        assert!(msgs[2].contains("\"garbage\"") && msgs[2].contains("not valid PEM"), "{}", msgs[2]);
        assert!(msgs[3].contains("\"missing\" is not found"));
        assert!(msgs[4].contains("not kubernetes.io/tls"));
        assert!(msgs[5].contains("without a PEM CERTIFICATE"), "{}", msgs[5]);
        assert!(msgs[6].contains("does not parse"), "{}", msgs[6]);
        assert!(msgs[7].contains("tls.key"), "{}", msgs[7]);
        let mut with_cert: Vec<&str> = c.table.certs.keys().map(String::as_str).collect();
        with_cert.sort();
        assert_eq!(with_cert, vec!["*.w.example", "a.example"]);
        // Every listed host is HTTPS, with or without a usable certificate.
        for h in
            ["a.example", "b.example", "c.example", "d.example", "e.example", "f.example", "g.example", "h.example"]
        {
            assert!(c.table.hosts[h].tls, "{h}");
        }
        assert!(c.table.wildcards["w.example"].tls);
    }

    #[test]
    fn tls_without_hosts_and_key_formats() {
        // An Ed25519 and a P-384 key, and a TLS entry that lists no hosts: the rules' hosts.
        let mut i = inputs();
        echo("s", &mut i);
        for (n, alg) in [("ed", &rcgen::PKCS_ED25519), ("p384", &rcgen::PKCS_ECDSA_P384_SHA384)] {
            let kp = rcgen::KeyPair::generate_for(alg).unwrap();
            let cert = rcgen::CertificateParams::new(vec![format!("{n}.example")]).unwrap().self_signed(&kp).unwrap();
            i.secrets.push(secret(n, &cert.pem(), &kp.serialize_pem()));
            i.ingresses.push(ing(
                n,
                0,
                json!({}),
                json!({
                    "rules": [{"host": format!("{n}.example"), "http": {"paths": [path("/", "Prefix", "s")]}}],
                    "tls": [{"secretName": n}],
                }),
            ));
        }
        let c = run(&i);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert!(c.table.certs.contains_key("ed.example") && c.table.certs.contains_key("p384.example"));
        assert!(c.table.hosts["ed.example"].tls);
    }

    #[test]
    fn canaries_attach_to_main_routes() {
        let mut i = inputs();
        echo("main", &mut i);
        echo("canary", &mut i);
        let rule = |p: Value| json!({"rules": [{"host": "c.example", "http": {"paths": [p]}}]});
        i.ingresses.push(ing("main", 0, json!({}), rule(path("/", "Prefix", "main"))));
        i.ingresses.push(ing(
            "canary",
            1,
            json!({
                "nginx.ingress.kubernetes.io/canary": "true",
                "nginx.ingress.kubernetes.io/canary-by-header": "X-Canary",
                "nginx.ingress.kubernetes.io/canary-weight": "20",
            }),
            rule(path("/", "Prefix", "canary")),
        ));
        i.ingresses.push(ing(
            "orphan",
            2,
            json!({"nginx.ingress.kubernetes.io/canary": "true"}),
            rule(path("/nope", "Prefix", "canary")),
        ));
        let c = run(&i);
        assert_eq!(reasons(&c), vec!["CanaryWithoutMain"]);
        assert_eq!(c.problems[0].ingress.name, "orphan");
        let r = c.table.route("c.example", "/x").unwrap().route;
        assert_eq!(describe(&r.target), "main");
        assert_eq!(r.canaries.len(), 1);
        let k = &r.canaries[0];
        assert_eq!((k.ingress.name.as_str(), k.backend.service.name.as_str()), ("canary", "canary"));
        assert_eq!(k.header, Some(("X-Canary".into(), None)));
        assert_eq!((k.weight, k.weight_total), (20, 100));
        assert_eq!(c.served.len(), 3);
    }

    #[test]
    fn annotations_shape_routes() {
        let mut i = inputs();
        echo("s", &mut i);
        let rule = |h: &str| json!({"rules": [{"host": h, "http": {"paths": [path("/", "Prefix", "s")]}}]});
        i.ingresses.push(ing(
            "redir",
            0,
            json!({"nginx.ingress.kubernetes.io/permanent-redirect": "https://new.example/"}),
            rule("r.example"),
        ));
        i.ingresses.push(ing(
            "auth",
            1,
            json!({"nginx.ingress.kubernetes.io/auth-url": "http://auth/"}),
            rule("a.example"),
        ));
        i.ingresses.push(ing(
            "snip",
            2,
            json!({
                "nginx.ingress.kubernetes.io/configuration-snippet": "return 200;",
                "nginx.ingress.kubernetes.io/load-balance": "ewma",
            }),
            rule("s.example"),
        ));
        i.ingresses.push(ing(
            "allow",
            3,
            json!({"nginx.ingress.kubernetes.io/whitelist-source-range": "not-a-cidr"}),
            rule("w.example"),
        ));
        let c = run(&i);
        assert_eq!(reasons(&c), vec!["UnsupportedAnnotation", "UnsupportedAnnotation", "InvalidAnnotation"]);
        assert!(c.problems[1].message.contains("CVE-2025-1974"));
        assert_eq!(get(&c, "r.example", "/x"), "redirect 301 https://new.example/");
        assert_eq!(get(&c, "a.example", "/x"), "503");
        assert_eq!(get(&c, "s.example", "/x"), "s");
        assert_eq!(c.table.route("s.example", "/").unwrap().route.settings.balance, Balance::Ewma);
        assert_eq!(get(&c, "w.example", "/x"), "503");
    }

    #[test]
    fn default_backend_of_the_oldest() {
        let mut i = inputs();
        echo("old", &mut i);
        echo("new", &mut i);
        let db = |s: &str| json!({"defaultBackend": {"service": {"name": s, "port": {"number": 8080}}}});
        i.ingresses.push(ing("n", 9, json!({}), db("new")));
        i.ingresses.push(ing("o", 1, json!({}), db("old")));
        let c = run(&i);
        assert_eq!(get(&c, "x", "/"), "old");
        assert_eq!(reasons(&c), vec!["DefaultBackendConflict"]);
        assert_eq!(c.problems[0].ingress.name, "n");
    }

    #[test]
    fn hostile_inputs_do_not_panic() {
        let mut i = inputs();
        echo("s", &mut i);
        let huge = "a".repeat(1 << 20);
        let paths: Vec<Value> =
            (0..10_000).map(|n| path(&format!("/p{n}"), if n % 2 == 0 { "Prefix" } else { "Exact" }, "s")).collect();
        i.ingresses.push(ing(
            "many",
            0,
            json!({}),
            json!({"rules": [{"host": "many.example", "http": {"paths": paths}}]}),
        ));
        let regexes: Vec<Value> =
            (0..300).map(|n| path(&format!("/r{n}/(x+)+y"), "ImplementationSpecific", "s")).collect();
        i.ingresses.push(ing(
            "re",
            1,
            json!({"nginx.ingress.kubernetes.io/use-regex": "true"}),
            json!({"rules": [{"host": "re.example", "http": {"paths": regexes}}]}),
        ));
        let mut garbage = (*ing(
            "garbage",
            2,
            json!({
                "nginx.ingress.kubernetes.io/rewrite-target": huge,
                "nginx.ingress.kubernetes.io/server-snippet": huge,
            }),
            json!({
                "rules": [
                    {"host": huge, "http": {"paths": [path(&huge, "Prefix", &huge)]}},
                    {"host": "g.example", "http": {"paths": [
                        path(&format!("/{huge}"), "Prefix", &huge),
                        path("/\u{0}\u{202e}", "Exact", "s"),
                        path("/((((((((((((((((((((x))))))))))))))))))))*", "Prefix", "s"),
                    ]}},
                ],
                "tls": [{"hosts": [huge, "*", ""], "secretName": huge}],
                "defaultBackend": {"service": {"name": "s", "port": {"number": -1}}},
            }),
        ))
        .clone();
        garbage.metadata.name = None;
        garbage.metadata.namespace = None;
        i.ingresses.push(Arc::new(garbage));
        i.ingresses.push(ing(
            "huge-re",
            3,
            json!({"nginx.ingress.kubernetes.io/use-regex": "true"}),
            json!({"rules": [{"http": {"paths": [path(&format!("/{}", "(a{1000})".repeat(50)), "Prefix", "s")]}}]}),
        ));
        // A slice with an absurd port, no ports, and addresses that are not IPs.
        i.slices.push(slice("s", Some("http"), 70_000, json!([{"addresses": ["x", "999.1.1.1"]}])));
        i.slices.push(obj(json!({"metadata": {"labels": {SERVICE_NAME_LABEL: "s"}}, "addressType": "FQDN"})));
        i.secrets.push(obj(json!({"metadata": {"name": "junk", "namespace": NS}, "type": "kubernetes.io/tls",
            "data": {"tls.crt": k8s_openapi::ByteString(vec![0xff; 4096]), "tls.key": k8s_openapi::ByteString(vec![0; 10])}})));
        let c = run(&i);
        assert_eq!(c.table.hosts["many.example"].prefixes.len() + c.table.hosts["many.example"].exact.len(), 10_000);
        assert_eq!(get(&c, "many.example", "/p9998/x"), "s");
        assert_eq!(get(&c, "many.example", "/p9999"), "s");
        assert_eq!(c.table.hosts["re.example"].regexes.len(), 300);
        // No match (in linear time): the default backend, the garbage Ingress's port -1, 503.
        assert_eq!(get(&c, "re.example", &format!("/r5/{}z", "x".repeat(100_000))), "503");
        assert_eq!(get(&c, "re.example", "/r5/xxy"), "s");
        assert!(c.problems.iter().all(|p| p.message.len() < 2000), "a message echoes a huge value");
        assert!(c.problems.iter().any(|p| p.reason == "InvalidHost"));
        assert!(c.problems.iter().any(|p| p.ingress.name == "huge-re" && p.reason == "InvalidPath"));
        assert!(c.served.iter().any(|r| r.namespace == "default" && r.name.is_empty()));
    }
}
