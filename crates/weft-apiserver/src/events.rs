//! Events kept as kube-apiserver keeps them: bounded in time and in number.
//!
//! - **TTL.** An Event is deleted a TTL after its last write (kube-apiserver's `--event-ttl`,
//!   1 h by default, which etcd applies as a lease renewed by every write). The TTL is
//!   `eventTTL` in the ConfigMap `kube-system/weft-config`, a Go duration (`30s`, `1h30m`), read
//!   at every sweep, so a lab (or a test) can change it while it runs.
//! - **Number.** At most [`MAX_PER_NAMESPACE`] Events per namespace and [`MAX_TOTAL`] in all;
//!   past that, the ones written longest ago go first, right after the write that went over
//!   (kube-apiserver has no such bound and relies on clients' rate limits and the TTL; here a
//!   flood cannot fill the store whatever the clients do).
//!
//! The sweeper follows the store's watch for the time of each Event's last write; Events that
//! were there when it started count from the newest time they name (series, lastTimestamp,
//! eventTime, creation). Deletions are conditional on the resourceVersion seen, so an Event
//! updated meanwhile lives on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::Value;
use tokio::sync::broadcast::error::TryRecvError;
use weft_store::{EventType, Key};

use crate::rest::{Api, Target, WriteOpts};
use crate::status::ApiError;

/// kube-apiserver's default `--event-ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// The key of `kube-system/weft-config` that sets the TTL.
pub const TTL_KEY: &str = "eventTTL";
/// Events kept per namespace at most.
pub const MAX_PER_NAMESPACE: usize = 1000;
/// Events kept in all at most.
pub const MAX_TOTAL: usize = 10_000;
/// The store's resource key of Events (both groups' share it).
const RESOURCE: &str = "events";
/// How often expired Events are looked for.
const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// A Go duration (`time.ParseDuration`): `1h`, `90s`, `1h30m`, `250ms`; at least one unit.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * secs;
    }
    (total.is_finite() && total < 1e12).then(|| Duration::from_secs_f64(total))
}

/// The newest time an Event names (for Events the sweeper did not see written).
fn named_time(o: &Value) -> Option<Timestamp> {
    ["/series/lastObservedTime", "/lastTimestamp", "/eventTime", "/metadata/creationTimestamp"]
        .iter()
        .filter_map(|p| o.pointer(p)?.as_str()?.parse::<Timestamp>().ok())
        .max()
}

fn rv_of(o: &Value) -> Option<u64> {
    o.pointer("/metadata/resourceVersion")?.as_str()?.parse().ok()
}

/// An Event's (namespace, name).
type Name = (String, String);
/// When an Event was last written, and its resourceVersion then.
type Seen = (Timestamp, u64);

/// The Events the sweeper knows.
#[derive(Default)]
struct Known {
    events: HashMap<Name, Seen>,
    per_namespace: HashMap<String, usize>,
}

impl Known {
    fn put(&mut self, ns: &str, name: &str, at: Timestamp, rv: u64) {
        if self.events.insert((ns.to_string(), name.to_string()), (at, rv)).is_none() {
            *self.per_namespace.entry(ns.to_string()).or_default() += 1;
        }
    }

    fn remove(&mut self, ns: &str, name: &str) {
        if self.events.remove(&(ns.to_string(), name.to_string())).is_some()
            && let Some(n) = self.per_namespace.get_mut(ns)
        {
            *n -= 1;
            if *n == 0 {
                self.per_namespace.remove(ns);
            }
        }
    }

    /// What to delete to bring every namespace, and the whole, within the bounds: the oldest
    /// writes first.
    fn over_bounds(&self, per_namespace: usize, total: usize) -> Vec<(Name, u64)> {
        let mut out: Vec<(Name, u64)> = vec![];
        let by_age = |ns: Option<&str>| {
            let mut v: Vec<(&Name, &Seen)> =
                self.events.iter().filter(|(k, _)| ns.is_none_or(|ns| k.0 == ns)).collect();
            v.sort_by(|a, b| a.1.0.cmp(&b.1.0).then(a.0.cmp(b.0)));
            v
        };
        for (ns, n) in &self.per_namespace {
            if *n > per_namespace {
                out.extend(by_age(Some(ns)).into_iter().take(n - per_namespace).map(|(k, (_, rv))| (k.clone(), *rv)));
            }
        }
        let left = self.events.len() - out.len();
        if left > total {
            let chosen: std::collections::HashSet<Name> = out.iter().map(|(k, _)| k.clone()).collect();
            out.extend(
                by_age(None)
                    .into_iter()
                    .filter(|(k, _)| !chosen.contains(*k))
                    .take(left - total)
                    .map(|(k, (_, rv))| (k.clone(), *rv)),
            );
        }
        out
    }

    fn expired(&self, now: Timestamp, ttl: Duration) -> Vec<(Name, u64)> {
        let ttl = jiff::SignedDuration::try_from(ttl).unwrap_or(jiff::SignedDuration::MAX);
        self.events
            .iter()
            .filter(|(_, (at, _))| at.checked_add(ttl).is_ok_and(|end| end <= now))
            .map(|(k, (_, rv))| (k.clone(), *rv))
            .collect()
    }
}

impl Api {
    /// A create through events.k8s.io/v1: the new API's fields checked as kube-apiserver's
    /// `ValidateEventCreate` does, then the create every kind goes through.
    pub async fn create_event_v1(&self, t: &Target, body: &[u8], o: WriteOpts) -> Result<Value, ApiError> {
        // A body that is not JSON gets the create's own answer.
        if let Ok(v) = serde_json::from_slice::<Value>(body)
            && v.is_object()
        {
            let errs = weft_api::convert::check_events_v1_create(&v);
            if !errs.is_empty() {
                let name = v.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("");
                return Err(ApiError::invalid("Event", name, &errs));
            }
        }
        self.create(t, body, o).await
    }

    /// The Event TTL `kube-system/weft-config` sets now ([`DEFAULT_TTL`] when it sets none, or
    /// nothing valid).
    pub fn event_ttl(&self) -> Duration {
        use weft_k8s::config::{NAME, NAMESPACE};
        let cm = self.store.get(&Key::new("configmaps", NAMESPACE, NAME));
        cm.as_ref()
            .and_then(|c| c.get("data")?.get(TTL_KEY)?.as_str().map(String::from))
            .and_then(|s| parse_go_duration(&s))
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_TTL)
    }

    /// Deletes the given Events, each only if it is still at the resourceVersion seen; all at
    /// once, so the store commits them together.
    async fn delete_events(&self, which: Vec<(Name, u64)>) {
        for chunk in which.chunks(512) {
            let deletes =
                chunk.iter().map(|((ns, name), rv)| self.store.delete(Key::new(RESOURCE, ns, name), Some(*rv)));
            futures::future::join_all(deletes).await;
        }
    }

    /// Keeps Events within their TTL and bounds ([`MAX_PER_NAMESPACE`], [`MAX_TOTAL`]) until
    /// the store closes.
    pub async fn keep_events_bounded(self: Arc<Self>) {
        self.keep_events_within(MAX_PER_NAMESPACE, MAX_TOTAL).await
    }

    async fn keep_events_within(self: Arc<Self>, per_namespace: usize, total: usize) {
        // Each pass: what is there now, then its changes; a watcher that fell behind starts over.
        loop {
            let mut known = Known::default();
            let (items, rev) = self.store.list(RESOURCE, None);
            let now = Timestamp::now();
            for o in items {
                let (ns, name) = (
                    o.pointer("/metadata/namespace").and_then(|v| v.as_str()).unwrap_or(""),
                    o.pointer("/metadata/name").and_then(|v| v.as_str()).unwrap_or(""),
                );
                known.put(ns, name, named_time(&o).unwrap_or(now).min(now), rv_of(&o).unwrap_or(0));
            }
            let Ok(watch) = self.store.watch(rev) else { return };
            let mut live = watch.live;
            let mut last = rev;
            let mut apply = |known: &mut Known, e: &weft_store::Event| {
                if e.rev <= last {
                    return;
                }
                last = e.rev;
                if e.key.resource != RESOURCE {
                    return;
                }
                match e.kind {
                    EventType::Deleted => known.remove(&e.key.namespace, &e.key.name),
                    _ => known.put(&e.key.namespace, &e.key.name, Timestamp::now(), e.rev),
                }
            };
            for e in &watch.backlog {
                apply(&mut known, e);
            }
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            let lagged = loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let expired = known.expired(Timestamp::now(), self.event_ttl());
                        if !expired.is_empty() {
                            tracing::debug!(count = expired.len(), "deleting expired Events");
                            self.delete_events(expired).await;
                        }
                    }
                    e = live.recv() => {
                        let mut e = match e {
                            Ok(e) => Some(e),
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break true,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => break false,
                        };
                        // Everything that is waiting, then the bounds once.
                        let mut lagged = false;
                        while let Some(ev) = e.take() {
                            apply(&mut known, &ev);
                            match live.try_recv() {
                                Ok(next) => e = Some(next),
                                Err(TryRecvError::Lagged(_)) => lagged = true,
                                Err(_) => {}
                            }
                        }
                        if lagged {
                            break true;
                        }
                        let over = known.over_bounds(per_namespace, total);
                        if !over.is_empty() {
                            tracing::debug!(count = over.len(), "deleting the oldest Events over the bounds");
                            self.delete_events(over).await;
                        }
                    }
                }
            };
            if !lagged {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        for (s, want) in [("1h", 3600.0), ("90s", 90.0), ("1h30m", 5400.0), ("250ms", 0.25), ("1.5s", 1.5), ("0", 0.0)]
        {
            assert_eq!(parse_go_duration(s), Some(Duration::from_secs_f64(want)), "{s}");
        }
        for bad in ["", "5", "h", "5x", "-1s", "1e400h"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_oldest_writes_go_first_past_the_bounds() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut k = Known::default();
        for i in 0..5 {
            k.put("a", &format!("e{i}"), t0 + jiff::SignedDuration::from_secs(i), i as u64);
        }
        k.put("b", "x", t0, 100);
        let names = |v: Vec<(Name, u64)>| {
            let mut n: Vec<String> = v.into_iter().map(|((ns, n), _)| format!("{ns}/{n}")).collect();
            n.sort();
            n
        };
        assert!(k.over_bounds(5, 6).is_empty());
        assert_eq!(names(k.over_bounds(3, 100)), vec!["a/e0", "a/e1"]);
        // The whole bound takes the oldest of all: b/x and a/e0 are as old; then a/e1.
        assert_eq!(names(k.over_bounds(100, 3)), vec!["a/e0", "a/e1", "b/x"]);
        assert_eq!(names(k.over_bounds(4, 4)), vec!["a/e0", "b/x"]);
        k.remove("a", "e0");
        k.remove("a", "nothing");
        assert_eq!(k.per_namespace["a"], 4);
        let expired = k.expired(t0 + jiff::SignedDuration::from_secs(62), Duration::from_secs(60));
        assert_eq!(names(expired), vec!["a/e1", "a/e2", "b/x"]);
    }

    #[test]
    fn named_time_is_the_newest_the_event_names() {
        let o = serde_json::json!({"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"},
            "eventTime": "2026-01-01T00:00:01.5Z", "series": {"lastObservedTime": "2026-01-01T00:05:00.000001Z"}});
        assert_eq!(named_time(&o), Some("2026-01-01T00:05:00.000001Z".parse().unwrap()));
        assert_eq!(named_time(&serde_json::json!({})), None);
    }
}
