//! The kubelet's API as kube-apiserver calls it when a user runs `kubectl exec`, `attach`,
//! `port-forward` or `logs` against a real control plane: HTTPS on port 10250 of the node's
//! address, paths `/exec/{ns}/{pod}/{container}`, `/attach/{ns}/{pod}/{container}`,
//! `/portForward/{ns}/{pod}` and `/containerLogs/{ns}/{pod}/{container}`
//! (`pkg/registry/core/pod/strategy.go` in Kubernetes). Served from the same [`PodStreams`] and
//! [`PodLogs`] the embedded API serves itself, with the same protocol code ([`crate::streams`]):
//! kube-apiserver speaks SPDY/3.1 to a kubelet that does not declare `ExtendWebSocketsToKubelet`,
//! translating kubectl's WebSocket.
//!
//! Only a client with a certificate from the cluster's CA is served (kube-apiserver's
//! `--kubelet-client-certificate`): pods reach the node's address, and must not exec into
//! other pods through it. Each request is then authorized as the kubelet's Webhook mode does
//! it (kubeadm's setting): the certificate's user (CN) and groups (O) may do the request's verb
//! (from its method) on the node's `nodes/proxy` subresource, asked of the API server by
//! [`KubeletApi::authorize`] (a SubjectAccessReview); answers are kept 5 minutes when allowed
//! and 30 seconds when not, the kubelet's defaults.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::pod_logs::{self, PodLogs, PodRef};
use crate::status::ApiError;
use crate::streams::{self, PodStreams, Session, Sub};

/// The kubelet's port.
pub const PORT: u16 = 10250;

/// At most this many connections at once; past it they wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The uid of pod (namespace, name) if it runs on this node.
pub type UidOf = Box<dyn Fn(&str, &str) -> Option<String> + Send + Sync>;

/// What is asked of the authorizer: may `user` (in `groups`) do `verb` on this node's
/// `nodes/{subresource}`?
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Attributes {
    pub user: String,
    pub groups: Vec<String>,
    pub verb: &'static str,
    pub subresource: &'static str,
}

/// Answers [`Attributes`]: Ok(allowed), or Err when no answer could be had.
pub type Authorize = Arc<dyn Fn(Attributes) -> futures::future::BoxFuture<'static, Result<bool, String>> + Send + Sync>;

/// What the kubelet serves from.
pub struct KubeletApi {
    pub logs: Arc<dyn PodLogs>,
    pub streams: Arc<dyn PodStreams>,
    pub uid_of: UidOf,
    /// The authorizer (None: every client of the CA may do everything, as `AlwaysAllow`).
    pub authorize: Option<Authorize>,
}

/// How long an authorizer's answer is kept: the kubelet's `authorization.webhook` defaults.
const ALLOWED_TTL: Duration = Duration::from_secs(300);
const DENIED_TTL: Duration = Duration::from_secs(30);
/// At most this many answers are kept (a full cache starts again).
const MAX_CACHED: usize = 1024;

type Cache = std::sync::Mutex<std::collections::HashMap<Attributes, (bool, std::time::Instant)>>;

/// The user and groups a client certificate names, as kube-apiserver's x509 authenticator reads
/// them: the subject's CommonName and Organizations.
pub fn identity(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let user = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let groups = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
    Some((user, groups))
}

/// The verb and subresource a request is authorized as (the kubelet's `GetRequestAttributes`:
/// every path served here is `proxy`).
pub fn request_attributes(method: &Method) -> (&'static str, &'static str) {
    let verb = match *method {
        Method::POST => "create",
        Method::GET => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "",
    };
    (verb, "proxy")
}

/// Whether the request may go on: None, or the answer that ends it (403 as the kubelet words
/// it, 500 when the authorizer could not answer).
async fn authorized(
    api: &KubeletApi,
    cache: &Cache,
    who: &Option<(String, Vec<String>)>,
    method: &Method,
) -> Option<Response<crate::Body>> {
    let authorize = api.authorize.as_ref()?;
    let (verb, subresource) = request_attributes(method);
    let (user, groups) = who.clone().unwrap_or_default();
    let attrs = Attributes { user, groups, verb, subresource };
    let cached = cache
        .lock()
        .ok()
        .and_then(|c| c.get(&attrs).filter(|(_, until)| *until > std::time::Instant::now()).map(|(a, _)| *a));
    let allowed = match cached {
        Some(a) => a,
        None => match authorize(attrs.clone()).await {
            Ok(a) => {
                if let Ok(mut c) = cache.lock() {
                    if c.len() >= MAX_CACHED {
                        c.clear();
                    }
                    let ttl = if a { ALLOWED_TTL } else { DENIED_TTL };
                    c.insert(attrs.clone(), (a, std::time::Instant::now() + ttl));
                }
                a
            }
            Err(e) => {
                tracing::warn!(user = %attrs.user, error = %e, "kubelet API authorization");
                return Some(plain_error(&ApiError::internal(format!(
                    "Authorization error (user={}, verb={verb}, resource=nodes, subresource={subresource})",
                    attrs.user
                ))));
            }
        },
    };
    (!allowed).then(|| {
        plain_error(&ApiError::new(
            403,
            "Forbidden",
            format!("Forbidden (user={}, verb={verb}, resource=nodes, subresource(s)=[{subresource}])\n", attrs.user),
        ))
    })
}

/// TLS for the kubelet: its serving certificate, and client certificates required and checked
/// against `ca_pem`. HTTP/1.1 only: every stream is an HTTP/1.1 upgrade.
pub fn tls_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c?).context("the cluster CA")?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("a client verifier for the cluster CA")?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())?.context("no private key for the kubelet")?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, tls: Arc<rustls::ServerConfig>, api: Arc<KubeletApi>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let cache: Arc<Cache> = Arc::default();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a kubelet API connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, api, cache) = (acceptor.clone(), api.clone(), cache.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await else { return };
            let who = Arc::new(tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| identity(c)));
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (api, cache, who) = (api.clone(), cache.clone(), who.clone());
                async move {
                    if let Some(refused) = authorized(&api, &cache, &who, req.method()).await {
                        return Ok::<_, Infallible>(refused);
                    }
                    Ok(route(&api, req))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .with_upgrades()
                .await;
        });
    }
}

/// What a kubelet path asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    Stream { sub: Sub, ns: String, pod: String, container: String },
    Logs { ns: String, pod: String, container: String },
    Healthz,
}

/// The target of a kubelet path; None for any other path.
pub fn target(path: &str) -> Option<Target> {
    let parts: Vec<String> = path
        .split('/')
        .skip(1)
        .map(|p| percent_encoding::percent_decode_str(p).decode_utf8_lossy().into_owned())
        .collect();
    let strs: Vec<&str> = parts.iter().map(String::as_str).collect();
    let t = match strs.as_slice() {
        [verb @ ("exec" | "attach"), ns, pod, c] => Target::Stream {
            sub: if *verb == "exec" { Sub::Exec } else { Sub::Attach },
            ns: ns.to_string(),
            pod: pod.to_string(),
            container: c.to_string(),
        },
        ["portForward", ns, pod] => {
            Target::Stream { sub: Sub::PortForward, ns: ns.to_string(), pod: pod.to_string(), container: String::new() }
        }
        ["containerLogs", ns, pod, c] => {
            Target::Logs { ns: ns.to_string(), pod: pod.to_string(), container: c.to_string() }
        }
        ["healthz"] => Target::Healthz,
        _ => return None,
    };
    let named = |s: &str| !s.is_empty();
    match &t {
        Target::Stream { ns, pod, .. } | Target::Logs { ns, pod, .. } if !named(ns) || !named(pod) => None,
        _ => Some(t),
    }
}

/// kube-apiserver's exec and attach options as the kubelet takes them (`input=1`, `output=1`,
/// `error=1`, `tty=1`, a `command=` per argument), in the names the API's own checks read.
pub fn kubelet_pairs(pairs: Vec<(String, String)>) -> Vec<(String, String)> {
    pairs
        .into_iter()
        .map(|(k, v)| {
            let k = match k.as_str() {
                "input" => "stdin".to_string(),
                "output" => "stdout".to_string(),
                "error" => "stderr".to_string(),
                _ => k,
            };
            (k, v)
        })
        .collect()
}

fn route(api: &KubeletApi, req: Request<Incoming>) -> Response<crate::Body> {
    let Some(t) = target(req.uri().path()) else {
        return plain_error(&ApiError::new(404, "NotFound", format!("{} is not served here", req.uri().path())));
    };
    let pairs = streams::query_pairs(req.uri().query());
    let uid = |ns: &str, pod: &str| {
        (api.uid_of)(ns, pod)
            .ok_or_else(|| ApiError::new(404, "NotFound", format!("pod {ns}/{pod} does not run on this node")))
    };
    let result = match t {
        Target::Healthz => return Response::new(crate::full("ok")),
        Target::Logs { ns, pod, container } => {
            if req.method() != Method::GET {
                return plain_error(&ApiError::method_not_allowed("containerLogs is read with GET"));
            }
            let q: crate::rest::Query = pairs.into_iter().collect();
            uid(&ns, &pod).and_then(|uid| {
                let opts = crate::rest::log_options(&q, &pod, jiff::Timestamp::now())?;
                let at = PodRef { namespace: &ns, name: &pod, uid: &uid };
                let log = api.logs.open(at, &container, &opts).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => ApiError::new(404, "NotFound", e.to_string()),
                    std::io::ErrorKind::InvalidInput => ApiError::bad_request(e.to_string()),
                    _ => ApiError::internal(format!("reading the log of {ns}/{pod}/{container}: {e}")),
                })?;
                Ok(crate::log_response(pod_logs::limit(log, opts.limit_bytes)))
            })
        }
        Target::Stream { sub, ns, pod, container } => {
            if req.method() != Method::GET && req.method() != Method::POST {
                return plain_error(&ApiError::method_not_allowed("streams are opened with POST or GET"));
            }
            let pairs = kubelet_pairs(pairs);
            let session = uid(&ns, &pod).and_then(|uid| {
                let (opts, ports) = match sub {
                    Sub::PortForward => (Default::default(), streams::forward_ports(&pairs)?),
                    _ => (streams::stream_options(sub, &pairs)?, vec![]),
                };
                Ok(Session { ns: ns.clone(), name: pod.clone(), uid, sub, container, opts, ports })
            });
            session.map(|s| streams::upgrade_session(s, api.streams.clone(), req))
        }
    };
    result.unwrap_or_else(|e| plain_error(&e))
}

/// An error as the kubelet writes one: its message as plain text (kube-apiserver passes it on
/// as the message of its own Status).
fn plain_error(e: &ApiError) -> Response<crate::Body> {
    Response::builder()
        .status(e.code)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(crate::full(e.message.clone()))
        .unwrap_or_else(|_| Response::new(crate::full(e.message.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_the_ones_kube_apiserver_sends() {
        assert_eq!(
            target("/exec/default/web/c1"),
            Some(Target::Stream { sub: Sub::Exec, ns: "default".into(), pod: "web".into(), container: "c1".into() })
        );
        assert!(matches!(target("/attach/a/b/c"), Some(Target::Stream { sub: Sub::Attach, .. })));
        assert!(matches!(target("/portForward/a/b"), Some(Target::Stream { sub: Sub::PortForward, .. })));
        assert!(matches!(target("/containerLogs/a/b/c"), Some(Target::Logs { .. })));
        assert_eq!(target("/healthz"), Some(Target::Healthz));
        // Anything else, short, long, empty names, the API's own paths: not served.
        for p in ["/", "/exec/a/b", "/exec/a/b/c/d", "/exec//b/c", "/portforward/a/b", "/api/v1/pods", "/run/a/b/c"] {
            assert_eq!(target(p), None, "{p}");
        }
    }

    #[test]
    fn kubelet_flags_read_as_the_apis_options() {
        let pairs = streams::query_pairs(Some("command=sh&command=-c&command=echo%20hi&error=1&input=1&output=1"));
        let o = streams::stream_options(Sub::Exec, &kubelet_pairs(pairs)).unwrap();
        assert_eq!(o.command, ["sh", "-c", "echo hi"]);
        assert!(o.stdin && o.stdout && o.stderr && !o.tty);
        // With a terminal, kubectl asks for no stderr (one stream): `kubectl exec -it`.
        let tty = kubelet_pairs(streams::query_pairs(Some("command=sh&input=1&output=1&tty=1")));
        let o = streams::stream_options(Sub::Exec, &tty).unwrap();
        assert!(o.stdin && o.stdout && !o.stderr && o.tty);
        // No stream asked for is refused, as the API refuses it.
        let none = kubelet_pairs(streams::query_pairs(Some("command=ls")));
        assert!(streams::stream_options(Sub::Exec, &none).is_err());
    }
}
