//! The streaming subresources of a pod: `pods/{name}/exec`, `pods/{name}/attach` and
//! `pods/{name}/portforward`, as kube-apiserver serves them to kubectl and kube-rs.
//!
//! The API does what kube-apiserver does before it hands a stream to a kubelet: finds the pod,
//! checks the container, the options and that the pod runs, and answers with kube-apiserver's
//! errors. The process or socket itself comes from whatever runs the pod, through
//! [`PodStreams`] (in a lab, `weft_lab::streams`), as a container's log comes through
//! `PodLogs`.
//!
//! Protocols: exec and attach over WebSocket with the channel protocols `v5.channel.k8s.io`
//! (kubectl 1.30 and newer, kube-rs) and `v4.channel.k8s.io` ([`channels`]), and over SPDY/3.1
//! with `v4.channel.k8s.io` (older kubectl, and kubectl's fallback: `spdy_exec`); port-forward over
//! WebSocket `v4.channel.k8s.io` (kube-rs's `Portforwarder`, kubelet's websocket port-forward)
//! and over SPDY/3.1, which kubectl speaks for port-forward, either tunneled in a WebSocket
//! (`SPDY/3.1+portforward.k8s.io`, kubectl 1.31 and newer) or as a plain HTTP upgrade (older
//! kubectl, and kubectl's fallback) ([`portforward`], [`spdy`]).

pub mod channels;
pub mod portforward;
pub mod spdy;
mod spdy_exec;
mod upgrade;

use std::io;
use std::pin::Pin;
use std::sync::Arc;

use futures::future::BoxFuture;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use weft_store::Key;

use crate::pod_logs::PodRef;
use crate::rest::Api;
use crate::status::ApiError;

/// How long a session with a terminal waits for the client's first resize before its process
/// starts. kubectl sends it at once, so the wait ends at once; it is long because on a loaded
/// machine 500 ms was seen to pass first, and the process then started at 0x0. Only a client
/// that sends no size (kube-rs may not) waits it out.
pub const FIRST_RESIZE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Output of a process: its stdout, stderr or a pty's master.
pub type BoxRead = Pin<Box<dyn AsyncRead + Send>>;
/// Input of a process: its stdin.
pub type BoxWrite = Pin<Box<dyn AsyncWrite + Send>>;

/// Sets a terminal's size: (columns, rows).
pub type Resize = Box<dyn Fn(u16, u16) -> io::Result<()> + Send + Sync>;

/// A byte stream both ways (a TCP connection into a pod).
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// What `kubectl exec` and `kubectl attach` ask for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// The command (exec only; empty for attach).
    pub command: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// The terminal's size (columns, rows) to start with: the client's first resize message,
    /// so the process sees its size from the start.
    pub size: Option<(u16, u16)>,
}

/// A process in a pod (an exec'd command, or an attached container), as the client sees it.
pub struct Process {
    /// Where the client's stdin goes (with a tty, the terminal).
    pub stdin: Option<BoxWrite>,
    /// Its output (with a tty, the terminal's output: stdout and stderr together).
    pub stdout: Option<BoxRead>,
    pub stderr: Option<BoxRead>,
    /// Sets the terminal's size (columns, rows); with a tty only.
    pub resize: Option<Resize>,
    /// Resolves to the exit code once the process has ended (128+N for signal N). Dropped before
    /// that (the client went away), it stops the process.
    pub exit: BoxFuture<'static, io::Result<i32>>,
}

/// Whatever runs the pods: starts processes in their containers and opens their ports.
/// `NotFound` errors mean the pod or container runs nowhere here.
pub trait PodStreams: Send + Sync {
    /// Runs `opts.command` in container `container` of the pod, in the container's namespaces,
    /// environment and capabilities.
    fn exec(&self, pod: PodRef<'_>, container: &str, opts: &StreamOptions) -> BoxFuture<'static, io::Result<Process>>;
    /// The running container's own stdio: its output from now on, its stdin if it has one.
    fn attach(&self, pod: PodRef<'_>, container: &str, opts: &StreamOptions)
    -> BoxFuture<'static, io::Result<Process>>;
    /// A TCP connection to 127.0.0.1:`port` inside the pod's network namespace.
    fn port_forward(&self, pod: PodRef<'_>, port: u16) -> BoxFuture<'static, io::Result<Box<dyn Duplex>>>;
}

/// For an API server that runs no pods: every stream is refused.
pub struct NoPodStreams;

fn runs_nothing(pod: PodRef<'_>) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("pod {}/{} runs nowhere here: this API server runs no containers", pod.namespace, pod.name),
    )
}

impl PodStreams for NoPodStreams {
    fn exec(&self, pod: PodRef<'_>, _: &str, _: &StreamOptions) -> BoxFuture<'static, io::Result<Process>> {
        let e = runs_nothing(pod);
        Box::pin(async move { Err(e) })
    }
    fn attach(&self, pod: PodRef<'_>, _: &str, _: &StreamOptions) -> BoxFuture<'static, io::Result<Process>> {
        let e = runs_nothing(pod);
        Box::pin(async move { Err(e) })
    }
    fn port_forward(&self, pod: PodRef<'_>, _: u16) -> BoxFuture<'static, io::Result<Box<dyn Duplex>>> {
        let e = runs_nothing(pod);
        Box::pin(async move { Err(e) })
    }
}

/// Which streaming subresource a path names, if any: `/api/v1/namespaces/NS/pods/NAME/SUB`.
pub fn stream_target(path: &str) -> Option<(String, String, Sub)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name, sub] if !ns.is_empty() && !name.is_empty() => {
            let sub = match *sub {
                "exec" => Sub::Exec,
                "attach" => Sub::Attach,
                "portforward" => Sub::PortForward,
                _ => return None,
            };
            Some((ns.to_string(), name.to_string(), sub))
        }
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sub {
    Exec,
    Attach,
    PortForward,
}

impl Sub {
    fn name(self) -> &'static str {
        match self {
            Sub::Exec => "exec",
            Sub::Attach => "attach",
            Sub::PortForward => "portforward",
        }
    }
}

/// A query string's pairs in order, repeated keys kept (`command` is repeated).
pub(crate) fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    q.map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

fn flag(pairs: &[(String, String)], key: &str) -> Result<bool, ApiError> {
    match pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str()) {
        None => Ok(false),
        Some("true" | "1" | "True") => Ok(true),
        Some("false" | "0" | "False" | "") => Ok(false),
        Some(v) => Err(ApiError::bad_request(format!("{key}={v:?} is not a boolean: send {key}=true or {key}=false"))),
    }
}

/// The stream options of an exec or attach request, checked as kube-apiserver checks them.
pub fn stream_options(sub: Sub, pairs: &[(String, String)]) -> Result<StreamOptions, ApiError> {
    let opts = StreamOptions {
        command: pairs.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.clone()).collect(),
        tty: flag(pairs, "tty")?,
        stdin: flag(pairs, "stdin")?,
        stdout: flag(pairs, "stdout")?,
        stderr: flag(pairs, "stderr")?,
        size: None,
    };
    if sub == Sub::Exec && opts.command.is_empty() {
        return Err(ApiError::bad_request("you must specify at least 1 command: add command=... to the query"));
    }
    if !(opts.stdin || opts.stdout || opts.stderr) {
        return Err(ApiError::bad_request("you must specify at least 1 of stdin, stdout, stderr"));
    }
    if opts.tty && opts.stderr {
        // kubectl never asks for both: a terminal has one output.
        return Err(ApiError::bad_request("stdout and stderr are one stream with a tty: ask for stderr=false"));
    }
    Ok(opts)
}

/// The ports of a port-forward request: `ports=80,8080` (kube-rs, kubelet's websocket) or
/// repeated `port=` / `ports=`. None is fine for SPDY, whose streams name their port.
pub fn forward_ports(pairs: &[(String, String)]) -> Result<Vec<u16>, ApiError> {
    let mut ports = vec![];
    for (_, v) in pairs.iter().filter(|(k, _)| k == "ports" || k == "port") {
        for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => ports.push(n),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "invalid port {p:?}: a port is a number from 1 to 65535 (ports=80,8080)"
                    )));
                }
            }
        }
    }
    if ports.len() > 64 {
        return Err(ApiError::bad_request("at most 64 ports in one port-forward"));
    }
    Ok(ports)
}

fn containers(pod: &Value, field: &str) -> Vec<String> {
    pod.pointer(&format!("/spec/{field}"))
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(|n| n.as_str()).map(String::from))
        .collect()
}

/// The container a request means, as kube-apiserver picks it.
pub fn pick_container(pod: &Value, asked: Option<&str>) -> Result<String, ApiError> {
    let name = pod.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("");
    let main = containers(pod, "containers");
    let init = containers(pod, "initContainers");
    match asked.filter(|c| !c.is_empty()) {
        Some(c) if main.iter().chain(&init).any(|m| m == c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}: choose one of [{}] (kubectl ... -c NAME)",
            main.join(" ")
        ))),
        None if main.len() == 1 => Ok(main[0].clone()),
        None if main.is_empty() => {
            Err(ApiError::bad_request(format!("a container name must be specified for pod {name}")))
        }
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            main.join(" ")
        ))),
    }
}

/// The pod must be on a node and running (and, for exec and attach, the container too).
pub fn check_running(pod: &Value, container: Option<&str>) -> Result<(), ApiError> {
    let name = pod.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("");
    if pod.pointer("/spec/nodeName").and_then(|n| n.as_str()).is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned: wait until it is scheduled (kubectl get pod {name} -o wide)"
        )));
    }
    let phase = pod.pointer("/status/phase").and_then(|p| p.as_str()).unwrap_or("Pending");
    if phase == "Succeeded" || phase == "Failed" {
        return Err(ApiError::bad_request(format!(
            "cannot exec into or forward to a container in a completed pod; current phase is {phase}"
        )));
    }
    let Some(c) = container else {
        if phase != "Running" {
            return Err(ApiError::bad_request(format!(
                "pod {name} is not running (phase {phase}): wait until it runs (kubectl get pod {name})"
            )));
        }
        return Ok(());
    };
    let statuses = ["containerStatuses", "initContainerStatuses"]
        .iter()
        .filter_map(|f| pod.pointer(&format!("/status/{f}")).and_then(|s| s.as_array()))
        .flatten();
    let state = statuses.into_iter().find(|s| s.get("name").and_then(|n| n.as_str()) == Some(c));
    let running = state.and_then(|s| s.pointer("/state/running")).is_some();
    if !running {
        let why = state
            .and_then(|s| s.pointer("/state/waiting/reason").or(s.pointer("/state/terminated/reason")))
            .and_then(|r| r.as_str())
            .unwrap_or("not started");
        return Err(ApiError::bad_request(format!(
            "container {c} of pod {name} is not running ({why}): wait until it runs (kubectl get pod {name})"
        )));
    }
    Ok(())
}

/// Serves one request to a streaming subresource: checks, then the upgrade.
pub async fn serve(
    api: &Arc<Api>,
    streams: Arc<dyn PodStreams>,
    ns: String,
    name: String,
    sub: Sub,
    req: Request<Incoming>,
) -> Response<crate::Body> {
    match prepare(api, &ns, &name, sub, &req) {
        Ok(session) => upgrade::upgrade(session, streams, req),
        Err(e) => crate::error_response(&e),
    }
}

/// Takes a checked request's connection over (the kubelet's API, which checks its own).
pub(crate) fn upgrade_session(
    session: Session,
    streams: Arc<dyn PodStreams>,
    req: Request<Incoming>,
) -> Response<crate::Body> {
    upgrade::upgrade(session, streams, req)
}

/// A checked request, ready to be upgraded.
pub(crate) struct Session {
    pub ns: String,
    pub name: String,
    pub uid: String,
    pub sub: Sub,
    pub container: String,
    pub opts: StreamOptions,
    pub ports: Vec<u16>,
}

impl Session {
    pub fn pod(&self) -> PodRef<'_> {
        PodRef { namespace: &self.ns, name: &self.name, uid: &self.uid }
    }
}

fn prepare(api: &Api, ns: &str, name: &str, sub: Sub, req: &Request<Incoming>) -> Result<Session, ApiError> {
    if req.method() != Method::GET && req.method() != Method::POST {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow {} on pods/{}: use GET (WebSocket) or POST (SPDY)",
            req.method(),
            sub.name()
        )));
    }
    let pairs = query_pairs(req.uri().query());
    let pod = api.store.get(&Key::new("pods", ns, name)).ok_or_else(|| ApiError::not_found("pods", name))?;
    let uid = pod.pointer("/metadata/uid").and_then(|u| u.as_str()).unwrap_or("").to_string();
    let (container, opts, ports) = match sub {
        Sub::PortForward => {
            let ports = forward_ports(&pairs)?;
            check_running(&pod, None)?;
            (String::new(), StreamOptions::default(), ports)
        }
        Sub::Exec | Sub::Attach => {
            let asked = pairs.iter().rev().find(|(k, _)| k == "container").map(|(_, v)| v.as_str());
            let c = pick_container(&pod, asked)?;
            let opts = stream_options(sub, &pairs)?;
            check_running(&pod, Some(&c))?;
            (c, opts, vec![])
        }
    };
    Ok(Session { ns: ns.into(), name: name.into(), uid, sub, container, opts, ports })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        query_pairs(Some(q))
    }

    #[test]
    fn paths_name_the_streaming_subresources() {
        assert_eq!(
            stream_target("/api/v1/namespaces/default/pods/web/exec"),
            Some(("default".into(), "web".into(), Sub::Exec))
        );
        assert_eq!(stream_target("/api/v1/namespaces/a/pods/b/portforward").unwrap().2, Sub::PortForward);
        assert_eq!(stream_target("/api/v1/namespaces/a/pods/b/attach").unwrap().2, Sub::Attach);
        assert_eq!(stream_target("/api/v1/namespaces/a/pods/b/log"), None);
        assert_eq!(stream_target("/api/v1/namespaces/a/services/b/exec"), None);
    }

    #[test]
    fn exec_options_keep_repeated_commands_and_are_checked() {
        let o = stream_options(Sub::Exec, &pairs("command=sh&command=-c&command=echo%20hi&stdout=true&stderr=true"))
            .unwrap();
        assert_eq!(o.command, ["sh", "-c", "echo hi"]);
        assert!(o.stdout && o.stderr && !o.stdin && !o.tty);
        assert!(stream_options(Sub::Exec, &pairs("stdout=true")).unwrap_err().message.contains("command"));
        assert!(stream_options(Sub::Exec, &pairs("command=ls")).unwrap_err().message.contains("stdin, stdout"));
        assert!(stream_options(Sub::Exec, &pairs("command=ls&stdout=maybe")).unwrap_err().message.contains("boolean"));
        assert!(stream_options(Sub::Attach, &pairs("stdout=true")).is_ok());
    }

    #[test]
    fn ports_come_comma_separated_or_repeated() {
        assert_eq!(forward_ports(&pairs("ports=80,8080")).unwrap(), [80, 8080]);
        assert_eq!(forward_ports(&pairs("port=80&port=81")).unwrap(), [80, 81]);
        assert_eq!(forward_ports(&pairs("")).unwrap(), Vec::<u16>::new());
        assert!(forward_ports(&pairs("ports=0")).is_err());
        assert!(forward_ports(&pairs("ports=http")).unwrap_err().message.contains("1 to 65535"));
    }

    #[test]
    fn containers_are_picked_and_checked_as_kube_apiserver_does() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "a", "state": {"running": {}}}, {"name": "b", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        assert_eq!(pick_container(&pod, Some("b")).unwrap(), "b");
        assert!(pick_container(&pod, None).unwrap_err().message.contains("choose one of: [a b]"));
        assert_eq!(
            pick_container(&pod, Some("x")).unwrap_err().message.split(':').next().unwrap(),
            "container x is not valid for pod p"
        );
        assert!(check_running(&pod, Some("a")).is_ok());
        assert!(check_running(&pod, Some("b")).unwrap_err().message.contains("CrashLoopBackOff"));
        let unscheduled = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}});
        assert!(check_running(&unscheduled, None).unwrap_err().message.contains("does not have a host assigned"));
        let done = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n"}, "status": {"phase": "Succeeded"}});
        assert!(check_running(&done, None).unwrap_err().message.contains("completed pod"));
    }
}
