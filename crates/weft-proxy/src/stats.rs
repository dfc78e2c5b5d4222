//! What the proxy says about its syncs, as kube-proxy says it: the `kubeproxy_*` metrics whose
//! meaning is the same in weft (sync durations, last sync and last queued change, changes seen,
//! failed syncs, Services with a Local policy and no local endpoint) plus weft's own counts of
//! what is programmed, and kube-proxy's `/healthz` and `/livez` answers (JSON, 503 once a change
//! has waited longer than the health timeout). Rendering and health are pure (the caller passes
//! the time), so they are tested without a clock.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// kube-proxy's sync duration buckets: 1 ms doubling 15 times (to 16.4 s).
const SYNC_BUCKETS: [f64; 15] =
    [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192, 16.384];

/// kube-proxy's health timeout: twice its default sync period of 30 s.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Default, Clone)]
struct Histogram {
    buckets: [u64; SYNC_BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        if let Some(i) = SYNC_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i] += 1;
        }
        self.sum += secs;
        self.count += 1;
    }
    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} [ALPHA] {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, n) in SYNC_BUCKETS.iter().zip(self.buckets) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            self.count, self.sum, self.count
        );
    }
}

/// What one pass programmed, for the gauges.
#[derive(Default, Clone, Copy, Debug, PartialEq)]
pub struct Programmed {
    /// Service ports with rules (ClusterIP, node port, external and LoadBalancer addresses).
    pub services: u64,
    /// Ready endpoints behind them.
    pub endpoints: u64,
    /// Services with internalTrafficPolicy Local and no endpoint on this node.
    pub no_local_internal: u64,
    /// Services with externalTrafficPolicy Local and no endpoint on this node.
    pub no_local_external: u64,
}

#[derive(Default)]
struct Inner {
    all: Histogram,
    full: Histogram,
    partial: Histogram,
    last_synced: Option<SystemTime>,
    last_queued: Option<SystemTime>,
    oldest_pending: Option<SystemTime>,
    service_changes: u64,
    endpoint_changes: u64,
    service_pending: u64,
    endpoint_pending: u64,
    failures: u64,
    programmed: Programmed,
    healthz: BTreeMap<u16, u64>,
    livez: BTreeMap<u16, u64>,
}

/// The proxy's sync statistics, shared between the sync loop and the HTTP endpoints.
#[derive(Clone, Default)]
pub struct Stats(Arc<Mutex<Inner>>);

impl Stats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A Service (`service`) or EndpointSlice change arrived that the next sync must program.
    pub fn queued(&self, service: bool, now: SystemTime) {
        let mut s = self.lock();
        if service {
            s.service_changes += 1;
            s.service_pending += 1;
        } else {
            s.endpoint_changes += 1;
            s.endpoint_pending += 1;
        }
        s.last_queued = Some(now);
        s.oldest_pending.get_or_insert(now);
    }

    /// A pass ended after `took`: `settled` when every node has all it can have (Services the
    /// kernel refused keep their last good rules, reported on the Node, and do not keep the
    /// proxy unhealthy), `failed` when anything was not applied.
    pub fn synced(
        &self,
        full: bool,
        took: Duration,
        settled: bool,
        failed: bool,
        programmed: Programmed,
        now: SystemTime,
    ) {
        let mut s = self.lock();
        let secs = took.as_secs_f64();
        s.all.observe(secs);
        if full {
            s.full.observe(secs)
        } else {
            s.partial.observe(secs)
        }
        s.programmed = programmed;
        if failed {
            s.failures += 1;
        }
        if settled {
            s.last_synced = Some(now);
            s.oldest_pending = None;
            s.service_pending = 0;
            s.endpoint_pending = 0;
        }
    }

    /// `/healthz` (with `node_eligible`: the Node exists, is not being deleted nor tainted
    /// `ToBeDeletedByClusterAutoscaler`) or `/livez` (`None`), as kube-proxy answers them:
    /// unhealthy once a queued change has waited `timeout` without a successful sync.
    /// kube-proxy counts a proxy that never synced as healthy whatever waits; weft does not.
    pub fn health(&self, now: SystemTime, timeout: Duration, node_eligible: Option<bool>) -> (u16, String) {
        let mut s = self.lock();
        let late = s.oldest_pending.is_some_and(|t| now.duration_since(t).unwrap_or_default() >= timeout);
        let healthy = !late && node_eligible.unwrap_or(true);
        let code = if healthy { 200 } else { 503 };
        *(if node_eligible.is_some() { &mut s.healthz } else { &mut s.livez }).entry(code).or_default() += 1;
        // As kube-proxy: a healthy answer's lastUpdated is now (older clients read it as "recent").
        let last = if healthy { Some(now) } else { s.last_synced };
        let mut body = serde_json::json!({
            "lastUpdated": rfc3339(last),
            "currentTime": rfc3339(Some(now)),
            "healthy": !late,
        });
        if let Some(e) = node_eligible {
            body["nodeEligible"] = e.into();
        }
        if s.last_synced.is_some() {
            body["status"] = serde_json::json!({"IPv4": {"lastUpdated": rfc3339(s.last_synced), "healthy": !late}});
        }
        (code, body.to_string())
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let s = self.lock();
        let mut out = String::new();
        s.all.render(&mut out, "kubeproxy_sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds");
        s.full.render(
            &mut out,
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
        );
        s.partial.render(
            &mut out,
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
        );
        let secs = |t: Option<SystemTime>| {
            t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map_or(0.0, |d| d.as_secs_f64())
        };
        let p = s.programmed;
        let gauges: [(&str, &str, &str, String); 7] = [
            (
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "gauge",
                "The last time proxy rules were successfully synced",
                secs(s.last_synced).to_string(),
            ),
            (
                "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                "gauge",
                "The last time a sync of proxy rules was queued",
                secs(s.last_queued).to_string(),
            ),
            (
                "kubeproxy_sync_proxy_rules_service_changes_total",
                "counter",
                "Cumulative proxy rules Service changes",
                s.service_changes.to_string(),
            ),
            (
                "kubeproxy_sync_proxy_rules_service_changes_pending",
                "gauge",
                "Pending proxy rules Service changes",
                s.service_pending.to_string(),
            ),
            (
                "kubeproxy_sync_proxy_rules_endpoint_changes_total",
                "counter",
                "Cumulative proxy rules Endpoint changes",
                s.endpoint_changes.to_string(),
            ),
            (
                "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                "gauge",
                "Pending proxy rules Endpoint changes",
                s.endpoint_pending.to_string(),
            ),
            (
                "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
                "counter",
                "Cumulative proxy nftables sync failures",
                s.failures.to_string(),
            ),
        ];
        for (name, kind, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} [ALPHA] {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        let name = "kubeproxy_sync_proxy_rules_no_local_endpoints_total";
        let _ = writeln!(
            out,
            "# HELP {name} [ALPHA] Number of services with a Local traffic policy and no endpoints\n# TYPE {name} gauge\n\
             {name}{{traffic_policy=\"internal\"}} {}\n{name}{{traffic_policy=\"external\"}} {}",
            p.no_local_internal, p.no_local_external
        );
        for (name, help, codes) in [
            ("kubeproxy_proxy_healthz_total", "Cumulative proxy healthz HTTP status", &s.healthz),
            ("kubeproxy_proxy_livez_total", "Cumulative proxy livez HTTP status", &s.livez),
        ] {
            let _ = writeln!(out, "# HELP {name} [ALPHA] {help}\n# TYPE {name} counter");
            for (code, n) in codes {
                let _ = writeln!(out, "{name}{{code=\"{code}\"}} {n}");
            }
        }
        // weft's own: kube-proxy's nftables mode has no count of what it programmed.
        for (name, help, v) in [
            ("weft_proxy_service_ports", "Service ports with rules in the last sync", p.services),
            ("weft_proxy_endpoints", "Ready endpoints behind them in the last sync", p.endpoints),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}

/// Go's `time.Time` in JSON (RFC 3339 with nanoseconds); the zero time for none.
fn rfc3339(t: Option<SystemTime>) -> String {
    t.and_then(|t| jiff::Timestamp::try_from(t).ok()).map_or_else(|| "0001-01-01T00:00:00Z".into(), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn json(body: &str) -> serde_json::Value {
        serde_json::from_str(body).expect("health is JSON")
    }

    #[test]
    fn healthy_until_a_change_waits_longer_than_the_timeout() {
        let s = Stats::default();
        let (code, body) = s.health(at(0), HEALTH_TIMEOUT, Some(true));
        assert_eq!(code, 200, "{body}");
        assert_eq!(json(&body)["nodeEligible"], true);
        assert!(json(&body).get("status").is_none(), "no proxier status before the first sync: {body}");
        s.queued(true, at(1));
        assert_eq!(s.health(at(60), HEALTH_TIMEOUT, Some(true)).0, 200, "59 s late is not late yet");
        let (code, body) = s.health(at(61), HEALTH_TIMEOUT, Some(true));
        assert_eq!(code, 503, "{body}");
        assert_eq!(json(&body)["healthy"], false);
        assert_eq!(json(&body)["lastUpdated"], "0001-01-01T00:00:00Z", "never synced: Go's zero time");
        // A failed sync does not make it healthy; a successful one does, and so does one where
        // only refused Services (kept at their last good rules) failed.
        s.synced(true, Duration::from_millis(3), false, true, Programmed::default(), at(62));
        assert_eq!(s.health(at(62), HEALTH_TIMEOUT, None).0, 503);
        s.synced(false, Duration::from_millis(3), true, true, Programmed::default(), at(63));
        let (code, body) = s.health(at(64), HEALTH_TIMEOUT, None);
        assert_eq!(code, 200, "{body}");
        let v = json(&body);
        assert_eq!(v["lastUpdated"], v["currentTime"], "a healthy answer says now, as kube-proxy");
        assert!(v.get("nodeEligible").is_none(), "/livez does not judge the node");
        assert_eq!(v["status"]["IPv4"]["healthy"], true);
        assert!(s.render().lines().any(|l| l == "kubeproxy_sync_proxy_rules_nftables_sync_failures_total 2"));
    }

    #[test]
    fn an_ineligible_node_fails_healthz_but_not_livez() {
        let s = Stats::default();
        assert_eq!(s.health(at(0), HEALTH_TIMEOUT, Some(false)).0, 503);
        assert_eq!(s.health(at(0), HEALTH_TIMEOUT, None).0, 200);
    }

    #[test]
    fn metrics_carry_kube_proxys_names_and_counts() {
        let s = Stats::default();
        s.queued(true, at(1));
        s.queued(false, at(2));
        s.queued(false, at(3));
        let p = Programmed { services: 4, endpoints: 9, no_local_internal: 1, no_local_external: 2 };
        s.synced(true, Duration::from_millis(5), true, false, p, at(4));
        s.synced(false, Duration::from_micros(500), false, true, p, at(5));
        s.health(at(5), HEALTH_TIMEOUT, Some(true));
        let m = s.render();
        for line in [
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.001\"} 1",
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.008\"} 2",
            "kubeproxy_sync_proxy_rules_duration_seconds_count 2",
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count 1",
            "kubeproxy_sync_partial_proxy_rules_duration_seconds_bucket{le=\"0.001\"} 1",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds 1700000004",
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds 1700000003",
            "kubeproxy_sync_proxy_rules_service_changes_total 1",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total 2",
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending 0",
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total 1",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"external\"} 2",
            "kubeproxy_proxy_healthz_total{code=\"200\"} 1",
            "weft_proxy_service_ports 4",
            "weft_proxy_endpoints 9",
        ] {
            assert!(m.lines().any(|l| l == line), "missing {line:?} in\n{m}");
        }
    }
}
