//! The seam between the compiler and the proxy: what the compiler's inputs are and what the
//! proxy serves. Everything the proxy needs per request is decided here, once per change:
//! a request does one host lookup, one path match and reads settings already parsed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

/// The objects a table is compiled from, as a source (the API's caches, or a file) holds them.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub ingresses: Vec<Arc<Ingress>>,
    pub classes: Vec<Arc<IngressClass>>,
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    /// Secrets of type `kubernetes.io/tls` (others are ignored).
    pub secrets: Vec<Arc<Secret>>,
}

/// Which Ingresses are this controller's.
#[derive(Clone, Debug)]
pub struct ClassConfig {
    /// The `spec.controller` of the IngressClasses this controller serves.
    pub controller: String,
    /// Serve Ingresses that name no class (neither `ingressClassName` nor the
    /// `kubernetes.io/ingress.class` annotation) even when none of our classes is the default.
    pub watch_without_class: bool,
}

/// The controller name weft's IngressClass names (`spec.controller`).
pub const CONTROLLER: &str = "weft.dev/ingress";

impl Default for ClassConfig {
    fn default() -> ClassConfig {
        ClassConfig { controller: CONTROLLER.into(), watch_without_class: false }
    }
}

/// `namespace/name` of an object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What compiling produced: the table to serve and what to tell users about.
#[derive(Debug, Default)]
pub struct Compiled {
    pub table: RouteTable,
    /// One per refused or questionable thing, each to become a Warning Event on its Ingress.
    pub problems: Vec<Problem>,
    /// The Ingresses this controller serves (whose `status.loadBalancer` it sets).
    pub served: Vec<ObjectRef>,
}

/// Something about an Ingress the controller refused or could not do, for a Warning Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub ingress: ObjectRef,
    /// The Event's reason, CamelCase: `UnsupportedAnnotation`, `InvalidAnnotation`,
    /// `ResourceBackend`, `ServiceNotFound`, `PortNotFound`, `TLSSecret`, `InvalidPath`,
    /// `InvalidHost`, `PathConflict`, `ExternalNameService`, `CanaryWithoutMain`,
    /// `DefaultBackendConflict`.
    pub reason: &'static str,
    /// The Event's message: names the field or annotation and the fix.
    pub message: String,
}

/// The whole routing state, immutable once built; the proxy swaps in a new one per change.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Rules whose host is exact, by lowercase host (no port).
    pub hosts: HashMap<String, HostRoutes>,
    /// Rules for `*.suffix` (one label), by lowercase `suffix`: `*.foo.com` is under `foo.com`
    /// and matches `bar.foo.com`, not `foo.com` nor `baz.bar.foo.com`.
    pub wildcards: HashMap<String, HostRoutes>,
    /// Rules without a host: they match any host that no exact or wildcard rule has.
    pub any_host: HostRoutes,
    /// Where a request goes that no rule matches: the `spec.defaultBackend` of the oldest
    /// served Ingress that has one, else `None` (the proxy's built-in 404).
    pub default_backend: Option<Arc<Route>>,
    /// Certificates for TLS, chosen by SNI: exact host, then `*.suffix`, then the default
    /// (self-signed) one the proxy makes itself.
    pub certs: HashMap<String, Arc<rustls::sign::CertifiedKey>>,
    /// Increases with every compile (the proxy's reload counter and log line).
    pub generation: u64,
}

/// The paths of one host, merged over every Ingress that has a rule for it.
#[derive(Debug, Default)]
pub struct HostRoutes {
    /// `pathType: Exact`, by path as written.
    pub exact: HashMap<String, Arc<Route>>,
    /// `Prefix` and `ImplementationSpecific` (treated as Prefix) paths, longest first (ties: the
    /// oldest Ingress first, then namespace/name, as ingress-nginx orders them).
    pub prefixes: Vec<(PathPrefix, Arc<Route>)>,
    /// Paths of Ingresses with `use-regex` (or `rewrite-target`, which implies it), longest
    /// pattern first: tried after `exact`, before `prefixes` (ingress-nginx's location order).
    pub regexes: Vec<(regex::Regex, Arc<Route>)>,
    /// Some Ingress lists this host under `spec.tls`: plain HTTP requests to it are redirected
    /// (308) to HTTPS unless the route's `ssl_redirect` is false.
    pub tls: bool,
}

/// A prefix as the API defines Prefix matching: element-wise on `/`-separated segments,
/// trailing slash ignored (`/foo/` and `/foo` both match `/foo`, `/foo/` and `/foo/bar`, not
/// `/foobar`); `/` matches everything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPrefix(pub String);

impl PathPrefix {
    /// `path` as written in the Ingress (the trailing `/` is dropped, `/` stays `/`).
    pub fn new(path: &str) -> PathPrefix {
        let t = path.trim_end_matches('/');
        PathPrefix(if t.is_empty() { "/".into() } else { t.to_string() })
    }

    /// Whether a request path (without the query) falls under this prefix.
    pub fn matches(&self, path: &str) -> bool {
        if self.0 == "/" {
            return true;
        }
        match path.strip_prefix(self.0.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

/// One path of one rule (or a default backend): where it goes and how.
#[derive(Debug)]
pub struct Route {
    /// The Ingress it comes from (metrics, access log, events).
    pub ingress: ObjectRef,
    /// The rule's host as written (`""` for none) and the path as written, for metrics labels.
    pub host: String,
    pub path: String,
    pub target: Target,
    pub settings: Arc<Settings>,
    /// Canary Ingresses for the same host and path (ingress-nginx's `canary: "true"`), tried in
    /// order before `target`: header, then cookie, then weight.
    pub canaries: Vec<Canary>,
}

/// Where a route sends requests.
#[derive(Debug)]
pub enum Target {
    Service(Backend),
    /// A `permanent-redirect` (or `app-root` for `/`): answered by the proxy itself.
    Redirect {
        location: String,
        code: u16,
    },
    /// Nothing to send to (a resource backend, a missing Service or port): 503 as
    /// ingress-nginx answers for a backend without endpoints. The problem is in `problems`.
    Unavailable,
}

/// A Service port's endpoints, as the proxy balances over them.
#[derive(Debug)]
pub struct Backend {
    pub service: ObjectRef,
    /// The Service port as the Ingress names it (`80` or `http`), for logs and metrics.
    pub port: String,
    /// Ready endpoints' addresses at the resolved target port (from EndpointSlices; never the
    /// ClusterIP), sorted, so an unchanged set compares equal across tables.
    pub ready: Arc<[SocketAddr]>,
    /// Terminating but still serving endpoints: used only when `ready` is empty (as kube-proxy
    /// does), so pods being drained finish what they have and take nothing new otherwise.
    pub serving_terminating: Arc<[SocketAddr]>,
    pub protocol: BackendProtocol,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendProtocol {
    #[default]
    Http,
    Https,
    /// HTTP/2 without TLS (h2c) to the endpoint.
    Grpc,
    /// HTTP/2 over TLS to the endpoint.
    Grpcs,
}

/// A canary: another backend for some requests of the same host and path.
#[derive(Debug)]
pub struct Canary {
    pub ingress: ObjectRef,
    pub backend: Backend,
    /// `canary-by-header`: the header; with `canary-by-header-value` that value routes to the
    /// canary, else `always` does; `never` never does.
    pub header: Option<(String, Option<String>)>,
    /// `canary-by-cookie`: `always` routes to the canary, `never` does not.
    pub cookie: Option<String>,
    /// `canary-weight` out of `canary-weight-total` (default 100).
    pub weight: u32,
    pub weight_total: u32,
}

/// The ingress-nginx annotations of an Ingress, parsed and validated (never pasted into any
/// configuration). Defaults are ingress-nginx's.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `rewrite-target`: the request path (not the query) is replaced by this, with `$1`..`$9`
    /// taken from the route's regex captures (`use-regex`; a capture that did not take part is
    /// empty); the query is kept. `/` on `/watch` sends `/watch/x?a=1` as `/?a=1`;
    /// `/$2` on `/something(/|$)(.*)` sends `/something/new` as `/new`. ingress-nginx also
    /// accepts a target without the leading `/` (`$1`): a result not starting with `/` gets one.
    pub rewrite_target: Option<String>,
    /// `ssl-redirect` (default true): redirect HTTP to HTTPS when the host has TLS.
    pub ssl_redirect: bool,
    /// `force-ssl-redirect`: redirect HTTP to HTTPS even without TLS for the host.
    pub force_ssl_redirect: bool,
    /// `app-root`: requests for `/` are redirected (302) here.
    pub app_root: Option<String>,
    /// `proxy-body-size` (default 1m; 0: no limit): larger bodies get 413.
    pub max_body: Option<u64>,
    /// `proxy-connect-timeout` (default 5 s), `proxy-read-timeout` and `proxy-send-timeout`
    /// (default 60 s).
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub send_timeout: Duration,
    /// `whitelist-source-range` / `allowlist-source-range`: clients outside get 403. Empty: all.
    pub allow_source: Vec<ipnet::IpNet>,
    /// `affinity: cookie` with `session-cookie-name` (default INGRESSCOOKIE), `-path`, `-max-age`.
    pub affinity: Option<CookieAffinity>,
    /// `enable-cors` and its `cors-*` companions.
    pub cors: Option<Cors>,
    /// `load-balance`: round_robin (default) or ewma.
    pub balance: Balance,
    /// `proxy-next-upstream-tries` (default 3): attempts in all for an idempotent request
    /// whose connection to an endpoint failed. The annotation's `0` (nginx: no limit) is
    /// `u32::MAX`: bound it by the endpoints, each tried at most once, as nginx does.
    pub tries: u32,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            rewrite_target: None,
            ssl_redirect: true,
            force_ssl_redirect: false,
            app_root: None,
            max_body: Some(1 << 20),
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            allow_source: Vec::new(),
            affinity: None,
            cors: None,
            balance: Balance::RoundRobin,
            tries: 3,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    #[default]
    RoundRobin,
    Ewma,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieAffinity {
    pub name: String,
    pub path: Option<String>,
    pub max_age: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cors {
    /// `cors-allow-origin` (default `*`), each origin as written.
    pub allow_origin: Vec<String>,
    pub allow_methods: String,
    pub allow_headers: String,
    pub expose_headers: String,
    pub allow_credentials: bool,
    pub max_age: u64,
}

/// What a request matched: its route and, for regex routes, the captures for `rewrite-target`.
pub struct Matched<'a> {
    pub route: &'a Arc<Route>,
    pub host: &'a HostRoutes,
    pub captures: Option<regex::Captures<'a>>,
}

impl RouteTable {
    /// The routes of `host` (lowercase, no port): exact host, then the one-label wildcard,
    /// then the rules without a host.
    pub fn host(&self, host: &str) -> &HostRoutes {
        if let Some(h) = self.hosts.get(host) {
            return h;
        }
        if let Some((_, suffix)) = host.split_once('.')
            && let Some(h) = self.wildcards.get(suffix)
        {
            return h;
        }
        &self.any_host
    }

    /// The route for `host` and `path` (no query): Exact, then regex, then the longest
    /// prefix, among the routes of the host's rules only (a host that has rules of its own
    /// does not fall back to the rules without a host); no match: the default backend.
    pub fn route<'a>(&'a self, host: &str, path: &'a str) -> Option<Matched<'a>> {
        let h = self.host(host);
        if let Some(r) = h.exact.get(path) {
            return Some(Matched { route: r, host: h, captures: None });
        }
        for (re, r) in &h.regexes {
            if let Some(c) = re.captures(path) {
                return Some(Matched { route: r, host: h, captures: Some(c) });
            }
        }
        for (p, r) in &h.prefixes {
            if p.matches(path) {
                return Some(Matched { route: r, host: h, captures: None });
            }
        }
        self.default_backend.as_ref().map(|r| Matched { route: r, host: h, captures: None })
    }
}

/// The client's address as the proxy saw it, for `allow_source`.
pub fn allowed(settings: &Settings, client: IpAddr) -> bool {
    settings.allow_source.is_empty() || settings.allow_source.iter().any(|n| n.contains(&client))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_element_wise() {
        let p = PathPrefix::new("/foo/");
        assert!(p.matches("/foo") && p.matches("/foo/") && p.matches("/foo/bar"));
        assert!(!p.matches("/foobar") && !p.matches("/fo") && !p.matches("/"));
        let root = PathPrefix::new("/");
        assert!(root.matches("/") && root.matches("/anything"));
    }
}
