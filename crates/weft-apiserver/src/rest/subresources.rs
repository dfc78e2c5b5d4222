//! Subresources beyond status: `scale` (a workload's replica count, through its kind's own
//! admission) and `log` (a container's log, read through [`PodLogs`]).
//!
//! [`PodLogs`]: crate::pod_logs::PodLogs

use serde_json::{Value, json};
use weft_api::kinds::Kind;
use weft_api::{FieldError, objects};

use super::{Api, Query, Target, WriteOpts, obj_name, rv_of, store_key};
use crate::pod_logs::{self, LogOptions, LogStream, PodRef, read_all};
use crate::status::ApiError;

impl Api {
    /// A pod's container log as a stream (`kubectl logs`, `-f` included), from whatever runs
    /// the pod, with the options of kube-apiserver's `PodLogOptions` checked first.
    pub fn pod_log(&self, t: &Target, q: &Query) -> Result<Box<dyn LogStream>, ApiError> {
        let name = t.name.as_deref().unwrap_or("");
        let ns = t.namespace.as_deref().unwrap_or("");
        let pod =
            self.store.get(&store_key(t.kind, ns, name)).ok_or_else(|| ApiError::not_found(t.kind.plural, name))?;
        self.open_log(&pod, q)
    }

    /// A container's log as text, what it holds now (a `follow` is not followed).
    pub(super) fn log(&self, pod: &Value, q: &Query) -> Result<String, ApiError> {
        let mut q = q.clone();
        q.remove("follow");
        let s = self.open_log(pod, &q)?;
        let bytes = read_all(s, MAX_LOG_TEXT).map_err(|e| ApiError::internal(format!("reading a log: {e}")))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn open_log(&self, pod: &Value, q: &Query) -> Result<Box<dyn LogStream>, ApiError> {
        let name = obj_name(pod);
        let uid = pod.pointer("/metadata/uid").and_then(|u| u.as_str()).unwrap_or("");
        let names = |list: &str| -> Vec<&str> {
            pod.pointer(list)
                .and_then(|c| c.as_array())
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("name").and_then(|n| n.as_str()))
                .collect()
        };
        let (containers, inits) = (names("/spec/containers"), names("/spec/initContainers"));
        let c = match q.get("container").filter(|c| !c.is_empty()) {
            Some(c) if containers.contains(&c.as_str()) || inits.contains(&c.as_str()) => c.clone(),
            Some(c) => return Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}"))),
            None if containers.len() == 1 => containers[0].to_string(),
            None if inits.is_empty() => {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    containers.join(" ")
                )));
            }
            None => {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}] or one of the init containers: [{}]",
                    containers.join(" "),
                    inits.join(" ")
                )));
            }
        };
        let opts = log_options(q, &name, jiff::Timestamp::now())?;
        let namespace = pod.pointer("/metadata/namespace").and_then(|n| n.as_str()).unwrap_or("");
        let at = PodRef { namespace, name: &name, uid };
        let s = self.pod_logs.open(at, &c, &opts).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ApiError::new(404, "NotFound", e.to_string()),
            std::io::ErrorKind::InvalidInput => ApiError::bad_request(e.to_string()),
            _ => ApiError::internal(format!("reading the log of container {c} of pod {namespace}/{name}: {e}")),
        })?;
        Ok(pod_logs::limit(s, opts.limit_bytes))
    }

    /// The scale subresource: the new count goes through the kind's own admission, as any
    /// other change to it does.
    pub(super) async fn scale(
        &self,
        t: &Target,
        replicas: i64,
        want_rv: Option<u64>,
        o: WriteOpts,
    ) -> Result<Value, ApiError> {
        let kind = t.kind;
        let name = t.name.clone().unwrap_or_default();
        let ns = t.namespace.clone().unwrap_or_default();
        if !(0..=i32::MAX as i64).contains(&replicas) {
            return Err(ApiError::invalid(
                "Scale",
                &name,
                &[FieldError::invalid(
                    "spec.replicas",
                    replicas,
                    "must be greater than or equal to 0 and at most 2147483647",
                )],
            ));
        }
        let current =
            self.store.get(&store_key(kind, &ns, &name)).ok_or_else(|| ApiError::not_found(kind.plural, &name))?;
        let mut next = (*current).clone();
        next["spec"]["replicas"] = json!(replicas);
        let mut next = objects::admit(kind.storage(), &next)?;
        self.track_update(kind.storage(), Some(&*current), None, &mut next, Some("scale"))?;
        if current.get("spec") != next.get("spec") {
            let g = current.pointer("/metadata/generation").and_then(|g| g.as_i64()).unwrap_or(1);
            next["metadata"]["generation"] = json!(g + 1);
        }
        if o.dry_run {
            return Ok(scale_of(kind, &next));
        }
        let rv = want_rv.or(rv_of(&current));
        let o = self
            .store
            .update(store_key(kind, &ns, &name), next, rv)
            .await
            .map_err(|e| ApiError::from_store(e, kind.plural, &name))?;
        Ok(scale_of(kind, &o))
    }
}

/// `spec.replicas` of a Scale body: required, a whole number.
pub(super) fn scale_replicas(v: &Value, name: &str) -> Result<i64, ApiError> {
    match v.pointer("/spec/replicas") {
        Some(r) => r.as_i64().ok_or_else(|| {
            ApiError::invalid("Scale", name, &[FieldError::invalid("spec.replicas", r, "must be a whole number")])
        }),
        None => Err(ApiError::invalid(
            "Scale",
            name,
            &[FieldError::required("spec.replicas", "a Scale sets spec.replicas: send {\"spec\": {\"replicas\": N}}")],
        )),
    }
}

/// The `autoscaling/v1` Scale view of a workload.
pub(super) fn scale_of(kind: &Kind, o: &Value) -> Value {
    let selector = match kind.kind {
        "ReplicationController" => weft_api::table::labels_string(o.pointer("/spec/selector")),
        _ => weft_api::table::labels_string(o.pointer("/spec/selector/matchLabels")),
    };
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": o.pointer("/metadata/name"), "namespace": o.pointer("/metadata/namespace"),
            "uid": o.pointer("/metadata/uid"), "resourceVersion": o.pointer("/metadata/resourceVersion"),
            "creationTimestamp": o.pointer("/metadata/creationTimestamp"),
        },
        "spec": {"replicas": o.pointer("/spec/replicas").and_then(|r| r.as_i64()).unwrap_or(0)},
        "status": {"replicas": o.pointer("/status/replicas").and_then(|r| r.as_i64()).unwrap_or(0), "selector": selector},
    })
}

/// A log read whole into a response (a `get` of the log) holds at most this much.
const MAX_LOG_TEXT: usize = 64 << 20;

/// A boolean query parameter as Go's `strconv.ParseBool` reads it (a bad one is kube-apiserver's 400).
fn query_bool(q: &Query, key: &str) -> Result<bool, ApiError> {
    match q.get(key).map(|s| s.as_str()) {
        None | Some("") => Ok(false),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(v) => Err(ApiError::bad_request(format!("strconv.ParseBool: parsing {v:?}: invalid syntax"))),
    }
}

fn query_int(q: &Query, key: &str) -> Result<Option<i64>, ApiError> {
    match q.get(key).map(|s| s.as_str()) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse::<i64>()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("strconv.ParseInt: parsing {v:?}: invalid syntax"))),
    }
}

/// Go's `time.Parse(time.RFC3339, s)` error for a `sinceTime` that is not RFC 3339, as
/// kube-apiserver sends it: `parsing time "x" as "2006-01-02T15:04:05Z07:00": cannot parse "x" as "2006"`.
fn rfc3339_error(s: &str) -> String {
    const LAYOUT: &str = "2006-01-02T15:04:05Z07:00";
    // The layout's elements: digits of a width, or literal text.
    let elems: [(&str, usize); 11] = [
        ("2006", 4),
        ("-", 0),
        ("01", 2),
        ("-", 0),
        ("02", 2),
        ("T", 0),
        ("15", 2),
        (":", 0),
        ("04", 2),
        (":", 0),
        ("05", 2),
    ];
    let mut rest = s;
    for (elem, digits) in elems {
        let ok = if digits > 0 {
            rest.len() >= digits && rest.as_bytes()[..digits].iter().all(|b| b.is_ascii_digit())
        } else {
            rest.starts_with(elem)
        };
        if !ok {
            return format!("parsing time {s:?} as {LAYOUT:?}: cannot parse {rest:?} as {elem:?}");
        }
        rest = &rest[if digits > 0 { digits } else { elem.len() }..];
    }
    // Seconds may have a fraction; then the zone.
    if let Some(f) = rest.strip_prefix('.') {
        rest = f.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    if rest.is_empty() || !(rest == "Z" || rest.starts_with('+') || rest.starts_with('-')) {
        return format!("parsing time {s:?} as {LAYOUT:?}: cannot parse {rest:?} as \"Z07:00\"");
    }
    format!("parsing time {s:?}: value out of range")
}

/// kube-apiserver's `PodLogOptions` from a log request's query, checked as
/// `ValidatePodLogOptions` does (malformed values are 400s, out-of-range ones 422s).
pub fn log_options(q: &Query, pod: &str, now: jiff::Timestamp) -> Result<LogOptions, ApiError> {
    let tail = query_int(q, "tailLines")?;
    let limit = query_int(q, "limitBytes")?;
    let since_seconds = query_int(q, "sinceSeconds")?;
    let since_time = match q.get("sinceTime").map(|s| s.as_str()) {
        None | Some("") | Some("null") => None,
        Some(s) => Some(s.parse::<jiff::Timestamp>().map_err(|_| ApiError::bad_request(rfc3339_error(s)))?),
    };
    let mut errs = vec![];
    if let Some(t) = tail.filter(|t| *t < 0) {
        errs.push(FieldError::invalid("tailLines", t, "must be greater than or equal to 0"));
    }
    if let Some(l) = limit.filter(|l| *l < 1) {
        errs.push(FieldError::invalid("limitBytes", l, "must be greater than 0"));
    }
    match (since_seconds, since_time) {
        (Some(_), Some(_)) => {
            errs.push(FieldError::forbidden("", "at most one of `sinceTime` or `sinceSeconds` may be specified"))
        }
        (Some(s), None) if s < 1 => errs.push(FieldError::invalid("sinceSeconds", s, "must be greater than 0")),
        _ => {}
    }
    if !errs.is_empty() {
        return Err(ApiError::invalid("PodLogOptions", pod, &errs));
    }
    let since = match (since_seconds, since_time) {
        (Some(s), _) => Some(now.checked_sub(jiff::SignedDuration::from_secs(s)).unwrap_or(jiff::Timestamp::MIN)),
        (None, t) => t,
    };
    Ok(LogOptions {
        previous: query_bool(q, "previous")?,
        follow: query_bool(q, "follow")?,
        since,
        timestamps: query_bool(q, "timestamps")?,
        tail_lines: tail.map(|t| t as usize),
        limit_bytes: limit.map(|l| l as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Query {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn log_options_as_kube_apiserver_reads_and_checks_them() {
        let now: jiff::Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let o = log_options(
            &q(&[
                ("follow", "true"),
                ("tailLines", "3"),
                ("limitBytes", "10"),
                ("timestamps", "1"),
                ("sinceSeconds", "60"),
            ]),
            "p",
            now,
        )
        .unwrap();
        assert!(o.follow && o.timestamps && !o.previous);
        assert_eq!((o.tail_lines, o.limit_bytes), (Some(3), Some(10)));
        assert_eq!(o.since, Some("2026-01-01T00:00:00Z".parse().unwrap()));
        let o = log_options(&q(&[("sinceTime", "2026-01-01T00:00:30+01:00")]), "p", now).unwrap();
        assert_eq!(o.since, Some("2025-12-31T23:00:30Z".parse().unwrap()));
        for (query, code, msg) in [
            (vec![("limitBytes", "0")], 422, "limitBytes: Invalid value: 0: must be greater than 0"),
            (vec![("tailLines", "-1")], 422, "must be greater than or equal to 0"),
            (vec![("sinceSeconds", "0")], 422, "sinceSeconds: Invalid value: 0: must be greater than 0"),
            (vec![("sinceSeconds", "5"), ("sinceTime", "2026-01-01T00:00:00Z")], 422, "at most one of"),
            (vec![("tailLines", "x")], 400, "invalid syntax"),
            (vec![("follow", "yes")], 400, "strconv.ParseBool"),
            (
                vec![("sinceTime", "yesterday")],
                400,
                r#"parsing time "yesterday" as "2006-01-02T15:04:05Z07:00": cannot parse "yesterday" as "2006""#,
            ),
            (vec![("sinceTime", "2026-01-01 00:00:00")], 400, r#"cannot parse " 00:00:00" as "T""#),
            (vec![("sinceTime", "2026-01-01T00:00:00")], 400, r#"cannot parse "" as "Z07:00""#),
        ] {
            let e = log_options(&q(&query), "p", now).unwrap_err();
            assert_eq!(e.code, code, "{query:?}: {}", e.message);
            assert!(e.message.contains(msg), "{query:?}: {}", e.message);
        }
    }
}
