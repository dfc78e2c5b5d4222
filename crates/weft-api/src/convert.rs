//! Conversion between the served versions of a kind and its storage version, on JSON: the old
//! `networking.k8s.io/v1beta1` Ingress (`serviceName`/`servicePort`, seed 000), stored as
//! `networking.k8s.io/v1` (k8s-openapi has no v1beta1 types), and `events.k8s.io/v1` Event,
//! stored as core/v1 Event as kube-apiserver stores both over one storage
//! (`pkg/apis/events/v1/conversion.go`).

use serde_json::{Map, Value, json};

use crate::FieldError;
use crate::kinds::Kind;

/// A stored object as the version `kind` (what the request addressed) shows it.
pub fn to_served(kind: &Kind, v: Value) -> Value {
    match (kind.group, kind.kind) {
        ("networking.k8s.io", "Ingress") if kind.legacy => ingress_v1_to_v1beta1(v),
        ("events.k8s.io", "Event") => event_core_to_events_v1(v),
        _ => v,
    }
}

/// An object sent in the version `kind` as it is stored.
pub fn to_stored(kind: &Kind, v: Value) -> Value {
    match (kind.group, kind.kind) {
        ("networking.k8s.io", "Ingress") if kind.legacy => ingress_v1beta1_to_v1(v),
        ("events.k8s.io", "Event") => event_events_v1_to_core(v),
        _ => v,
    }
}

/// The fields whose names differ between core/v1 Event and events.k8s.io/v1 Event, as
/// (core, events.k8s.io). The rest (`eventTime`, `series`, `related`, `action`, `reason`,
/// `type`, `reportingInstance`, metadata) have the same names and shapes in both.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

fn rename(v: &mut Value, from_to: impl Iterator<Item = (&'static str, &'static str)>) {
    let Some(o) = v.as_object_mut() else { return };
    // Both sides first, then the new names: a field may not overwrite another's new name.
    let moved: Vec<(&str, Option<Value>)> = from_to.map(|(from, to)| (to, o.remove(from))).collect();
    for (to, val) in moved {
        if let Some(val) = val {
            o.insert(to.into(), val);
        }
    }
}

/// An events.k8s.io/v1 Event as core/v1 stores it.
pub fn event_events_v1_to_core(mut v: Value) -> Value {
    if !v.is_object() {
        return v;
    }
    rename(&mut v, EVENT_FIELDS.iter().map(|(core, ev)| (*ev, *core)));
    v["apiVersion"] = json!("v1");
    // core/v1 requires the reference (kube-apiserver's internal type always has one).
    if v.get("involvedObject").is_none_or(|r| r.is_null()) {
        v["involvedObject"] = json!({});
    }
    v
}

/// What kube-apiserver requires of an Event created through events.k8s.io/v1
/// (`ValidateEventCreate`: the new API's fields set, the deprecated ones unset), on the Event
/// as sent. Checked before it is converted and admitted as a core/v1 Event.
pub fn check_events_v1_create(v: &Value) -> Vec<FieldError> {
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("");
    let set = |k: &str| v.get(k).is_some_and(|x| !x.is_null());
    let mut errs = vec![];
    if !set("eventTime") {
        errs.push(FieldError::required("eventTime", "set it to when the event happened (RFC 3339, microseconds)"));
    }
    match s("type") {
        "Normal" | "Warning" => {}
        t => errs.push(FieldError::not_supported("type", t, &["Normal", "Warning"])),
    }
    for (field, limit) in [("reportingController", 0), ("reportingInstance", 128), ("action", 128), ("reason", 128)] {
        let value = s(field);
        if value.is_empty() {
            errs.push(FieldError::required(field, "an Event of events.k8s.io/v1 names it"));
        } else if limit > 0 && value.len() > limit {
            errs.push(FieldError::invalid(field, "", format!("can have at most {limit} characters")));
        }
    }
    if s("note").len() > 1024 {
        errs.push(FieldError::invalid("note", "", "can have at most 1024 characters"));
    }
    let ns = v.pointer("/metadata/namespace").and_then(|n| n.as_str()).unwrap_or("");
    let regarding_ns = v.pointer("/regarding/namespace").and_then(|n| n.as_str()).unwrap_or("");
    if regarding_ns.is_empty() && !ns.is_empty() && ns != "default" && ns != "kube-system" {
        errs.push(FieldError::invalid_str("involvedObject.namespace", regarding_ns, "does not match event.namespace"));
    }
    if let Some(series) = v.get("series").filter(|x| !x.is_null()) {
        if series.get("count").and_then(|c| c.as_i64()).unwrap_or(0) < 2 {
            errs.push(FieldError::invalid("series.count", "", "should be at least 2"));
        }
        if series.get("lastObservedTime").is_none_or(|t| t.is_null()) {
            errs.push(FieldError::required("series.lastObservedTime", "the time of the latest repeat"));
        }
    }
    for field in ["deprecatedFirstTimestamp", "deprecatedLastTimestamp", "deprecatedCount", "deprecatedSource"] {
        let unset = match v.get(field) {
            None | Some(Value::Null) => true,
            Some(Value::Number(n)) => n.as_i64() == Some(0),
            Some(Value::Object(o)) => o.values().all(|x| x.as_str().is_none_or(str::is_empty)),
            Some(_) => false,
        };
        if !unset {
            errs.push(FieldError::invalid(field, "", "needs to be unset"));
        }
    }
    errs
}

/// A stored (core/v1) Event as events.k8s.io/v1 shows it.
pub fn event_core_to_events_v1(mut v: Value) -> Value {
    if !v.is_object() {
        return v;
    }
    rename(&mut v, EVENT_FIELDS.iter().copied());
    v["apiVersion"] = json!("events.k8s.io/v1");
    v
}

fn backend_to_v1(b: &mut Value) {
    let Some(o) = b.as_object_mut() else { return };
    let name = o.remove("serviceName");
    let port = o.remove("servicePort");
    if let Some(name) = name {
        let port = match port {
            Some(Value::Number(n)) => json!({"number": n}),
            Some(Value::String(s)) => match s.parse::<i64>() {
                Ok(n) => json!({"number": n}),
                Err(_) => json!({"name": s}),
            },
            _ => json!({}),
        };
        o.insert("service".into(), json!({"name": name, "port": port}));
    }
}

fn backend_to_v1beta1(b: &mut Value) {
    let Some(o) = b.as_object_mut() else { return };
    if let Some(Value::Object(mut svc)) = o.remove("service") {
        if let Some(n) = svc.remove("name") {
            o.insert("serviceName".into(), n);
        }
        let port = svc.remove("port").unwrap_or(Value::Null);
        let p = port.get("number").cloned().or_else(|| port.get("name").cloned());
        if let Some(p) = p {
            o.insert("servicePort".into(), p);
        }
    }
}

fn each_backend(spec: &mut Map<String, Value>, default_key: &str, f: fn(&mut Value)) {
    if let Some(b) = spec.get_mut(default_key) {
        f(b);
    }
    if let Some(Value::Array(rules)) = spec.get_mut("rules") {
        for r in rules {
            if let Some(Value::Array(paths)) = r.pointer_mut("/http/paths") {
                for p in paths {
                    if let Some(b) = p.get_mut("backend") {
                        f(b);
                    }
                }
            }
        }
    }
}

/// A v1beta1 Ingress as sent by a user, rewritten as v1.
pub fn ingress_v1beta1_to_v1(mut v: Value) -> Value {
    v["apiVersion"] = json!("networking.k8s.io/v1");
    if let Some(spec) = v.get_mut("spec").and_then(|s| s.as_object_mut()) {
        if let Some(b) = spec.remove("backend") {
            spec.insert("defaultBackend".into(), b);
        }
        each_backend(spec, "defaultBackend", backend_to_v1);
        if let Some(Value::Array(rules)) = spec.get_mut("rules") {
            for r in rules {
                if let Some(Value::Array(paths)) = r.pointer_mut("/http/paths") {
                    for p in paths {
                        if let Some(o) = p.as_object_mut() {
                            o.entry("pathType").or_insert_with(|| json!("ImplementationSpecific"));
                        }
                    }
                }
            }
        }
    }
    v
}

/// A stored (v1) Ingress as a v1beta1 client expects it.
pub fn ingress_v1_to_v1beta1(mut v: Value) -> Value {
    v["apiVersion"] = json!("networking.k8s.io/v1beta1");
    if let Some(spec) = v.get_mut("spec").and_then(|s| s.as_object_mut()) {
        if let Some(b) = spec.remove("defaultBackend") {
            spec.insert("backend".into(), b);
        }
        each_backend(spec, "backend", backend_to_v1beta1);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_v1_creates_are_checked_as_kube_apiserver_checks_them() {
        let ok = json!({"metadata": {"name": "e", "namespace": "default"}, "eventTime": "2026-01-01T00:00:00.000001Z",
            "type": "Normal", "reason": "Started", "action": "Start", "reportingController": "weft.dev/x",
            "reportingInstance": "i", "regarding": {"kind": "Pod", "name": "p", "namespace": "default"}});
        assert_eq!(check_events_v1_create(&ok), vec![]);
        let fields = |v: &Value| check_events_v1_create(v).into_iter().map(|e| e.field).collect::<Vec<_>>();
        assert_eq!(
            fields(&json!({"metadata": {"name": "e", "namespace": "default"}})),
            ["eventTime", "type", "reportingController", "reportingInstance", "action", "reason"]
        );
        let mut bad = ok.clone();
        bad["deprecatedCount"] = json!(3);
        bad["series"] = json!({"count": 1});
        bad["reason"] = json!("x".repeat(129));
        bad["note"] = json!("y".repeat(1025));
        assert_eq!(fields(&bad), ["reason", "note", "series.count", "series.lastObservedTime", "deprecatedCount"]);
        // Not an object at all: errors, no panic.
        assert!(!check_events_v1_create(&json!("nonsense")).is_empty());
    }

    #[test]
    fn events_convert_both_ways_as_kube_apiserver_does() {
        // As kube-rs's Recorder creates one, then merge-patches `series` on it.
        let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "web.1a2b", "namespace": "default"},
            "eventTime": "2026-01-01T00:00:00.000001Z", "action": "Probe", "reason": "Unhealthy",
            "note": "it hurts", "type": "Warning",
            "regarding": {"kind": "Pod", "name": "web", "namespace": "default", "uid": "u1", "apiVersion": "v1"},
            "related": {"kind": "Node", "name": "n1"},
            "reportingController": "weft.dev/prober", "reportingInstance": "node-1",
            "series": {"count": 3, "lastObservedTime": "2026-01-01T00:00:05.000001Z"}});
        let core = event_events_v1_to_core(ev.clone());
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "web");
        assert_eq!(core["message"], "it hurts");
        assert_eq!(core["reportingComponent"], "weft.dev/prober");
        assert_eq!(core["reportingInstance"], "node-1");
        assert_eq!(core["series"]["count"], 3, "series stays series, as kube-apiserver converts it");
        assert_eq!(core["eventTime"], ev["eventTime"]);
        assert_eq!(core["related"]["kind"], "Node");
        for gone in ["regarding", "note", "reportingController"] {
            assert!(core.get(gone).is_none(), "{gone}");
        }
        assert_eq!(event_core_to_events_v1(core), ev);

        // A core/v1 Event as kubectl and older components write it.
        let core = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "x", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "web"}, "message": "m", "reason": "Started",
            "source": {"component": "kubelet", "host": "node-1"}, "count": 4,
            "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:01:00Z"});
        let ev = event_core_to_events_v1(core.clone());
        assert_eq!(ev["deprecatedSource"]["component"], "kubelet");
        assert_eq!(ev["deprecatedCount"], 4);
        assert_eq!(ev["deprecatedFirstTimestamp"], "2026-01-01T00:00:00Z");
        assert_eq!(ev["deprecatedLastTimestamp"], "2026-01-01T00:01:00Z");
        assert_eq!(ev["regarding"]["name"], "web");
        assert_eq!(event_events_v1_to_core(ev), core);
        // Not an object: left alone, for admission to refuse.
        assert_eq!(event_events_v1_to_core(json!([1])), json!([1]));
        // No reference: an empty one, as the internal type has.
        assert_eq!(event_events_v1_to_core(json!({"metadata": {}}))["involvedObject"], json!({}));
    }

    #[test]
    fn seed_000_ingress_converts_both_ways() {
        let beta = json!({"apiVersion": "networking.k8s.io/v1beta1", "kind": "Ingress",
            "metadata": {"name": "test-ingress", "annotations": {"nginx.ingress.kubernetes.io/rewrite-target": "/"}},
            "spec": {"rules": [{"host": "online.com", "http": {"paths": [
                {"path": "/watch", "pathType": "Prefix", "backend": {"serviceName": "test", "servicePort": 80}},
                {"path": "/wear", "backend": {"serviceName": "test", "servicePort": "http"}}]}}]}});
        let v1 = ingress_v1beta1_to_v1(beta.clone());
        assert_eq!(
            v1["spec"]["rules"][0]["http"]["paths"][0]["backend"],
            json!({"service": {"name": "test", "port": {"number": 80}}})
        );
        assert_eq!(v1["spec"]["rules"][0]["http"]["paths"][1]["backend"]["service"]["port"], json!({"name": "http"}));
        assert_eq!(v1["spec"]["rules"][0]["http"]["paths"][1]["pathType"], "ImplementationSpecific");
        let back = ingress_v1_to_v1beta1(v1);
        assert_eq!(
            back["spec"]["rules"][0]["http"]["paths"][0]["backend"],
            json!({"serviceName": "test", "servicePort": 80})
        );
    }
}
