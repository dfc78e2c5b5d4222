//! The kubelet's pod-lifecycle decisions, pure (a pod, what its shim reports and the time in;
//! what to do now out) so they are tested without root: graceful termination's timeline, the
//! probes' state machines (startup, liveness, readiness) and the events a container's state
//! changes make. The kubelet (`kubelet.rs`) and the shim (`shim.rs`) carry them out.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, Probe};

use crate::shim::{ContainerState, ShimStatus};

/// The kubelet's minimum grace period (`minimumGracePeriodInSeconds`): a container gets at
/// least this long between SIGTERM and SIGKILL, even when its preStop hook used up the rest.
pub const MIN_KILL_WINDOW: Duration = Duration::from_secs(2);

/// How long past a pod's deadline (and the minimum window) the kubelet waits for its shim to
/// report every container stopped before it tears the sandbox down regardless.
pub const OVERDUE: Duration = Duration::from_secs(5);

/// The default `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// When a container sent SIGTERM at `sigterm_at` is sent SIGKILL: at the pod's `deadline` (its
/// grace period counted from the start of the stop, preStop included), but never sooner than
/// [`MIN_KILL_WINDOW`] after the SIGTERM, as the kubelet's `killContainer` extends it.
pub fn kill_at(deadline: Instant, sigterm_at: Instant) -> Instant {
    deadline.max(sigterm_at + MIN_KILL_WINDOW)
}

/// The longest grace period worked to: a pod's may be any i64, and an `Instant` a century on is
/// as good as never (a longer one overflows `Instant` arithmetic, which panics).
const MAX_GRACE_SECS: i64 = 100 * 365 * 24 * 3600;

fn secs(s: Option<i64>) -> Option<Duration> {
    s.map(|s| Duration::from_secs(s.clamp(0, MAX_GRACE_SECS) as u64))
}

/// The grace period of a pod being deleted: `metadata.deletionGracePeriodSeconds` (the API
/// server's, from the DELETE or the spec), else `spec.terminationGracePeriodSeconds`, else 30 s.
pub fn grace_period(pod: &Pod) -> Duration {
    secs(pod.metadata.deletion_grace_period_seconds)
        .or_else(|| secs(pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds)))
        .unwrap_or(DEFAULT_GRACE)
}

/// The grace period of a container killed for a failed liveness or startup probe: the probe's
/// own `terminationGracePeriodSeconds`, else the pod's.
pub fn probe_kill_grace(pod: &Pod, probe: &Probe) -> Duration {
    secs(probe.termination_grace_period_seconds)
        .or_else(|| secs(pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds)))
        .unwrap_or(DEFAULT_GRACE)
}

/// Is any container of the pod still running, by its shim's report?
pub fn any_running(st: &ShimStatus) -> bool {
    st.containers.iter().chain(&st.init_containers).any(|c| c.running)
}

/// Has the pod's shim nothing more to run: stopped for the pod's deletion with nothing left
/// running, every app container done as the restart policy says, or an init container failed
/// for good? Such a pod's shim may exit; the kubelet must not start it again.
pub fn shim_finished(st: &ShimStatus) -> bool {
    let init_failed = st.init_containers.iter().any(|c| c.done && c.exit_code.unwrap_or(0) != 0);
    (st.terminating && !any_running(st))
        || init_failed
        || (st.initialized && !st.containers.is_empty() && st.containers.iter().all(|c| c.done))
}

/// The kubelet's record of one pod it is terminating.
#[derive(Clone, Debug)]
pub struct Termination {
    /// The grace period it works to (a later, shorter one replaces it).
    pub grace: Duration,
    /// When every container is to be gone: the first sight of the deletion plus the grace.
    pub deadline: Instant,
    /// The deadline the shim was told (none yet, or the request failed).
    pub told: Option<Instant>,
}

/// What the kubelet does next for a pod being terminated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TermStep {
    /// Ask the shim to stop the pod within this much time from now (preStop hooks, SIGTERM,
    /// SIGKILL at the end).
    Stop(Duration),
    /// The containers are stopping.
    Wait,
    /// Nothing runs any more (or the shim is gone): tear the sandbox down, then delete the pod
    /// for good. `overdue`: the shim did not stop everything in time; teardown kills what is left.
    Finish { overdue: bool },
}

impl Termination {
    pub fn new(grace: Duration, now: Instant) -> Termination {
        Termination { grace, deadline: now + grace, told: None }
    }

    /// The next step, given the pod's grace period now (a second DELETE may have shortened it:
    /// the deadline comes closer, never later), the shim's report and whether it is alive.
    pub fn step(&mut self, grace: Duration, st: Option<&ShimStatus>, shim_alive: bool, now: Instant) -> TermStep {
        if grace < self.grace {
            self.grace = grace;
            self.deadline = self.deadline.min(now + grace);
        }
        if !shim_alive || st.is_some_and(|s| s.terminating && !any_running(s)) {
            return TermStep::Finish { overdue: false };
        }
        if now >= self.deadline + MIN_KILL_WINDOW + OVERDUE {
            return TermStep::Finish { overdue: true };
        }
        let shim_knows = st.is_some_and(|s| s.terminating);
        if self.told != Some(self.deadline) || !shim_knows {
            self.told = Some(self.deadline);
            return TermStep::Stop(self.deadline.saturating_duration_since(now));
        }
        TermStep::Wait
    }
}

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 3] = [ProbeKind::Startup, ProbeKind::Liveness, ProbeKind::Readiness];

    /// As the kubelet names it in events ("Liveness probe failed: ...").
    pub fn title(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }

    pub fn of(self, c: &Container) -> Option<&Probe> {
        match self {
            ProbeKind::Startup => c.startup_probe.as_ref(),
            ProbeKind::Liveness => c.liveness_probe.as_ref(),
            ProbeKind::Readiness => c.readiness_probe.as_ref(),
        }
    }

    /// The result before any probe ran, as the kubelet starts its workers: a container is not
    /// ready and not started, but alive.
    pub fn initial(self) -> bool {
        self == ProbeKind::Liveness
    }
}

/// One container instance, as the probes tell instances apart (a restart starts afresh).
pub type Instance = (u32, Option<String>);

pub fn instance_of(cs: &ContainerState) -> Instance {
    (cs.restart_count, cs.started_at.clone())
}

/// One probe worker's state, as the kubelet's prober keeps it.
pub struct ProbeState {
    pub kind: ProbeKind,
    /// The container instance the results are about.
    pub instance: Instance,
    /// The result that counts: ready (readiness), alive (liveness), started (startup).
    pub ok: bool,
    pub next: Instant,
    pub successes: i32,
    pub failures: i32,
    /// A liveness or startup failure asked for a restart: no probing until the next instance.
    pub on_hold: bool,
    /// The probe under way: probes run on their own (one pod's hung probe holds up nobody) and
    /// wake the kubelet when they finish. Its result: passed, or why not.
    pub running: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl ProbeState {
    /// A worker for a new container instance: the first probe after `initialDelaySeconds`.
    pub fn new(kind: ProbeKind, probe: &Probe, instance: Instance, now: Instant) -> ProbeState {
        ProbeState {
            kind,
            instance,
            ok: kind.initial(),
            next: now + secs(probe.initial_delay_seconds.map(i64::from)).unwrap_or_default(),
            successes: 0,
            failures: 0,
            on_hold: false,
            running: None,
        }
    }

    /// Counts one finished probe as the kubelet does: the result changes after
    /// `successThreshold` successes in a row (default 1) or `failureThreshold` failures in a row
    /// (default 3); below them it stays as it was. Returns true when this result makes a
    /// liveness or startup probe fail: the container is to be restarted (and probing holds until
    /// its next instance).
    pub fn record(&mut self, passed: bool, probe: &Probe) -> bool {
        let (succ_needed, fail_needed) = (probe.success_threshold.unwrap_or(1), probe.failure_threshold.unwrap_or(3));
        if passed {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
            if self.successes >= succ_needed {
                self.ok = true;
            }
            return false;
        }
        self.failures = self.failures.saturating_add(1);
        self.successes = 0;
        if self.failures < fail_needed {
            return false;
        }
        self.ok = false;
        if self.kind == ProbeKind::Readiness {
            return false;
        }
        self.on_hold = true;
        self.failures = 0;
        true
    }

    /// Is this probe to run now, given whether the container runs and has started (its startup
    /// probe passed, or it has none)? A startup probe runs until the container has started; the
    /// others only after.
    pub fn due(&self, running: bool, started: bool, now: Instant) -> bool {
        let gate = match self.kind {
            ProbeKind::Startup => !started,
            _ => started,
        };
        running && gate && !self.on_hold && self.running.is_none() && now >= self.next
    }

    pub fn period(probe: &Probe) -> Duration {
        Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64)
    }
}

/// A kubelet event: type (true: Warning), reason and note (message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Note {
    pub fn normal(reason: &'static str, message: String) -> Note {
        Note { warning: false, reason, message }
    }
    pub fn warning(reason: &'static str, message: String) -> Note {
        Note { warning: true, reason, message }
    }
}

/// What the kubelet last reported of a container, to report each change once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub started_at: Option<String>,
    pub back_off_at: Option<u32>,
    pub pre_stop_failures_at: u32,
}

/// The events a container's new state makes, as the kubelet's: a new instance was pulled (the
/// image is "present": the lab runs host binaries), created and started; a container waiting to
/// be restarted is in back-off; a preStop hook failed (its message not given: the kubelet keeps
/// secrets out of events). `pod_ref` is the kubelet's `format.Pod`: `name_namespace(uid)`.
pub fn container_events(
    seen: &mut Seen,
    cs: &ContainerState,
    image: &str,
    pod_ref: &str,
    terminating: bool,
) -> Vec<Note> {
    let mut out = vec![];
    if cs.running && cs.started_at.is_some() && seen.started_at != cs.started_at {
        seen.started_at = cs.started_at.clone();
        out.push(Note::normal("Pulled", format!("Container image \"{image}\" already present on machine")));
        out.push(Note::normal("Created", format!("Created container: {}", cs.name)));
        out.push(Note::normal("Started", format!("Started container {}", cs.name)));
    }
    if !cs.running && !cs.done && !terminating && cs.restart_count > 0 && seen.back_off_at != Some(cs.restart_count) {
        seen.back_off_at = Some(cs.restart_count);
        out.push(Note::warning(
            "BackOff",
            format!("Back-off restarting failed container {} in pod {pod_ref}", cs.name),
        ));
    }
    if cs.pre_stop_error.is_some() && seen.pre_stop_failures_at != cs.stop_count {
        seen.pre_stop_failures_at = cs.stop_count;
        out.push(Note::warning("FailedPreStopHook", "PreStopHook failed".into()));
    }
    out
}
