//! weft's embedded Kubernetes API server: the REST protocol kubectl and kube-rs speak, over
//! HTTPS with a bearer token, on loopback, backed by `weft-store`.
//!
//! Architecture invariant: every change to an object goes through [`rest::Api`], which admits it
//! (`weft-api`), allocates Service IPs and ports, and writes it to the store in one durable step;
//! nothing else writes to the store.

pub mod access_reviews;
pub mod alloc;
pub mod auth;
pub mod authn_reviews;
pub mod authz;
pub mod discovery;
pub mod events;
pub mod impersonation;
pub mod ingress_class_admission;
pub mod kubelet_api;
pub mod kubernetes_service;
pub mod openapi;
pub mod patch;
pub mod pod_logs;
pub mod priority_admission;
pub mod rbac_bootstrap;
pub mod rbac_writes;
pub mod rest;
pub mod reviews;
pub mod sa_admission;
pub mod selectors;
pub mod service_accounts;
pub mod status;
pub mod streams;
pub mod tls;
pub mod tokens;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use ipnet::IpNet;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use weft_api::kinds;
use weft_store::{Key, Store};

use crate::rest::{Allocators, Api, Query, Target};
use crate::status::ApiError;

pub struct Config {
    /// The cluster's name (used in the kubeconfig).
    pub name: String,
    pub state_dir: PathBuf,
    pub service_cidr: IpNet,
    pub node_port_range: RangeInclusive<i32>,
    /// Port on 127.0.0.1; 0 picks a free one the first time and keeps it.
    pub port: u16,
    /// Where pods reach this server (kube-apiserver's `--advertise-address`; in a lab the first
    /// node's address, served by [`kubernetes_service::forward`]): the `kubernetes` Service's
    /// endpoint and a name of the serving certificate. None: no endpoint.
    pub advertise_address: Option<std::net::IpAddr>,
}

pub struct Running {
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    pub api: Arc<Api>,
}

type Body = BoxBody<Bytes, Infallible>;

/// The largest request body taken (kube-apiserver's limit); larger ones get 413 unread.
pub const MAX_BODY_BYTES: usize = 3 << 20;
/// Open connections at most (watches included); more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 8192;
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(serde_json::to_vec(v).unwrap_or_default()))
        .unwrap()
}

pub(crate) fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

/// Opens the store, makes credentials, binds the port and serves until the process ends. Pods
/// have no logs (no containers run here): see [`start_with_pod_logs`].
pub async fn start(cfg: Config) -> Result<Running> {
    start_with_pod_logs(cfg, Arc::new(pod_logs::NoPodLogs)).await
}

/// [`start`], with pods' container logs read from `pod_logs` (in a lab, the lab's kubelets).
pub async fn start_with_pod_logs(cfg: Config, pod_logs: Arc<dyn pod_logs::PodLogs>) -> Result<Running> {
    start_with_pods(cfg, pod_logs, Arc::new(streams::NoPodStreams)).await
}

/// [`start_with_pod_logs`], with pods' exec, attach and port-forward served through
/// `pod_streams` (in a lab, the lab's pod shims and namespaces).
pub async fn start_with_pods(
    cfg: Config,
    pod_logs: Arc<dyn pod_logs::PodLogs>,
    pod_streams: Arc<dyn streams::PodStreams>,
) -> Result<Running> {
    std::fs::create_dir_all(&cfg.state_dir).with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    let store = Store::open(&cfg.state_dir.join("store.redb"), weft_store::DEFAULT_HISTORY)
        .with_context(|| format!("opening the store in {}", cfg.state_dir.display()))?;
    let ips = alloc::IpAllocator::new(cfg.service_cidr);
    let kubernetes_ip = ips.nth(1).context("the service CIDR has no room for the kubernetes Service")?;
    let creds = tls::load_or_create(&cfg.state_dir, &tls::serving_names(kubernetes_ip, cfg.advertise_address))?;
    let sa_keys = tokens::Keys::load_or_create(&cfg.state_dir)?;
    let port_file = cfg.state_dir.join("api.port");
    let port = match (cfg.port, std::fs::read_to_string(&port_file).ok().and_then(|p| p.trim().parse::<u16>().ok())) {
        (0, Some(p)) => p,
        (p, _) => p,
    };
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{port} (is another weft API server using it?)"))?;
    let addr = listener.local_addr()?;
    std::fs::write(&port_file, addr.port().to_string())?;
    let server_url = format!("https://{addr}");
    let kubeconfig = cfg.state_dir.join("kubeconfig");
    tls::write_private(&kubeconfig, tls::kubeconfig(&cfg.name, &server_url, &creds).as_bytes())?;

    let api = Arc::new(Api::new(
        store,
        Allocators { ips, ports: alloc::PortAllocator::new(cfg.node_port_range.clone()) },
        pod_logs,
    ));
    api.rebuild_allocations();
    let _ = api.accounts.set(service_accounts::Accounts {
        keys: sa_keys,
        ca_pem: creds.ca_pem.clone(),
        admin_token: creds.token.clone(),
    });
    bootstrap(&api, kubernetes_ip).await?;
    // The `kubernetes` Service's endpoints name where pods reach this server.
    tokio::spawn(kubernetes_service::reconcile(api.clone(), cfg.advertise_address));
    // Events expire and stay bounded in number, as kube-apiserver keeps them (`events`).
    tokio::spawn(api.clone().keep_events_bounded());

    let tls_cfg = tls::server_config(&creds)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_cfg);
    let authn = Arc::new(auth::Authenticator::new(creds.token.clone(), api.clone()));
    let a2 = api.clone();
    let server_addr = addr.to_string();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            // A connection slot first: past the cap, new connections wait in the kernel's backlog.
            let Ok(slot) = slots.clone().acquire_owned().await else { return };
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of descriptors or memory: back off instead of spinning on the error.
                    tracing::warn!(error = %e, "accepting an API connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let api = a2.clone();
            let authn = authn.clone();
            let server_addr = server_addr.clone();
            let pod_streams = pod_streams.clone();
            tokio::spawn(async move {
                let _slot = slot;
                // A client that never finishes its handshake does not keep its slot.
                let Ok(Ok(mut tls)) = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await else {
                    return;
                };
                // Nor one that finishes it and then says nothing (hyper's protocol detection
                // would wait for ever): its first byte within the header timeout, then served.
                let mut first = [0u8; 1];
                let Ok(Ok(1)) =
                    tokio::time::timeout(HEADER_TIMEOUT, tokio::io::AsyncReadExt::read(&mut tls, &mut first)).await
                else {
                    return;
                };
                let tls = Prefixed { first: Some(first[0]), inner: tls };
                let svc = hyper::service::service_fn(move |req| {
                    let api = api.clone();
                    let authn = authn.clone();
                    let server_addr = server_addr.clone();
                    let pod_streams = pod_streams.clone();
                    async move {
                        // exec, attach and port-forward take the connection over (an upgrade).
                        if let Some((ns, name, sub)) = streams::stream_target(req.uri().path())
                            && let Some(user) = authn.authenticate(req.headers())
                        {
                            let user = match impersonation::apply(&api, user, req.headers()) {
                                Ok(u) => u,
                                Err(e) => return Ok(error_response(&e)),
                            };
                            let attrs = authz::Attributes::of_request(req.method(), req.uri().path(), &query_of(&req));
                            if let Err(e) = authz::authorize(&api, &user, &attrs) {
                                return Ok(error_response(&e));
                            }
                            // A WebSocket opens a stream with GET, but it runs a process or opens
                            // a port as a POST does: it needs `create` too, as kube-apiserver
                            // asks since 1.31 (AuthorizePodWebsocketUpgradeCreatePermission), so
                            // a role that may only read pods' subresources cannot exec.
                            if attrs.verb == "get" {
                                let create = authz::Attributes { verb: "create".into(), ..attrs };
                                if let Err(e) = authz::authorize(&api, &user, &create) {
                                    return Ok(error_response(&e));
                                }
                            }
                            return Ok(streams::serve(&api, pod_streams, ns, name, sub, req).await);
                        }
                        Ok::<_, Infallible>(handle(api, &authn, &server_addr, req).await)
                    }
                });
                let mut b = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                // Without a timer hyper enforces no header timeout: a client that sends half a
                // request header (or nothing after one request) is dropped after this.
                b.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
                b.http2()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
                    .keep_alive_timeout(std::time::Duration::from_secs(20))
                    .max_concurrent_streams(250);
                let _ = b.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), svc).await;
            });
        }
    });
    Ok(Running { addr, kubeconfig, api })
}

/// A stream with one byte already read from it put back in front.
struct Prefixed<S> {
    first: Option<u8>,
    inner: S,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if let Some(b) = self.first.take() {
            buf.put_slice(&[b]);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Objects a cluster has from the start: the system namespaces and the `kubernetes` Service.
async fn bootstrap(api: &Api, kubernetes_ip: std::net::IpAddr) -> Result<()> {
    let ns_target =
        Target { kind: kinds::by_path("", "v1", "namespaces").unwrap(), namespace: None, name: None, sub: None };
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        if api.store.get(&Key::new("namespaces", "", ns)).is_none() {
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            api.create(&ns_target, &serde_json::to_vec(&body)?, Default::default())
                .await
                .map_err(|e| anyhow::anyhow!(e.message))?;
        }
    }
    if api.store.get(&Key::new("services", "default", "kubernetes")).is_none() {
        let body = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": kubernetes_ip.to_string(), "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}});
        let t = Target {
            kind: kinds::by_path("", "v1", "services").unwrap(),
            namespace: Some("default".into()),
            name: None,
            sub: None,
        };
        api.create(&t, &serde_json::to_vec(&body)?, Default::default())
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
    }
    rbac_bootstrap::ensure(api).await?;
    // Namespaces made before ServiceAccounts were served get theirs now.
    for ns in api.store.list("namespaces", None).0 {
        let name = ns.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
        if !name.is_empty() && ns.pointer("/metadata/deletionTimestamp").is_none() {
            service_accounts::namespace_defaults(api, &name).await;
        }
    }
    Ok(())
}

fn query_of<B>(req: &Request<B>) -> Query {
    req.uri()
        .query()
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect::<HashMap<_, _>>())
        .unwrap_or_default()
}

/// Parses a resource path below `/api/v1` or `/apis/{group}/{version}`.
fn target(group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let nf = || ApiError::new(404, "NotFound", "the server could not find the requested resource");
    let find = |plural: &str| kinds::by_path(group, version, plural).ok_or_else(nf);
    let s = |x: &&str| x.to_string();
    match rest {
        ["namespaces", ns, plural, tail @ ..]
            if kinds::by_path(group, version, plural).is_some_and(|k| k.namespaced) =>
        {
            let kind = find(plural)?;
            match tail {
                [] => Ok(Target { kind, namespace: Some(s(ns)), name: None, sub: None }),
                [name] => Ok(Target { kind, namespace: Some(s(ns)), name: Some(s(name)), sub: None }),
                [name, sub] if kind.has_subresource(sub) => {
                    Ok(Target { kind, namespace: Some(s(ns)), name: Some(s(name)), sub: Some(s(sub)) })
                }
                _ => Err(nf()),
            }
        }
        [plural, tail @ ..] => {
            let kind = find(plural)?;
            match tail {
                [] => Ok(Target { kind, namespace: None, name: None, sub: None }),
                [name] if !kind.namespaced => Ok(Target { kind, namespace: None, name: Some(s(name)), sub: None }),
                [name, sub] if !kind.namespaced && kind.has_subresource(sub) => {
                    Ok(Target { kind, namespace: None, name: Some(s(name)), sub: Some(s(sub)) })
                }
                _ => Err(nf()),
            }
        }
        _ => Err(nf()),
    }
}

async fn handle(
    api: Arc<Api>,
    authn: &auth::Authenticator,
    server_addr: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let open = matches!(path.as_str(), "/healthz" | "/livez" | "/readyz" | "/version");
    let query = query_of(&req);
    let method = req.method().clone();
    let user = if open {
        None
    } else {
        let user = match authn.authenticate_request(req.headers()) {
            Ok(u) => u,
            Err(e) => return error_response(&e),
        };
        if let Err(e) = authz::authorize(&api, &user, &authz::Attributes::of_request(&method, &path, &query)) {
            return error_response(&e);
        }
        Some(user)
    };
    let user_agent = req.headers().get(header::USER_AGENT).and_then(|h| h.to_str().ok()).unwrap_or("").to_string();
    let accept = req.headers().get(header::ACCEPT).and_then(|h| h.to_str().ok()).unwrap_or("").to_string();
    let ctype = req.headers().get(header::CONTENT_TYPE).and_then(|h| h.to_str().ok()).unwrap_or("").to_string();
    let header_str =
        |name| req.headers().get(name).and_then(|h: &http::HeaderValue| h.to_str().ok()).unwrap_or("").to_string();
    let (accept_encoding, if_none_match) = (header_str(header::ACCEPT_ENCODING), header_str(header::IF_NONE_MATCH));
    let too_large = || {
        error_response(&ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("the request body is larger than {MAX_BODY_BYTES} bytes: send a smaller object"),
        ))
    };
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|h| h.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return too_large();
    }
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Err(e) => {
            return error_response(&ApiError::bad_request(format!("reading the request body: {e}")));
        }
    };
    // Kubernetes protobuf bodies (kubectl's typed clients send them) become, here and only here,
    // the JSON the JSON path reads: every write then goes through the same admission.
    let (ctype, body) = match protobuf_body(&method, &ctype, body) {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    if (path == "/api" || path.starts_with("/api/") || path.starts_with("/apis")) && only_protobuf(&accept) {
        return error_response(&ApiError::new(
            406,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: application/json, application/yaml (this server answers JSON, not {})",
                weft_protobuf::MEDIA_TYPE
            ),
        ));
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let get = method == Method::GET;
    let simple = |v: Option<Value>| match v {
        Some(v) => json_response(200, &v),
        None => error_response(&ApiError::new(404, "NotFound", "the server could not find the requested resource")),
    };
    match segs.as_slice() {
        ["healthz" | "livez"] => Response::builder().status(200).body(full("ok")).unwrap(),
        // Ready only while the store can write.
        ["readyz"] => match api.store.failing() {
            None => Response::builder().status(200).body(full("ok")).unwrap(),
            Some(e) => Response::builder()
                .status(500)
                .body(full(format!("[-]etcd failed: the store cannot write: {e}\nreadyz check failed")))
                .unwrap(),
        },
        ["version"] => json_response(200, &discovery::version()),
        ["api"] if get => json_response(200, &discovery::api_versions(server_addr)),
        ["apis"] if get => json_response(200, &discovery::api_group_list()),
        ["api", v] if get => simple(discovery::resource_list("", v)),
        ["apis", g] if get => simple(discovery::api_group(g)),
        ["apis", g, v] if get => simple(discovery::resource_list(g, v)),
        ["openapi", rest @ ..] => openapi::serve(
            rest,
            &openapi::Ask {
                accept: &accept,
                accept_encoding: &accept_encoding,
                if_none_match: &if_none_match,
                hash: query.get("hash").map(String::as_str),
            },
        ),
        ["api", v, rest @ ..] | ["apis", _, v, rest @ ..] => {
            let group = if segs[0] == "api" { "" } else { segs[1] };
            // Every request past here is authenticated (only the open paths above are not).
            let request = auth::Request { user: user.unwrap_or_else(auth::User::anonymous), user_agent };
            let served = resource(&api, target(group, v, rest), &method, &query, &accept, &ctype, &body);
            request.scope(rest::with_manager_opts(&query, served)).await
        }
        _ => error_response(&ApiError::new(404, "NotFound", "the server could not find the requested resource")),
    }
}

/// A protobuf body (`k8s\0` + `runtime.Unknown`, see `weft_protobuf`) as the JSON body it
/// stands for; any other body as it came. Patches have no protobuf form: 415, as kube-apiserver.
fn protobuf_body(method: &Method, ctype: &str, body: Bytes) -> Result<(String, Bytes), ApiError> {
    if !weft_protobuf::is_protobuf(ctype) {
        return Ok((ctype.to_string(), body));
    }
    if method == Method::PATCH {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (not {})",
                weft_protobuf::MEDIA_TYPE
            ),
        ));
    }
    if body.is_empty() {
        return Ok(("application/json".to_string(), body));
    }
    let v = weft_protobuf::decode(&body)
        .map_err(|e| ApiError::bad_request(format!("the protobuf request body cannot be read: {e}")))?;
    let json = serde_json::to_vec(&v).map_err(|e| ApiError::bad_request(format!("the protobuf request body: {e}")))?;
    Ok(("application/json".to_string(), Bytes::from(json)))
}

/// Whether an `Accept` header lists Kubernetes protobuf and nothing else (this server answers
/// JSON; client-go's typed clients list JSON after protobuf).
fn only_protobuf(accept: &str) -> bool {
    let mut types = accept.split(',').map(|t| t.split(';').next().unwrap_or("").trim()).filter(|t| !t.is_empty());
    let mut any = false;
    let all = types.all(|t| {
        any = true;
        t.eq_ignore_ascii_case(weft_protobuf::MEDIA_TYPE)
    });
    any && all
}

/// Container logs read at once. Each holds a thread of tokio's blocking pool (512 threads, which
/// the kubelets' sandboxes and probes share in a lab's daemon) for as long as it lasts: a follow
/// until its container ends, any read while its client does not take what it was sent.
const MAX_LOG_STREAMS: usize = 128;
static LOG_STREAMS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_LOG_STREAMS);

/// A container's log as a streamed `text/plain` body: read on a blocking thread (files, and a
/// follow's waits), chunk by chunk, until the log ends or the client goes away.
pub(crate) fn log_response(mut log: Box<dyn pod_logs::LogStream>) -> Response<Body> {
    let Ok(permit) = LOG_STREAMS.try_acquire() else {
        return error_response(&ApiError::new(
            429,
            "TooManyRequests",
            format!(
                "{MAX_LOG_STREAMS} container logs are being read already: end some (kubectl logs -f) and try again"
            ),
        ));
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        // A follow waits at most this long between checks that its client is still there.
        while !tx.is_closed() {
            match log.next_chunk(std::time::Duration::from_millis(500)) {
                Ok(Some(c)) if c.is_empty() => continue,
                Ok(Some(c)) => {
                    if tx.blocking_send(Bytes::from(c)).is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "reading a container log");
                    return;
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(StreamBody::new(stream).boxed())
        .unwrap()
}

async fn resource(
    api: &Arc<Api>,
    t: Result<Target, ApiError>,
    method: &Method,
    q: &Query,
    accept: &str,
    ctype: &str,
    body: &[u8],
) -> Response<Body> {
    let t = match t {
        Ok(t) => t,
        Err(e) => return error_response(&e),
    };
    // Reviews are answered, not stored: POST to the collection is all they take.
    if t.kind.create_only {
        let result = match (method.clone(), t.name.is_some()) {
            (Method::POST, false) => match rest::WriteOpts::from_query(q) {
                Ok(o) => reviews::create(api, &t, body, o).await,
                Err(e) => Err(e),
            },
            (m, _) => Err(ApiError::method_not_allowed(format!("the server does not allow {m} on {}", t.kind.plural))),
        };
        return match result {
            Ok(v) => json_response(201, &v),
            Err(e) => error_response(&e),
        };
    }
    // The same reading as authorization's: a request authorized as a watch is served as one.
    let watch = authz::is_watch(q);
    let writes = matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
    let o = match writes.then(|| rest::WriteOpts::from_query(q)).transpose() {
        Ok(o) => o.unwrap_or_default(),
        Err(e) => return error_response(&e),
    };
    let result = match (method.clone(), t.name.is_some()) {
        (Method::GET, false) if watch => match api.watch(&t, q, accept) {
            Ok(rx) => {
                let stream = futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
                });
                return Response::builder()
                    .status(200)
                    .header(header::CONTENT_TYPE, "application/json")
                    .header(header::TRANSFER_ENCODING.as_str(), "chunked")
                    .body(StreamBody::new(stream).boxed())
                    .map(|mut r| {
                        // HTTP/2 forbids transfer-encoding; hyper adds framing itself.
                        r.headers_mut().remove(header::TRANSFER_ENCODING);
                        r
                    })
                    .unwrap();
            }
            Err(e) => Err(e),
        },
        (Method::GET, false) => api.list(&t, accept, q).map(|v| (200, v)),
        (Method::GET, true) if t.sub.as_deref() == Some("log") => {
            return match api.pod_log(&t, q) {
                Ok(log) => log_response(log),
                Err(e) => error_response(&e),
            };
        }
        (Method::GET, true) => api.get(&t, accept, q).map(|v| (200, v)),
        // events.k8s.io/v1 asks more of a new Event than core/v1 does (`events`).
        (Method::POST, false) if t.kind.group == "events.k8s.io" => {
            api.create_event_v1(&t, body, o).await.map(|v| (201, v))
        }
        (Method::POST, false) => api.create(&t, body, o).await.map(|v| (201, v)),
        (Method::POST, true) if t.sub.as_deref() == Some("token") => {
            service_accounts::create_token(api, &t, body, o).await.map(|v| (201, v))
        }
        (Method::PUT, true) => api.update(&t, body, o).await.map(|v| (200, v)),
        (Method::PATCH, true) if rest::is_apply(ctype) => api.apply(&t, body, o).await,
        (Method::PATCH, true) => api.patch(&t, ctype, body, o).await.map(|v| (200, v)),
        (Method::DELETE, true) => api.delete(&t, body, o).await.map(|v| (200, v)),
        (Method::DELETE, false) => api.delete_collection(&t, q, body, o).await.map(|v| (200, v)),
        (m, _) => Err(ApiError::method_not_allowed(format!("the server does not allow {m} on {}", t.kind.plural))),
    };
    match result {
        Ok((code, v)) => json_response(code, &v),
        Err(e) => error_response(&e),
    }
}
