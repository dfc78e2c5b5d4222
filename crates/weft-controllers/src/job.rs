//! The Job controller (batch/v1, NonIndexed), as kube-controller-manager's (`pkg/controller/job`):
//! up to `parallelism` active pods until `completions` have succeeded (without completions: until
//! one has, and none is active), failures counted against `backoffLimit` (failed pods with
//! restartPolicy Never; container restarts too with OnFailure) with the exponential delay before
//! a replacement (10 s, doubling, at most 6 min), `activeDeadlineSeconds`, `suspend`; the
//! conditions FailureTarget then Failed (BackoffLimitExceeded, DeadlineExceeded) and
//! SuccessCriteriaMet then Complete once no pod is left running, and `ttlSecondsAfterFinished`
//! (the TTL-after-finished controller's job). Pods carry the labels the API server put on the
//! template (`batch.kubernetes.io/job-name`, `batch.kubernetes.io/controller-uid`, ...).
//! Succeeded and failed counts are the pods that show it, never fewer than the status already
//! says (the lab keeps finished pods; kube's tracking finalizers are not modelled).

use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::Ctx;
use crate::workload::{controller_ref, patch_status, pod_from_template, pods_of, rfc3339, set_condition};

#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    Active,
    Succeeded,
    Failed,
}

#[derive(Clone, Debug)]
pub struct JobPod {
    pub name: String,
    pub phase: Phase,
    pub terminating: bool,
    pub ready: bool,
    /// Container restarts (counted against backoffLimit with OnFailure).
    pub restarts: i32,
    /// When it finished (for the back-off delay).
    pub finished_at: Option<i64>,
}

#[derive(Clone, Debug, Default)]
pub struct JobView {
    pub completions: Option<i32>,
    pub parallelism: i32,
    pub backoff_limit: i32,
    pub active_deadline_seconds: Option<i64>,
    pub start_time: Option<i64>,
    pub on_failure: bool,
    pub suspended: bool,
    /// Succeeded and failed as the status already says.
    pub prior_succeeded: i32,
    pub prior_failed: i32,
    /// A FailureTarget or SuccessCriteriaMet condition (or Failed/Complete) is already set.
    pub failure_target: Option<(String, String)>,
    pub success_met: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobPlan {
    pub create: usize,
    pub delete: Vec<String>,
    pub active: i32,
    pub ready: i32,
    pub terminating: i32,
    pub succeeded: i32,
    pub failed: i32,
    /// (reason, message) of a failure decided now or before.
    pub failure: Option<(String, String)>,
    pub success: bool,
    /// The terminal condition can be written: no pod is left running.
    pub terminal: bool,
    /// A replacement waits for its back-off until then (seconds).
    pub wait_until: Option<i64>,
}

/// The back-off before the next pod after `failures` failures: 10 s doubling, at most 360 s.
pub fn backoff(failures: i32) -> i64 {
    if failures <= 0 {
        return 0;
    }
    let exp = (failures - 1).min(6) as u32;
    (10i64 << exp).min(360)
}

pub fn plan(j: &JobView, pods: &[JobPod], now: i64) -> JobPlan {
    let mut out = JobPlan::default();
    let count = |ph: Phase| pods.iter().filter(|p| p.phase == ph).count() as i32;
    out.succeeded = count(Phase::Succeeded).max(j.prior_succeeded);
    out.failed = count(Phase::Failed).max(j.prior_failed);
    let active: Vec<&JobPod> = pods.iter().filter(|p| p.phase == Phase::Active && !p.terminating).collect();
    out.active = active.len() as i32;
    out.ready = active.iter().filter(|p| p.ready).count() as i32;
    out.terminating = pods.iter().filter(|p| p.terminating && p.phase == Phase::Active).count() as i32;
    // Failure first (kube checks it before success).
    out.failure = j.failure_target.clone();
    if out.failure.is_none() && !j.success_met {
        let restarts: i32 = if j.on_failure { active.iter().map(|p| p.restarts).sum() } else { 0 };
        let over = if j.on_failure {
            let r = restarts + out.failed;
            if j.backoff_limit == 0 { r > 0 } else { r >= j.backoff_limit && r > 0 }
        } else {
            out.failed > j.backoff_limit
        };
        if over {
            out.failure = Some(("BackoffLimitExceeded".into(), "Job has reached the specified backoff limit".into()));
        } else if let (Some(ads), Some(start)) = (j.active_deadline_seconds, j.start_time)
            && !j.suspended
            && start.saturating_add(ads) <= now
        {
            out.failure = Some(("DeadlineExceeded".into(), "Job was active longer than specified deadline".into()));
        }
    }
    out.success = out.failure.is_none()
        && (j.success_met
            || match j.completions {
                Some(c) => out.succeeded >= c,
                None => out.succeeded > 0 && active.is_empty(),
            });
    if out.failure.is_some() || out.success || j.suspended {
        out.delete = active.iter().map(|p| p.name.clone()).collect();
        out.terminal = active.is_empty() && out.terminating == 0;
        return out;
    }
    let want = match j.completions {
        Some(c) => j.parallelism.min(c - out.succeeded).max(0),
        None if out.succeeded > 0 => 0,
        None => j.parallelism.max(0),
    };
    if out.active > want {
        // The ones not ready go first.
        let mut extra: Vec<&&JobPod> = active.iter().collect();
        extra.sort_by_key(|p| (p.ready, p.name.clone()));
        out.delete = extra.iter().take((out.active - want) as usize).map(|p| p.name.clone()).collect();
    } else if out.active < want {
        let last_failure = pods.iter().filter(|p| p.phase == Phase::Failed).filter_map(|p| p.finished_at).max();
        let until = last_failure.map(|t| t + backoff(out.failed));
        match until {
            Some(u) if u > now => out.wait_until = Some(u),
            _ => out.create = (want - out.active) as usize,
        }
    }
    out
}

fn pod_view(p: &Pod) -> JobPod {
    let status = p.status.clone().unwrap_or_default();
    let phase = match status.phase.as_deref() {
        Some("Succeeded") => Phase::Succeeded,
        Some("Failed") => Phase::Failed,
        _ => Phase::Active,
    };
    let finished_at = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref().map(|t| t.0.as_second()))
        .max()
        .or_else(|| {
            status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "Ready")
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0.as_second())
        });
    JobPod {
        name: p.name_any(),
        phase,
        terminating: p.metadata.deletion_timestamp.is_some(),
        ready: weft_k8s::pods::is_ready(p),
        restarts: status.container_statuses.iter().flatten().map(|c| c.restart_count).sum(),
        finished_at,
    }
}

fn has_condition(conds: &[Value], ty: &str) -> Option<Value> {
    conds.iter().find(|c| c["type"] == ty && c["status"] == "True").cloned()
}

/// One pass over every Job.
pub(crate) async fn reconcile(ctx: &mut Ctx) -> anyhow::Result<()> {
    let pods = ctx.pods.state();
    for job in ctx.jobs.state() {
        if job.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Err(e) = one(ctx, &job, &pods).await {
            tracing::warn!(job = %format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any()), error = %e, "job");
        }
    }
    Ok(())
}

async fn one(ctx: &Ctx, job: &Job, pods: &[Arc<Pod>]) -> anyhow::Result<()> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let Some(spec) = job.spec.clone() else { return Ok(()) };
    let status = job.status.clone().unwrap_or_default();
    let mut conds: Vec<Value> =
        status.conditions.iter().flatten().filter_map(|c| serde_json::to_value(c).ok()).collect();
    let now = Timestamp::now();
    let now_s = rfc3339(now);
    let finished = has_condition(&conds, "Complete").or_else(|| has_condition(&conds, "Failed"));
    if let Some(done) = &finished {
        // The TTL-after-finished controller: the job goes (its pods with it) once its time is up.
        if let Some(ttl) = spec.ttl_seconds_after_finished
            && let Some(at) = done["lastTransitionTime"].as_str().and_then(|t| t.parse::<Timestamp>().ok())
            && at.as_second() + i64::from(ttl) <= now.as_second()
        {
            let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let view = JobView {
        completions: spec.completions,
        parallelism: spec.parallelism.unwrap_or(1),
        backoff_limit: spec.backoff_limit.unwrap_or(6),
        active_deadline_seconds: spec.active_deadline_seconds,
        start_time: status.start_time.as_ref().map(|t| t.0.as_second()),
        on_failure: spec.template.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) == Some("OnFailure"),
        suspended: spec.suspend == Some(true),
        prior_succeeded: status.succeeded.unwrap_or(0),
        prior_failed: status.failed.unwrap_or(0),
        failure_target: has_condition(&conds, "FailureTarget")
            .or_else(|| has_condition(&conds, "Failed"))
            .map(|c| (c["reason"].as_str().unwrap_or("").to_string(), c["message"].as_str().unwrap_or("").to_string())),
        success_met: has_condition(&conds, "SuccessCriteriaMet").is_some()
            || has_condition(&conds, "Complete").is_some(),
    };
    let mine = pods_of(pods, &uid);
    let pod_views: Vec<JobPod> = mine.iter().map(|p| pod_view(p)).collect();
    let step = plan(&view, &pod_views, now.as_second());
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let events = &ctx.events.job;
    for _ in 0..step.create {
        let mut pod =
            pod_from_template(&spec.template, controller_ref("batch/v1", "Job", &name, &uid), &Default::default());
        pod.metadata.generate_name = Some(format!("{name}-"));
        match api.create(&PostParams::default(), &pod).await {
            Ok(made) => events.normal(
                job.object_ref(&()),
                "SuccessfulCreate",
                "Create",
                format!("Created pod: {}", made.name_any()),
            ),
            Err(e) => {
                events.warning(job.object_ref(&()), "FailedCreate", "Create", format!("Error creating: {e}"));
                return Err(e.into());
            }
        }
    }
    for victim in &step.delete {
        match api.delete(victim, &DeleteParams::default()).await {
            Ok(_) => events.normal(job.object_ref(&()), "SuccessfulDelete", "Delete", format!("Deleted pod: {victim}")),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => tracing::debug!(pod = %victim, error = %e, "job pod delete"),
        }
    }
    let cond = |ty: &str, reason: &str, message: &str| json!({"type": ty, "status": "True", "reason": reason, "message": message, "lastProbeTime": now_s});
    let mut completion_time = status.completion_time.as_ref().map(|t| rfc3339(t.0));
    if let Some((reason, message)) = &step.failure {
        if has_condition(&conds, "FailureTarget").is_none() {
            set_condition(&mut conds, cond("FailureTarget", reason, message), &now_s);
        }
        if step.terminal && has_condition(&conds, "Failed").is_none() {
            set_condition(&mut conds, cond("Failed", reason, message), &now_s);
            events.warning(job.object_ref(&()), reason, "Fail", message.clone());
        }
    } else if step.success {
        let (reason, message) = ("CompletionsReached", "Reached expected number of succeeded pods");
        if has_condition(&conds, "SuccessCriteriaMet").is_none() {
            set_condition(&mut conds, cond("SuccessCriteriaMet", reason, message), &now_s);
        }
        if step.terminal && has_condition(&conds, "Complete").is_none() {
            set_condition(&mut conds, cond("Complete", reason, message), &now_s);
            completion_time.get_or_insert(now_s.clone());
            events.normal(job.object_ref(&()), "Completed", "Complete", "Job completed".into());
        }
    }
    let start = status.start_time.as_ref().map(|t| rfc3339(t.0)).or((!view.suspended).then(|| now_s.clone()));
    let new_status = json!({
        "active": step.active,
        "ready": step.ready,
        "terminating": step.terminating,
        "succeeded": step.succeeded,
        "failed": step.failed,
        "startTime": start,
        "completionTime": completion_time,
        "conditions": conds,
        "uncountedTerminatedPods": {},
    });
    let current = job.status.as_ref().and_then(|s| serde_json::to_value(s).ok());
    patch_status(&ctx.client, ("batch", "v1", "Job"), &ns, &name, current.as_ref(), new_status).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jp(name: &str, phase: Phase, finished_at: Option<i64>) -> JobPod {
        JobPod { name: name.into(), phase, terminating: false, ready: false, restarts: 0, finished_at }
    }
    fn view(completions: Option<i32>, parallelism: i32, backoff_limit: i32) -> JobView {
        JobView { completions, parallelism, backoff_limit, start_time: Some(0), ..Default::default() }
    }

    #[test]
    fn completions_with_parallelism() {
        let v = view(Some(3), 2, 6);
        assert_eq!(plan(&v, &[], 0).create, 2);
        let pods = [jp("a", Phase::Succeeded, Some(1)), jp("b", Phase::Active, None)];
        // One left to start (3 - 1 succeeded = 2 wanted, 1 active).
        assert_eq!(plan(&v, &pods, 5).create, 1);
        let pods =
            [jp("a", Phase::Succeeded, Some(1)), jp("b", Phase::Succeeded, Some(2)), jp("c", Phase::Active, None)];
        let p = plan(&v, &pods, 5);
        assert_eq!((p.create, p.success), (0, false));
        let pods = [
            jp("a", Phase::Succeeded, Some(1)),
            jp("b", Phase::Succeeded, Some(2)),
            jp("c", Phase::Succeeded, Some(3)),
        ];
        let p = plan(&v, &pods, 5);
        assert!(p.success && p.terminal);
        assert_eq!(p.succeeded, 3);
    }

    #[test]
    fn failures_back_off_and_exhaust_the_limit() {
        let v = view(Some(1), 1, 2);
        let one = [jp("a", Phase::Failed, Some(100))];
        let p = plan(&v, &one, 105);
        assert_eq!((p.create, p.wait_until), (0, Some(110)), "10 s after the first failure");
        assert_eq!(plan(&v, &one, 110).create, 1);
        let two = [jp("a", Phase::Failed, Some(100)), jp("b", Phase::Failed, Some(120))];
        assert_eq!(plan(&v, &two, 125).wait_until, Some(140), "20 s after the second");
        let three =
            [jp("a", Phase::Failed, Some(100)), jp("b", Phase::Failed, Some(120)), jp("c", Phase::Failed, Some(150))];
        let p = plan(&v, &three, 151);
        assert_eq!(p.failure.as_ref().map(|f| f.0.as_str()), Some("BackoffLimitExceeded"));
        assert!(p.terminal);
        assert_eq!(p.failed, 3);
        assert_eq!(backoff(10), 360);
    }

    #[test]
    fn on_failure_counts_restarts_and_deadline_fails_the_job() {
        let mut v = view(Some(1), 1, 2);
        v.on_failure = true;
        let mut running = jp("a", Phase::Active, None);
        running.restarts = 2;
        let p = plan(&v, &[running.clone()], 10);
        assert_eq!(p.failure.as_ref().map(|f| f.0.as_str()), Some("BackoffLimitExceeded"));
        assert_eq!(p.delete, ["a"]);
        assert!(!p.terminal, "Failed waits for the pod to go");
        let mut v = view(Some(1), 1, 6);
        v.active_deadline_seconds = Some(30);
        let p = plan(&v, &[jp("a", Phase::Active, None)], 31);
        assert_eq!(p.failure.as_ref().map(|f| f.0.as_str()), Some("DeadlineExceeded"));
        // Any i64 from the spec: a deadline past the end of time never comes (and never overflows).
        v.active_deadline_seconds = Some(i64::MAX);
        v.start_time = Some(1_800_000_000);
        assert_eq!(plan(&v, &[jp("a", Phase::Active, None)], 1_800_000_031).failure, None);
    }

    #[test]
    fn without_completions_one_success_finishes_once_the_rest_are_done() {
        let v = view(None, 3, 6);
        assert_eq!(plan(&v, &[], 0).create, 3);
        let pods = [jp("a", Phase::Succeeded, Some(1)), jp("b", Phase::Active, None)];
        let p = plan(&v, &pods, 2);
        assert!(!p.success && p.create == 0, "no new pods after a success");
        let pods = [jp("a", Phase::Succeeded, Some(1)), jp("b", Phase::Succeeded, Some(2))];
        assert!(plan(&v, &pods, 3).success);
    }
}
