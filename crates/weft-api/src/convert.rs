//! Conversion between the served versions of a kind and its storage version. The only one today is
//! the old `networking.k8s.io/v1beta1` Ingress (`serviceName`/`servicePort`, seed 000), which is
//! stored as `networking.k8s.io/v1`. k8s-openapi has no v1beta1 types, so this works on JSON.

use serde_json::{Map, Value, json};

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
