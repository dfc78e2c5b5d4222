//! A kubelet per lab node: for each Pod bound to the node it makes the pod's network namespace,
//! runs CNI ADD exactly as a container runtime does (exec the plugin, environment + stdin), starts
//! the pod's shim, runs startup, liveness and readiness probes (a failed liveness or startup
//! probe has the shim restart the container) and reports the pod's status, init containers
//! included; it publishes the kubelet's Events (`pod_events`). A pod being deleted
//! (`deletionTimestamp`) is stopped gracefully by its shim (preStop hooks, SIGTERM, SIGKILL at the
//! end of the grace period; `lifecycle::Termination` decides the steps), then its sandbox goes
//! (shim, CNI DEL, namespace) and the kubelet deletes the pod for good (grace 0, bound to its
//! uid); a pod whose object is gone at once (a forced delete) is just killed and cleaned up. Its
//! state (one `sandbox.json` per pod) lives in the lab's state directory, so a restarted daemon
//! adopts running pods instead of duplicating them. Like kubelet's PLEG it relists once a second
//! besides reacting to watch events.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use weft_cni::runtime::{ConfList, Invocation};

use crate::lifecycle::{self, Note, ProbeKind, ProbeState, Seen, TermStep, Termination};
use crate::pod_events::{self, PodEvents};
use crate::shim::{self, ContainerSpec, ContainerState, Hook, Security, ShimSpec};
use crate::topology::NodeNet;
use crate::{LabCtx, grpc_probe, netns};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sandbox {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub netns: String,
    pub ips: Vec<String>,
    pub shim_pid: u32,
    pub shim_start: u64,
    pub cni_result: Value,
    /// `spec.hostNetwork`: the pod runs in its node's namespace (`netns` is the node's), with
    /// the node's address and no CNI attachment; the namespace is never the pod's to delete.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
}

pub fn pods_dir(state: &Path) -> PathBuf {
    state.join("pods")
}

pub fn pod_dir(state: &Path, uid: &str) -> PathBuf {
    pods_dir(state).join(uid)
}

pub fn load_sandbox(state: &Path, uid: &str) -> Option<Sandbox> {
    serde_json::from_slice(&fs::read(pod_dir(state, uid).join("sandbox.json")).ok()?).ok()
}

/// Writes a pod's sandbox record whole (a temporary file renamed over the old one), so a daemon
/// killed mid-write leaves the old record or the new one, never half of one.
pub fn save_sandbox(state: &Path, sb: &Sandbox) -> Result<()> {
    let dir = pod_dir(state, &sb.uid);
    let tmp = dir.join("sandbox.json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(sb)?)?;
    fs::rename(&tmp, dir.join("sandbox.json"))?;
    Ok(())
}

pub fn all_sandboxes(state: &Path) -> Vec<Sandbox> {
    let Ok(rd) = fs::read_dir(pods_dir(state)) else { return vec![] };
    rd.flatten().filter_map(|e| load_sandbox(state, &e.file_name().to_string_lossy())).collect()
}

/// A process's start time (clock ticks since boot), to tell a live shim from a reused pid.
pub fn proc_start(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|(_, start)| start)
}

/// A process's state letter and start time, from /proc/PID/stat.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let state = rest.chars().next()?;
    Some((state, rest.split_whitespace().nth(19)?.parse().ok()?))
}

/// Is the pod's shim running (not gone, not another process with its pid, not a zombie that
/// nobody has reaped yet)?
pub fn shim_alive(sb: &Sandbox) -> bool {
    sb.shim_pid != 0
        && proc_stat(sb.shim_pid).is_some_and(|(state, start)| start == sb.shim_start && state != 'Z' && state != 'X')
}

/// Stops a pod's shim and everything in its session.
pub fn kill_shim(sb: &Sandbox, grace: Duration) {
    let pid = nix::unistd::Pid::from_raw(sb.shim_pid as i32);
    if !shim_alive(sb) {
        let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        return;
    }
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && shim_alive(sb) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // The shim is a session (and group) leader: take the whole group.
    let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
    // This process started it (unless it is a restarted daemon): reap it.
    let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
}

type ProbeKey = (String, String, ProbeKind);

pub struct Kubelet {
    ctx: Arc<LabCtx>,
    node: NodeNet,
    client: kube::Client,
    probes: HashMap<ProbeKey, ProbeState>,
    pushed: HashMap<String, Value>,
    failures: HashMap<String, (Instant, String)>,
    /// Pods being terminated, by uid.
    terminating: HashMap<String, Termination>,
    /// What was last reported of each container (uid, name), to report each change once.
    seen: HashMap<(String, String), Seen>,
    events: Option<PodEvents>,
    wake: weft_watch::Wake,
}

impl Kubelet {
    pub fn new(ctx: Arc<LabCtx>, node: NodeNet, client: kube::Client) -> Kubelet {
        Kubelet {
            ctx,
            node,
            client,
            probes: HashMap::new(),
            pushed: HashMap::new(),
            failures: HashMap::new(),
            terminating: HashMap::new(),
            seen: HashMap::new(),
            events: None,
            wake: weft_watch::Wake::new(),
        }
    }

    pub async fn run(mut self) {
        self.events = Some(PodEvents::start(self.client.clone(), &self.node.name));
        let wake = self.wake.clone();
        let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", self.node.name));
        let reader = weft_watch::cached_with(Api::<Pod>::all(self.client.clone()), cfg, wake.clone());
        let _ = reader.wait_until_ready().await;
        // PLEG's relist: once a second besides the watch's and the probes' wakes.
        let controller = weft_watch::Controller::new(format!("kubelet {}", self.node.name))
            .wake_on(&wake)
            .resync(Duration::from_secs(1));
        controller.run(async move || self.sync(&reader.state()).await).await
    }

    fn emit(&self, pod: &Pod, container: Option<&str>, note: Note) {
        if let Some(ev) = &self.events {
            ev.emit(pod, container.map(|c| pod_events::field_path(pod, c)), note);
        }
    }

    /// Forgets everything kept about a pod that is gone.
    fn forget(&mut self, uid: &str) {
        self.pushed.remove(uid);
        self.failures.remove(uid);
        self.terminating.remove(uid);
        self.probes.retain(|(u, _, _), _| u != uid);
        self.seen.retain(|(u, _), _| u != uid);
    }

    async fn sync(&mut self, pods: &[Arc<Pod>]) -> Result<()> {
        let state = self.ctx.state_dir.clone();
        let mine: Vec<Sandbox> = all_sandboxes(&state).into_iter().filter(|s| s.node == self.node.name).collect();
        let objects: HashMap<String, Arc<Pod>> =
            pods.iter().filter_map(|p| Some((p.metadata.uid.clone()?, p.clone()))).collect();
        // Pods whose object is gone (a forced delete): no grace left, kill and clean up.
        for sb in mine.iter().filter(|s| !objects.contains_key(&s.uid)) {
            let (ctx, node, gone) = (self.ctx.clone(), self.node.clone(), sb.clone());
            tokio::task::spawn_blocking(move || teardown(&ctx, &node, &gone)).await??;
            self.forget(&sb.uid);
        }
        let have: HashSet<String> = mine.iter().map(|s| s.uid.clone()).collect();
        // Pods being deleted: preStop, SIGTERM, SIGKILL at the end of the grace period, then
        // the sandbox goes and the pod object with it.
        for (uid, pod) in objects.iter().filter(|(_, p)| p.metadata.deletion_timestamp.is_some()) {
            let sb = if have.contains(uid) { load_sandbox(&state, uid) } else { None };
            self.terminate(pod, sb).await;
        }
        self.terminating.retain(|uid, _| objects.get(uid).is_some_and(|p| p.metadata.deletion_timestamp.is_some()));
        for (uid, pod) in objects.iter().filter(|(_, p)| p.metadata.deletion_timestamp.is_none()) {
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
            if phase == "Succeeded" || phase == "Failed" {
                continue;
            }
            let sb = if have.contains(uid) { load_sandbox(&state, uid) } else { None };
            let finished = |sb: &Sandbox| {
                shim::read_status(&pod_dir(&state, &sb.uid)).is_some_and(|st| lifecycle::shim_finished(&st))
            };
            let sb = match sb {
                Some(sb) if netns::path(&sb.netns).exists() && (shim_alive(&sb) || finished(&sb)) => sb,
                other => {
                    // Back off a failing pod for a few seconds.
                    if let Some((at, _)) = self.failures.get(uid)
                        && at.elapsed() < Duration::from_secs(3)
                    {
                        continue;
                    }
                    // Worth a line: a pod this kubelet ran has lost its shim or its network.
                    if let Some(o) = &other {
                        tracing::warn!(
                            pod = %o.name,
                            netns = netns::path(&o.netns).exists(),
                            shim_alive = shim_alive(o),
                            "the pod's sandbox lost its shim or its network: starting it again"
                        );
                    } else if netns::path(&netns_name(&self.ctx.name, uid)).exists() {
                        tracing::warn!(pod = %pod.metadata.name.clone().unwrap_or_default(), "a namespace but no sandbox record: a start cut short; starting again");
                    }
                    let (ctx, node, pod2, old) = (self.ctx.clone(), self.node.clone(), pod.clone(), other);
                    // Projected volumes (the ServiceAccount token) are written before the shim mounts them.
                    let volumes = crate::volumes::sync(&self.client, &pod_dir(&state, uid), pod).await;
                    let started = match volumes {
                        Ok(()) => tokio::task::spawn_blocking(move || start_sandbox(&ctx, &node, &pod2, old)).await?,
                        Err(e) => Err(e),
                    };
                    match started {
                        Ok(sb) => {
                            self.failures.remove(uid);
                            sb
                        }
                        Err(e) => {
                            let msg = format!("{e:#}");
                            tracing::warn!(pod = %pod.metadata.name.clone().unwrap_or_default(), error = %msg, "sandbox");
                            self.emit(
                                pod,
                                None,
                                Note::warning("FailedCreatePodSandBox", format!("Failed to create pod sandbox: {msg}")),
                            );
                            self.failures.insert(uid.clone(), (Instant::now(), msg.clone()));
                            self.push_status(
                                pod,
                                json!({"phase": "Pending", "conditions": [
                                {"type": "PodScheduled", "status": "True"},
                                {"type": "Ready", "status": "False", "reason": "SandboxFailed", "message": msg}]}),
                            )
                            .await;
                            continue;
                        }
                    }
                }
            };
            self.observe(pod, &sb, false);
            // Tokens are written again before they expire.
            if let Err(e) = crate::volumes::sync(&self.client, &pod_dir(&state, uid), pod).await {
                tracing::warn!(pod = %pod.metadata.name.clone().unwrap_or_default(), error = %format!("{e:#}"), "refreshing projected volumes");
            }
            self.run_probes(pod, &sb, false).await;
            let status = self.pod_status(pod, &sb);
            self.push_status(pod, status).await;
        }
        Ok(())
    }

    /// One step of a deleted pod's termination (see [`Termination::step`]).
    async fn terminate(&mut self, pod: &Pod, sb: Option<Sandbox>) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        // Never started (or already torn down): nothing to stop.
        let Some(sb) = sb else {
            self.delete_for_good(pod).await;
            self.forget(&uid);
            return;
        };
        let dir = pod_dir(&self.ctx.state_dir, &uid);
        let st = shim::read_status(&dir);
        let now = Instant::now();
        let grace = lifecycle::grace_period(pod);
        let t = self.terminating.entry(uid.clone()).or_insert_with(|| Termination::new(grace, now));
        let first = t.told.is_none();
        match t.step(grace, st.as_ref(), shim_alive(&sb), now) {
            TermStep::Stop(left) => {
                if first {
                    for c in st.iter().flat_map(|s| s.init_containers.iter().chain(&s.containers)) {
                        if c.running {
                            self.emit(
                                pod,
                                Some(&c.name),
                                Note::normal("Killing", format!("Stopping container {}", c.name)),
                            );
                        }
                    }
                }
                let d = dir.clone();
                let told = tokio::task::spawn_blocking(move || shim::stop(&d, None, left)).await;
                if !matches!(told, Ok(Ok(()))) {
                    tracing::debug!(pod = %sb.name, result = ?told.map(|r| r.map_err(|e| format!("{e:#}"))), "stop request");
                    if let Some(t) = self.terminating.get_mut(&uid) {
                        t.told = None;
                    }
                }
            }
            TermStep::Wait => {}
            TermStep::Finish { overdue } => {
                if overdue {
                    self.emit(
                        pod,
                        None,
                        Note::warning(
                            "ExceededGracePeriod",
                            "Container runtime did not kill the pod within specified grace period.".into(),
                        ),
                    );
                }
                self.observe(pod, &sb, true);
                let status = self.pod_status(pod, &sb);
                self.push_status(pod, status).await;
                let (ctx, node, gone) = (self.ctx.clone(), self.node.clone(), sb.clone());
                match tokio::task::spawn_blocking(move || teardown(&ctx, &node, &gone)).await {
                    Ok(Ok(())) => {
                        self.delete_for_good(pod).await;
                        self.forget(&uid);
                    }
                    other => {
                        tracing::warn!(pod = %sb.name, result = ?other.map(|r| r.map_err(|e| format!("{e:#}"))), "teardown")
                    }
                }
                return;
            }
        }
        self.observe(pod, &sb, true);
        self.run_probes(pod, &sb, true).await;
        let status = self.pod_status(pod, &sb);
        self.push_status(pod, status).await;
    }

    /// The kubelet's last word on a terminated pod: DELETE with no grace left, bound to its uid
    /// (a pod of the same name made since is not touched).
    async fn delete_for_good(&self, pod: &Pod) {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), pod.metadata.namespace.as_deref().unwrap_or("default"));
        let name = pod.metadata.name.clone().unwrap_or_default();
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
            ..Default::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => {}
            // Gone already, or another pod by that name now.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => tracing::warn!(pod = %name, error = %e, "final delete"),
        }
    }

    /// Reports each change of the pod's containers once, as events (started, back-off, a failed
    /// preStop hook).
    fn observe(&mut self, pod: &Pod, sb: &Sandbox, terminating: bool) {
        let Some(st) = shim::read_status(&pod_dir(&self.ctx.state_dir, &sb.uid)) else { return };
        let pod_ref = format!(
            "{}_{}({})",
            pod.metadata.name.as_deref().unwrap_or(""),
            pod.metadata.namespace.as_deref().unwrap_or(""),
            sb.uid
        );
        let specs: Vec<&Container> =
            pod.spec.iter().flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers)).collect();
        for cs in st.init_containers.iter().chain(&st.containers) {
            let image = specs.iter().find(|c| c.name == cs.name).and_then(|c| c.image.clone()).unwrap_or_default();
            let seen = self.seen.entry((sb.uid.clone(), cs.name.clone())).or_default();
            for note in lifecycle::container_events(seen, cs, &image, &pod_ref, terminating || st.terminating) {
                self.emit(pod, Some(&cs.name), note);
            }
        }
    }

    async fn push_status(&mut self, pod: &Pod, status: Value) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if self.pushed.get(&uid) == Some(&status) {
            return;
        }
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), pod.metadata.namespace.as_deref().unwrap_or("default"));
        let name = pod.metadata.name.clone().unwrap_or_default();
        match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await {
            Ok(_) => {
                self.pushed.insert(uid, status);
            }
            Err(e) => tracing::debug!(pod = %name, error = %e, "status update"),
        }
    }

    fn pod_status(&self, pod: &Pod, sb: &Sandbox) -> Value {
        let st = shim::read_status(&pod_dir(&self.ctx.state_dir, &sb.uid)).unwrap_or_default();
        let probe_ok = |c: &str, kind: ProbeKind| {
            self.probes.get(&(sb.uid.clone(), c.to_string(), kind)).map_or(kind.initial(), |p| p.ok)
        };
        status_of(pod, sb, &st, probe_ok, self.node.ip, &shim::now())
    }

    /// Runs the pod's probes as the kubelet's prober: per container, a startup probe until it
    /// passes, then liveness and readiness; each from `initialDelaySeconds` after the container
    /// (instance) started, every `periodSeconds`. A liveness or startup probe that fails
    /// `failureThreshold` times in a row has the shim restart the container (preStop, SIGTERM,
    /// SIGKILL after the grace period). While the pod terminates only readiness is probed.
    async fn run_probes(&mut self, pod: &Pod, sb: &Sandbox, terminating: bool) {
        let Some(spec) = &pod.spec else { return };
        let dir = pod_dir(&self.ctx.state_dir, &sb.uid);
        let st = shim::read_status(&dir).unwrap_or_default();
        let now = Instant::now();
        // App containers and sidecars (init containers with restartPolicy Always) are probed.
        let sidecars = spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
        for c in spec.containers.iter().chain(sidecars) {
            let cs =
                st.containers.iter().chain(&st.init_containers).find(|x| x.name == c.name).cloned().unwrap_or_default();
            let instance = lifecycle::instance_of(&cs);
            let mut started = c.startup_probe.is_none();
            for kind in ProbeKind::ALL {
                let Some(probe) = kind.of(c).cloned() else { continue };
                let key = (sb.uid.clone(), c.name.clone(), kind);
                let entry =
                    self.probes.entry(key).or_insert_with(|| ProbeState::new(kind, &probe, instance.clone(), now));
                if entry.instance != instance {
                    // A new instance (a restart): a fresh worker; a probe of the old one is dropped.
                    *entry = ProbeState::new(kind, &probe, instance.clone(), now);
                }
                if let Some(h) = entry.running.take_if(|h| h.is_finished()) {
                    let result = h.await.unwrap_or_else(|e| Err(e.to_string()));
                    if let Err(why) = &result {
                        let note = Note::warning("Unhealthy", format!("{} probe failed: {why}", kind.title()));
                        if let Some(ev) = &self.events {
                            ev.emit(pod, Some(pod_events::field_path(pod, &c.name)), note);
                        }
                    }
                    if entry.record(result.is_ok(), &probe) && !terminating && cs.running {
                        let what = if kind == ProbeKind::Startup { "startup" } else { "liveness" };
                        let note = Note::normal(
                            "Killing",
                            format!("Container {} failed {what} probe, will be restarted", c.name),
                        );
                        if let Some(ev) = &self.events {
                            ev.emit(pod, Some(pod_events::field_path(pod, &c.name)), note);
                        }
                        let (d, name, grace) = (dir.clone(), c.name.clone(), lifecycle::probe_kill_grace(pod, &probe));
                        if let Ok(Err(e)) =
                            tokio::task::spawn_blocking(move || shim::stop(&d, Some(&name), grace)).await
                        {
                            tracing::debug!(pod = %sb.name, container = %c.name, error = %format!("{e:#}"), "restart request");
                        }
                    }
                }
                if kind == ProbeKind::Startup {
                    started = entry.ok;
                }
                if (terminating && kind != ProbeKind::Readiness) || !entry.due(cs.running, started, now) {
                    continue;
                }
                entry.next = now + ProbeState::period(&probe);
                let (ip, node_ns, dir) =
                    (sb.ips.first().cloned().unwrap_or_default(), self.node.netns_path(), dir.clone());
                let (container, wake) = (c.clone(), self.wake.clone());
                entry.running = Some(tokio::task::spawn_blocking(move || {
                    let r = probe_check(&probe, &container, &ip, &node_ns, &dir);
                    wake.wake();
                    r
                }));
            }
        }
    }
}

/// A container's status as the API shows it. `ready`/`started` from its probes; `waiting` is the
/// reason of a container that has not run yet.
fn container_status(c: &Container, cs: &ContainerState, uid: &str, ready: bool, started: bool, waiting: &str) -> Value {
    let state = if cs.running {
        json!({"running": {"startedAt": cs.started_at}})
    } else if cs.done {
        json!({"terminated": {"exitCode": cs.exit_code.unwrap_or(0), "reason": cs.reason, "startedAt": cs.started_at, "finishedAt": cs.finished_at}})
    } else if cs.restart_count > 0 {
        json!({"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off restarting failed container {}", c.name)}})
    } else {
        json!({"waiting": {"reason": waiting}})
    };
    let mut s = json!({
        "name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "",
        "containerID": format!("weft://{}/{}", uid, c.name),
        "ready": ready, "started": started, "restartCount": cs.restart_count, "state": state,
    });
    if cs.restart_count > 0 && cs.exit_code.is_some() && !cs.done {
        s["lastState"] =
            json!({"terminated": {"exitCode": cs.exit_code, "reason": cs.reason, "finishedAt": cs.finished_at}});
    }
    s
}

/// A pod's status from its sandbox and what its shim reports: phase (Pending while init
/// containers run, Failed when one failed for good, Succeeded or Failed once every container is
/// done, which the restart policy decides), init and app container states (CrashLoopBackOff
/// between restarts, the last exit in `lastState`, PodInitializing while init containers run),
/// readiness from the probes (`probe_ok` of a container's name and a probe kind, for containers
/// that have that probe): a container has started once running and its startup probe passed,
/// is ready once started and its readiness probe passed. `now` is the start time of a pod that
/// has none yet.
fn status_of(
    pod: &Pod,
    sb: &Sandbox,
    st: &shim::ShimStatus,
    probe_ok: impl Fn(&str, ProbeKind) -> bool,
    host_ip: std::net::Ipv4Addr,
    now: &str,
) -> Value {
    let uid = &sb.uid;
    let spec = pod.spec.clone().unwrap_or_default();
    let containers = spec.containers.clone();
    let inits = spec.init_containers.clone().unwrap_or_default();
    let state_of =
        |list: &[ContainerState], name: &str| list.iter().find(|x| x.name == name).cloned().unwrap_or_default();
    let started_of = |c: &Container, cs: &ContainerState| {
        cs.running && (c.startup_probe.is_none() || probe_ok(&c.name, ProbeKind::Startup))
    };
    let ready_of = |c: &Container, cs: &ContainerState| {
        started_of(c, cs) && (c.readiness_probe.is_none() || probe_ok(&c.name, ProbeKind::Readiness))
    };
    let initialized = inits.is_empty() || st.initialized;
    let mut init_statuses = vec![];
    let mut init_failed = false;
    let mut incomplete = vec![];
    for c in &inits {
        let cs = state_of(&st.init_containers, &c.name);
        let sidecar = c.restart_policy.as_deref() == Some("Always");
        let (ready, started) = if sidecar {
            (ready_of(c, &cs), started_of(c, &cs))
        } else {
            (cs.done && cs.exit_code == Some(0), cs.running)
        };
        init_failed |= cs.done && cs.exit_code.unwrap_or(0) != 0;
        let complete = (cs.done && cs.exit_code == Some(0)) || (sidecar && cs.running);
        if !complete {
            incomplete.push(c.name.clone());
        }
        init_statuses.push(container_status(c, &cs, uid, ready, started, "PodInitializing"));
    }
    let mut statuses = vec![];
    let mut all_ready = !containers.is_empty() && initialized;
    let mut all_done = !containers.is_empty();
    let mut all_ok = true;
    let waiting = if initialized { "ContainerCreating" } else { "PodInitializing" };
    for c in &containers {
        let cs = state_of(&st.containers, &c.name);
        let ready = ready_of(c, &cs);
        all_ready &= ready;
        all_done &= cs.done;
        all_ok &= cs.exit_code.unwrap_or(0) == 0;
        statuses.push(container_status(c, &cs, uid, ready, started_of(c, &cs), waiting));
    }
    // Sidecars count for readiness too.
    for (c, s) in inits.iter().zip(&init_statuses) {
        if c.restart_policy.as_deref() == Some("Always") {
            all_ready &= s["ready"] == true;
        }
    }
    let phase = if init_failed {
        "Failed"
    } else if !initialized {
        "Pending"
    } else if all_done {
        if all_ok { "Succeeded" } else { "Failed" }
    } else if st.containers.iter().any(|c| c.running || c.restart_count > 0 || c.done) {
        "Running"
    } else {
        "Pending"
    };
    // A condition keeps the time it last changed (minReadySeconds counts from Ready's).
    let cond = |t: &str, ok: bool| {
        let status = if ok { "True" } else { "False" };
        let since = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == t && c.status == status))
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| json!(t))
            .unwrap_or_else(|| json!(now));
        json!({"type": t, "status": status, "lastTransitionTime": since})
    };
    let mut init_cond = cond("Initialized", initialized);
    if !initialized {
        init_cond["reason"] = json!("ContainersNotInitialized");
        init_cond["message"] = json!(format!("containers with incomplete status: [{}]", incomplete.join(" ")));
    }
    let ips: Vec<Value> = sb.ips.iter().map(|ip| json!({"ip": ip})).collect();
    let mut out = json!({
        "phase": phase,
        "podIP": sb.ips.first(),
        "podIPs": ips,
        "hostIP": host_ip.to_string(),
        "hostIPs": [{"ip": host_ip.to_string()}],
        "startTime": pod.status.as_ref().and_then(|s| s.start_time.clone()).map(|t| json!(t)).unwrap_or(json!(now)),
        "conditions": [cond("PodScheduled", true), init_cond, cond("ContainersReady", all_ready), cond("Ready", all_ready)],
        "containerStatuses": statuses,
    });
    if !inits.is_empty() {
        out["initContainerStatuses"] = json!(init_statuses);
    }
    out
}

fn resolve_port(p: &IntOrString, c: &Container) -> Option<u16> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name))
            .and_then(|cp| u16::try_from(cp.container_port).ok()),
    }
}

/// What one probe does, decided from the spec alone.
#[derive(Debug, PartialEq)]
enum ProbeAction {
    /// GET `path` from `addr`; a 2xx or 3xx status passes.
    Http { addr: SocketAddr, path: String },
    /// Connect to `addr`; a connection passes.
    Tcp(SocketAddr),
    /// Run `argv` in the container; exit code 0 passes.
    Exec(Vec<String>),
    /// Call grpc.health.v1.Health/Check for `service` at `addr`; SERVING passes.
    Grpc { addr: SocketAddr, service: String },
    /// The spec cannot be probed (no such port, no address, no command): a failure.
    Fail(&'static str),
    /// No handler at all: a success, as before.
    Pass,
}

fn probe_action(p: &Probe, c: &Container, pod_ip: &str) -> ProbeAction {
    if let Some(h) = &p.http_get {
        let Some(port) = resolve_port(&h.port, c) else { return ProbeAction::Fail("no such port") };
        let Ok(ip) = h.host.clone().unwrap_or_else(|| pod_ip.to_string()).parse::<std::net::IpAddr>() else {
            return ProbeAction::Fail("no address");
        };
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        return ProbeAction::Http { addr: SocketAddr::new(ip, port), path };
    }
    if let Some(t) = &p.tcp_socket {
        let Some(port) = resolve_port(&t.port, c) else { return ProbeAction::Fail("no such port") };
        let Ok(ip) = pod_ip.parse::<std::net::IpAddr>() else { return ProbeAction::Fail("no address") };
        return ProbeAction::Tcp(SocketAddr::new(ip, port));
    }
    if let Some(e) = &p.exec {
        let argv = e.command.clone().unwrap_or_default();
        if argv.is_empty() {
            return ProbeAction::Fail("no command");
        }
        return ProbeAction::Exec(argv);
    }
    if let Some(g) = &p.grpc {
        let Some(port) = u16::try_from(g.port).ok().filter(|&p| p != 0) else {
            return ProbeAction::Fail("no such port");
        };
        let Ok(ip) = pod_ip.parse::<std::net::IpAddr>() else { return ProbeAction::Fail("no address") };
        return ProbeAction::Grpc { addr: SocketAddr::new(ip, port), service: g.service.clone().unwrap_or_default() };
    }
    ProbeAction::Pass
}

/// Does an HTTP status line's start (`HTTP/1.1 200`, 12 bytes) say success (200-399)?
fn http_status_ok(head: &[u8]) -> bool {
    let code: u16 = head.get(9..12).map(|c| String::from_utf8_lossy(c).parse().unwrap_or(0)).unwrap_or(0);
    (200..400).contains(&code)
}

/// One probe, bounded by its `timeoutSeconds` (default 1 s, as kubelet): httpGet, tcpSocket and
/// grpc connect to the pod IP from the node (as kubelet does); exec runs the command in the pod, by its
/// shim (the pod's namespaces, the container's environment and capabilities), killed at the
/// timeout.
#[cfg(test)]
fn probe_once(p: &Probe, c: &Container, pod_ip: &str, node_ns: &Path, pod_dir: &Path) -> bool {
    probe_check(p, c, pod_ip, node_ns, pod_dir).is_ok()
}

/// One probe, passed or why not (in the kubelet's words where it has some).
fn probe_check(p: &Probe, c: &Container, pod_ip: &str, node_ns: &Path, pod_dir: &Path) -> Result<(), String> {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    match probe_action(p, c, pod_ip) {
        ProbeAction::Http { addr, path } => http_probe(addr, path, timeout, node_ns),
        ProbeAction::Tcp(addr) => netns::in_netns(node_ns, move || {
            TcpStream::connect_timeout(&addr, timeout).map(|_| ()).map_err(|e| format!("dial tcp {addr}: {e}"))
        })
        .unwrap_or_else(|e| Err(format!("{e:#}"))),
        ProbeAction::Grpc { addr, service } => grpc_probe::probe(addr, service, timeout, node_ns),
        ProbeAction::Exec(argv) => match shim::exec_probe(pod_dir, &c.name, &argv, timeout) {
            Ok(result) => result,
            Err(e) => {
                tracing::debug!(container = %c.name, error = %format!("{e:#}"), "exec probe");
                Err(format!("{e:#}"))
            }
        },
        ProbeAction::Fail(why) => {
            tracing::debug!(container = %c.name, why, "probe");
            Err(why.to_string())
        }
        ProbeAction::Pass => Ok(()),
    }
}

/// An httpGet probe from the node's namespace, the whole exchange within `timeout`.
fn http_probe(addr: SocketAddr, path: String, timeout: Duration, node_ns: &Path) -> Result<(), String> {
    let (ip, port) = (addr.ip(), addr.port());
    let url = format!("http://{addr}{path}");
    netns::in_netns(node_ns, move || -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let get = |why: String| format!("Get \"{url}\": {why}");
        let mut s = TcpStream::connect_timeout(&SocketAddr::new(ip, port), timeout)
            .map_err(|e| get(format!("dial tcp {addr}: {e}")))?;
        let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        let _ = s.set_write_timeout(Some(left()));
        let req = format!("GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/1.33\r\n\r\n");
        s.write_all(req.as_bytes()).map_err(|e| get(e.to_string()))?;
        // The status line, within the deadline however slowly it comes.
        let mut head = [0u8; 12];
        let mut got = 0;
        let slow = || get("context deadline exceeded (Client.Timeout exceeded while awaiting headers)".into());
        while got < head.len() {
            if Instant::now() >= deadline || s.set_read_timeout(Some(left())).is_err() {
                return Err(slow());
            }
            match s.read(&mut head[got..]) {
                Ok(0) => return Err(get("EOF".into())),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Err(slow());
                }
                Err(e) => return Err(get(e.to_string())),
                Ok(n) => got += n,
            }
        }
        if http_status_ok(&head) {
            return Ok(());
        }
        let code = String::from_utf8_lossy(head.get(9..12).unwrap_or_default()).to_string();
        Err(format!("HTTP probe failed with statuscode: {code}"))
    })
    .unwrap_or_else(|e| Err(format!("{e:#}")))
}

pub fn netns_name(lab: &str, uid: &str) -> String {
    // By characters: a byte slice of an odd uid could end inside a character and panic.
    let short: String = uid.chars().take(13).collect();
    format!("weft-{lab}-pod-{short}")
}

fn env_for(pod: &Pod, c: &Container, ip: &str, node: &NodeNet) -> Vec<(String, String)> {
    // The `kubernetes` Service's variables, which the kubelet sets in every namespace (in-cluster
    // clients read the first two), docker-link style ones included.
    let mut out: Vec<(String, String)> = [
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
        ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
        ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
        ("KUBERNETES_PORT_443_TCP", "tcp://10.96.0.1:443"),
        ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
        ("KUBERNETES_PORT_443_TCP_PORT", "443"),
        ("KUBERNETES_PORT_443_TCP_ADDR", "10.96.0.1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for e in c.env.iter().flatten() {
        let v = if let Some(v) = &e.value {
            v.clone()
        } else if let Some(f) = e.value_from.as_ref().and_then(|f| f.field_ref.as_ref()) {
            match f.field_path.as_str() {
                "metadata.name" => pod.metadata.name.clone().unwrap_or_default(),
                "metadata.namespace" => pod.metadata.namespace.clone().unwrap_or_default(),
                "metadata.uid" => pod.metadata.uid.clone().unwrap_or_default(),
                "status.podIP" => ip.to_string(),
                "status.hostIP" => node.ip.to_string(),
                "spec.nodeName" => node.name.clone(),
                "spec.serviceAccountName" => {
                    pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or("default".into())
                }
                _ => String::new(),
            }
        } else {
            String::new()
        };
        out.push((e.name.clone(), v));
    }
    out
}

/// What a container runs: its command, or the built-in server for its image.
fn argv_for(ctx: &LabCtx, pod: &Pod, c: &Container) -> Vec<String> {
    let cmd: Vec<String> = c.command.clone().unwrap_or_default();
    let args: Vec<String> = c.args.clone().unwrap_or_default();
    if !cmd.is_empty() {
        let argv: Vec<String> = cmd.into_iter().chain(args).collect();
        // weft's own image (the cluster DNS of deploy/dns.yaml): the host's build of it.
        let image = c.image.as_deref().unwrap_or("");
        return crate::builtin::weft_image_command(image, &argv, &ctx.weft_exe).unwrap_or(argv);
    }
    let ports = |proto: &str| -> Vec<u16> {
        c.ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == proto)
            .filter_map(|p| u16::try_from(p.container_port).ok())
            .collect()
    };
    let (mode, tcp, udp) = crate::builtin::plan(c.image.as_deref().unwrap_or(""), &args, &ports("TCP"), &ports("UDP"));
    let join = |v: &[u16]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
    vec![
        ctx.weft_exe.display().to_string(),
        "builtin".into(),
        "--pod".into(),
        pod.metadata.name.clone().unwrap_or_default(),
        "--namespace".into(),
        pod.metadata.namespace.clone().unwrap_or_default(),
        "--mode".into(),
        match mode {
            crate::builtin::Mode::Echo => "echo",
            crate::builtin::Mode::ServeHostname => "serve-hostname",
            crate::builtin::Mode::Netexec => "netexec",
        }
        .into(),
        "--tcp".into(),
        join(&tcp),
        "--udp".into(),
        join(&udp),
    ]
}

/// The pod's resolv.conf, from its dnsPolicy (ClusterFirst: the cluster DNS and search path).
fn resolv_conf(ctx: &LabCtx, pod: &Pod) -> String {
    let ns = pod.metadata.namespace.clone().unwrap_or("default".into());
    let d = &ctx.cluster_domain;
    let spec = pod.spec.as_ref();
    let mut policy = spec.and_then(|s| s.dns_policy.clone()).unwrap_or("ClusterFirst".into());
    // A hostNetwork pod resolves as its node does unless it asks for the cluster's DNS by
    // ClusterFirstWithHostNet; for other pods that policy is ClusterFirst.
    if policy == "ClusterFirst" && host_network(pod) {
        policy = "Default".into();
    }
    let mut servers = vec![];
    let mut search = vec![];
    let mut options = vec!["ndots:5".to_string()];
    if policy != "None" && policy != "Default" {
        servers.push(ctx.dns_ip.clone());
        search = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
    }
    if let Some(cfg) = spec.and_then(|s| s.dns_config.as_ref()) {
        servers.extend(cfg.nameservers.clone().unwrap_or_default());
        search.extend(cfg.searches.clone().unwrap_or_default());
        for o in cfg.options.iter().flatten() {
            let opt = match &o.value {
                Some(v) => format!("{}:{v}", o.name.clone().unwrap_or_default()),
                None => o.name.clone().unwrap_or_default(),
            };
            options.retain(|x| x.split(':').next() != opt.split(':').next());
            options.push(opt);
        }
    }
    let mut s = String::new();
    if !search.is_empty() {
        s.push_str(&format!("search {}\n", search.join(" ")));
    }
    for n in servers {
        s.push_str(&format!("nameserver {n}\n"));
    }
    s.push_str(&format!("options {}\n", options.join(" ")));
    s
}

fn conflist(ctx: &LabCtx, node: &NodeNet) -> Result<ConfList> {
    let p = ctx.state_dir.join("nodes").join(&node.name).join("cni").join("10-weft.conflist");
    let v: Value = serde_json::from_slice(&fs::read(&p).with_context(|| format!("reading {}", p.display()))?)?;
    ConfList::parse(&v).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
}

fn port_mappings(pod: &Pod) -> Value {
    let mut maps = vec![];
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        for p in c.ports.iter().flatten() {
            if let Some(hp) = p.host_port.filter(|h| *h > 0) {
                maps.push(json!({"hostPort": hp, "containerPort": p.container_port,
                                 "protocol": p.protocol.clone().unwrap_or("TCP".into()).to_lowercase()}));
            }
        }
    }
    json!({"portMappings": maps})
}

/// What the shim of `pod` runs (the pod-spec translation: commands, environment, security,
/// restart policy, hostname), given its uid, its network namespace's name and its IP. No I/O.
fn shim_spec(ctx: &LabCtx, node: &NodeNet, pod: &Pod, uid: &str, ns_name: &str, ip: &str) -> ShimSpec {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let dir = pod_dir(&ctx.state_dir, uid);
    let spec = pod.spec.clone().unwrap_or_default();
    ShimSpec {
        pod: name.clone(),
        namespace: pod.metadata.namespace.clone().unwrap_or("default".into()),
        uid: uid.to_string(),
        netns: netns::path(ns_name),
        // A hostNetwork pod shares its node's hostname, as it shares the node's UTS namespace.
        hostname: if host_network(pod) { node.name.clone() } else { spec.hostname.clone().unwrap_or(name) }
            .chars()
            .take(63)
            .collect(),
        resolv_conf: Some(dir.join("resolv.conf")),
        dir,
        restart_policy: spec.restart_policy.clone().unwrap_or("Always".into()),
        containers: spec.containers.iter().map(|c| container_spec(ctx, node, pod, c, ip)).collect(),
        init_containers: spec.init_containers.iter().flatten().map(|c| container_spec(ctx, node, pod, c, ip)).collect(),
        // No pod sees the lab's files (the API's credentials, other pods' files).
        hide: vec![ctx.state_dir.clone()],
        mounts: crate::volumes::mounts(&pod_dir(&ctx.state_dir, uid), pod),
    }
}

/// One container of the pod as its shim runs it.
fn container_spec(ctx: &LabCtx, node: &NodeNet, pod: &Pod, c: &Container, ip: &str) -> ContainerSpec {
    ContainerSpec {
        name: c.name.clone(),
        argv: argv_for(ctx, pod, c),
        env: env_for(pod, c, ip, node),
        workdir: c.working_dir.clone(),
        security: Security::of(c.security_context.as_ref()),
        pre_stop: pre_stop_hook(c, ip),
        restart_policy: c.restart_policy.clone(),
        stdin: c.stdin.unwrap_or(false),
    }
}

/// A container's `lifecycle.preStop` as the shim runs it: exec as written; httpGet to the pod's
/// address (or the hook's host) with its port resolved, by name too; sleep. What the lab cannot
/// run fails when it runs, saying why (the kubelet ignores a tcpSocket handler, as here).
fn pre_stop_hook(c: &Container, pod_ip: &str) -> Option<Hook> {
    let h = c.lifecycle.as_ref()?.pre_stop.as_ref()?;
    if let Some(e) = &h.exec {
        return Some(Hook::Exec(e.command.clone().unwrap_or_default()));
    }
    if let Some(g) = &h.http_get {
        if g.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("HTTPS")) {
            return Some(Hook::Invalid(format!(
                "container {}: lifecycle.preStop.httpGet.scheme HTTPS is not supported by the lab; use HTTP",
                c.name
            )));
        }
        let Some(port) = resolve_port(&g.port, c) else {
            return Some(Hook::Invalid(format!(
                "container {}: lifecycle.preStop.httpGet.port {:?} is not a port number or a named port of the container",
                c.name, g.port
            )));
        };
        let host = g.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| pod_ip.to_string());
        let Ok(ip) = host.parse::<std::net::IpAddr>() else {
            return Some(Hook::Invalid(format!(
                "container {}: lifecycle.preStop.httpGet.host {host:?} is not an IP address (the lab resolves no names here)",
                c.name
            )));
        };
        let mut path = g.path.clone().unwrap_or_default();
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        let headers = g.http_headers.iter().flatten().map(|h| (h.name.clone(), h.value.clone())).collect();
        return Some(Hook::Http { addr: SocketAddr::new(ip, port), path, host: format!("{host}:{port}"), headers });
    }
    h.sleep.as_ref().map(|s| Hook::Sleep(s.seconds.max(0) as u64))
}

/// Whether a pod runs in its node's network namespace (`spec.hostNetwork`).
pub fn host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| s.host_network == Some(true))
}

/// Makes (or re-makes) a pod's sandbox: namespace, CNI ADD, resolv.conf, shim. A hostNetwork
/// pod gets none of the network: it joins its node's namespace with the node's address, as the
/// kubelet skips the CNI for it.
pub fn start_sandbox(ctx: &LabCtx, node: &NodeNet, pod: &Pod, old: Option<Sandbox>) -> Result<Sandbox> {
    let uid = pod.metadata.uid.clone().context("pod has no uid")?;
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or("default".into());
    let dir = pod_dir(&ctx.state_dir, &uid);
    fs::create_dir_all(&dir)?;
    let host_network = host_network(pod);
    let ns_name = if host_network { node.netns.clone() } else { netns_name(&ctx.name, &uid) };
    let (ips, result) = if host_network {
        (vec![node.ip.to_string()], Value::Null)
    } else {
        pod_network(ctx, node, pod, &uid, &ns_name, old)?
    };
    fs::write(dir.join("resolv.conf"), resolv_conf(ctx, pod))?;
    let ip = ips.first().cloned().unwrap_or_default();
    let shim_spec = shim_spec(ctx, node, pod, &uid, &ns_name, &ip);
    let spec_path = dir.join("shim.json");
    fs::write(&spec_path, serde_json::to_vec_pretty(&shim_spec)?)?;
    let log = File::create(dir.join("shim.log"))?;
    // pid 1 of the pod's PID namespace, in a session of its own; reaped by nobody in particular:
    // it lives on its own, like containerd's.
    let pid = shim::spawn(&ctx.weft_exe, &spec_path, &log).context("starting the pod shim")?;
    let start = proc_start(pid).unwrap_or(0);
    let sb = Sandbox {
        uid: uid.clone(),
        namespace,
        name,
        node: node.name.clone(),
        netns: ns_name,
        ips,
        shim_pid: pid,
        shim_start: start,
        cni_result: result,
        host_network,
    };
    save_sandbox(&ctx.state_dir, &sb)?;
    Ok(sb)
}

/// The pod's own namespace and its CNI attachment (addresses and the CNI result), or those of
/// `old`, a sandbox whose shim died, when its network is still there.
fn pod_network(
    ctx: &LabCtx,
    node: &NodeNet,
    pod: &Pod,
    uid: &str,
    ns_name: &str,
    old: Option<Sandbox>,
) -> Result<(Vec<String>, Value)> {
    if let Some(o) = old.filter(|o| !o.host_network && netns::path(&o.netns).exists() && !o.ips.is_empty()) {
        return Ok((o.ips, o.cni_result));
    }
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let node_ns = File::open(node.netns_path()).with_context(|| format!("node {} has no namespace", node.name))?;
    let list = conflist(ctx, node)?;
    let rc = port_mappings(pod);
    let ns_path = netns::path(ns_name).display().to_string();
    netns::create(ns_name)?;
    let base = Invocation {
        plugin: Path::new(""),
        command: "ADD",
        container_id: uid,
        netns: &ns_path,
        ifname: "eth0",
        args: &format!("K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_UID={uid}"),
        cni_path: &ctx.cni_path,
        node_netns: Some(&node_ns),
    };
    let result = match list.add(&base, &rc) {
        Ok(r) => r,
        Err(e) => {
            let _ = list.del(&base, None, &rc);
            let _ = netns::delete(ns_name);
            bail!("CNI ADD failed: {e}");
        }
    };
    let ips: Vec<String> = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str().map(|a| a.split('/').next().unwrap_or("").to_string()))
        .collect();
    Ok((ips, result))
}

/// Stops a pod: shim, CNI DEL, namespace, state.
pub fn teardown(ctx: &LabCtx, node: &NodeNet, sb: &Sandbox) -> Result<()> {
    kill_shim(sb, Duration::from_secs(3));
    if sb.host_network {
        // The node's namespace: not the pod's to take down.
        let _ = fs::remove_dir_all(pod_dir(&ctx.state_dir, &sb.uid));
        return Ok(());
    }
    if let (Ok(list), Ok(node_ns)) = (conflist(ctx, node), File::open(node.netns_path())) {
        let ns_path = netns::path(&sb.netns).display().to_string();
        let base = Invocation {
            plugin: Path::new(""),
            command: "DEL",
            container_id: &sb.uid,
            netns: &ns_path,
            ifname: "eth0",
            args: "",
            cni_path: &ctx.cni_path,
            node_netns: Some(&node_ns),
        };
        if let Err(e) = list.del(&base, Some(&sb.cni_result), &json!({})) {
            tracing::warn!(pod = %sb.name, error = %e, "CNI DEL");
        }
    }
    netns::delete(&sb.netns)?;
    let _ = fs::remove_dir_all(pod_dir(&ctx.state_dir, &sb.uid));
    Ok(())
}

#[cfg(test)]
#[path = "kubelet_tests.rs"]
mod tests;
