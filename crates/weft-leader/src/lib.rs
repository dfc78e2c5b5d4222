//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's `leaderelection`
//! semantics: what must run once per cluster (LoadBalancer address allocation, the Ingress
//! status) runs in the one process that holds the Lease; when that process stops renewing, another
//! takes the Lease over once it has seen no renewal for the lease's duration, and runs the work.
//!
//! Written here because the crates that do this (`kube-leader-election`,
//! `kube-lease-manager`, `kube-coordinate`) are built against older `kube` majors than the 5
//! weft uses, and none of them fit.
//!
//! Expiry is judged as client-go judges it: by this process's own clock, from when it last saw
//! the Lease's record change, never by comparing the holder's `renewTime` with local time, so
//! clock skew between machines does not matter. Every write carries the `resourceVersion` it
//! read: of two candidates that both see an expired Lease, one write wins and the other gets a
//! conflict.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use serde_json::json;

/// How a candidate campaigns and renews (client-go's defaults).
#[derive(Clone, Debug)]
pub struct Config {
    pub namespace: String,
    /// The Lease's name: one per thing elected for.
    pub name: String,
    /// This candidate, unique among them (a node name and a pid, a pod name).
    pub identity: String,
    /// How long a Lease not renewed stays held (`leaseDurationSeconds`).
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives the work up.
    pub renew_deadline: Duration,
    /// How often candidates try to take the Lease and the leader renews it.
    pub retry_period: Duration,
}

impl Config {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Config {
        Config {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Refuses settings under which two leaders could overlap or a leader could not renew.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.identity.is_empty(), "leader election for Lease {}: an empty identity", self.name);
        anyhow::ensure!(
            self.lease_duration > self.renew_deadline && self.renew_deadline > self.retry_period,
            "leader election for Lease {}: want lease duration ({:?}) > renew deadline ({:?}) > retry period ({:?})",
            self.name,
            self.lease_duration,
            self.renew_deadline,
            self.retry_period
        );
        anyhow::ensure!(
            self.lease_duration.as_secs() >= 1,
            "leader election for Lease {}: the lease duration is whole seconds, at least 1",
            self.name
        );
        Ok(())
    }
}

/// Now as a MicroTime, as the API writes one (`2026-12-02T01:02:03.456789Z`).
pub fn micro_now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

/// What a candidate saw of the Lease, and when it saw it change.
struct Observed {
    /// (holder, resourceVersion) at the last change.
    record: (String, String),
    at: Instant,
    duration: Duration,
}

/// One candidate.
pub struct Elector {
    api: Api<Lease>,
    cfg: Config,
    observed: Option<Observed>,
}

impl Elector {
    pub fn new(client: kube::Client, cfg: Config) -> anyhow::Result<Elector> {
        cfg.check()?;
        Ok(Elector { api: Api::namespaced(client, &cfg.namespace), cfg, observed: None })
    }

    /// Takes the Lease (if it is free or expired) or renews it (if ours): true if this
    /// candidate holds it afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> anyhow::Result<bool> {
        let now = micro_now();
        let me = self.cfg.identity.clone();
        let Some(current) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.cfg.name, "namespace": self.cfg.namespace},
                "spec": {"holderIdentity": me, "leaseDurationSeconds": self.cfg.lease_duration.as_secs(),
                         "acquireTime": now, "renewTime": now, "leaseTransitions": 0},
            });
            return match self.api.create(&PostParams::default(), &serde_json::from_value(lease)?).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let rv = current.metadata.resource_version.clone().unwrap_or_default();
        let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
        let record = (holder.clone(), rv);
        if self.observed.as_ref().is_none_or(|o| o.record != record) {
            self.observed = Some(Observed { record, at: Instant::now(), duration });
        }
        let seen = self.observed.as_ref().expect("just set");
        let ours = holder == me;
        if !ours && !holder.is_empty() && seen.at.elapsed() < seen.duration {
            return Ok(false);
        }
        let mut next = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.cfg.name, "namespace": self.cfg.namespace,
                         "resourceVersion": current.metadata.resource_version},
            "spec": {"holderIdentity": me, "leaseDurationSeconds": self.cfg.lease_duration.as_secs(), "renewTime": now},
        });
        let transitions = spec.lease_transitions.unwrap_or(0);
        if ours {
            next["spec"]["acquireTime"] = json!(spec.acquire_time);
            next["spec"]["leaseTransitions"] = json!(transitions);
        } else {
            next["spec"]["acquireTime"] = json!(now);
            next["spec"]["leaseTransitions"] = json!(transitions + 1);
        }
        match self.api.replace(&self.cfg.name, &PostParams::default(), &serde_json::from_value(next)?).await {
            Ok(l) => {
                // Our own write is a change we saw now.
                let rv = l.metadata.resource_version.unwrap_or_default();
                self.observed = Some(Observed { record: (me, rv), at: Instant::now(), duration });
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the Lease up if this candidate holds it (client-go's `ReleaseOnCancel`): the next
    /// candidate takes it at its next try instead of after the lease's duration.
    pub async fn release(&mut self) -> anyhow::Result<()> {
        let Some(current) = self.api.get_opt(&self.cfg.name).await? else { return Ok(()) };
        let spec = current.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        let next = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.cfg.name, "namespace": self.cfg.namespace,
                         "resourceVersion": current.metadata.resource_version},
            "spec": {"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": micro_now(),
                     "acquireTime": spec.acquire_time, "leaseTransitions": spec.lease_transitions},
        });
        self.api.replace(&self.cfg.name, &PostParams::default(), &serde_json::from_value(next)?).await?;
        Ok(())
    }

    /// Campaigns until this candidate holds the Lease, then runs `work` while it holds it;
    /// when a renewal fails past the renew deadline (or another holds the Lease), `work` is
    /// stopped (its task aborted) and the campaign starts again. Never returns; drop the
    /// future to stop (the Lease then expires after its duration).
    pub async fn run<F, Fut>(mut self, work: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (name, me) = (self.cfg.name.clone(), self.cfg.identity.clone());
        loop {
            loop {
                match self.try_acquire_or_renew().await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(lease = %name, error = %e, "trying to take the lease"),
                }
                tokio::time::sleep(jittered(self.cfg.retry_period)).await;
            }
            tracing::info!(lease = %name, identity = %me, "became the leader");
            let task = AbortOnDrop(tokio::spawn(work()));
            let mut renewed = Instant::now();
            loop {
                tokio::time::sleep(self.cfg.retry_period).await;
                match self.try_acquire_or_renew().await {
                    Ok(true) => renewed = Instant::now(),
                    Ok(false) => break,
                    Err(e) => tracing::warn!(lease = %name, error = %e, "renewing the lease"),
                }
                if renewed.elapsed() > self.cfg.renew_deadline {
                    break;
                }
            }
            // Aborted and waited for: the work has ended before this candidate tries again.
            task.stop().await;
            tracing::warn!(lease = %name, identity = %me, "lost the lease: stopped its work");
        }
    }
}

/// The retry period plus up to 20% more, so candidates started together do not keep colliding.
fn jittered(d: Duration) -> Duration {
    d + d.mul_f64(rand::random::<f64>() * 0.2)
}

/// A task stopped when this is dropped (the work of a leader that lost its lease, or whose
/// election was dropped).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    /// Aborts the task and waits until it has ended.
    async fn stop(mut self) {
        self.0.abort();
        let _ = (&mut self.0).await;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_let_leaders_overlap_are_refused() {
        assert!(Config::new("ns", "l", "me").check().is_ok());
        let mut c = Config::new("ns", "l", "me");
        c.renew_deadline = c.lease_duration;
        assert!(c.check().unwrap_err().to_string().contains("lease duration"));
        let mut c = Config::new("ns", "l", "me");
        c.retry_period = c.renew_deadline;
        assert!(c.check().is_err());
        assert!(Config::new("ns", "l", "").check().unwrap_err().to_string().contains("empty identity"));
        let mut c = Config::new("ns", "l", "me");
        (c.lease_duration, c.renew_deadline, c.retry_period) =
            (Duration::from_millis(900), Duration::from_millis(500), Duration::from_millis(100));
        assert!(c.check().unwrap_err().to_string().contains("whole seconds"));
    }

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..100 {
            let j = jittered(Duration::from_secs(2));
            assert!(j >= Duration::from_secs(2) && j <= Duration::from_millis(2400), "{j:?}");
        }
    }
}
