//! Discovery documents (/api, /apis, per group-version resource lists). The OpenAPI documents
//! are `weft_openapi`'s, served by `openapi`.

use serde_json::{Value, json};
use weft_api::kinds::{self, Kind};

pub const VERSION_MAJOR: &str = "1";
pub const VERSION_MINOR: &str = "33";

pub fn version() -> Value {
    json!({"major": VERSION_MAJOR, "minor": VERSION_MINOR, "gitVersion": format!("v{VERSION_MAJOR}.{VERSION_MINOR}.0+weft"),
           "gitCommit": "", "gitTreeState": "clean", "buildDate": "", "goVersion": "rust", "compiler": "rustc",
           "platform": "linux/amd64"})
}

pub fn api_versions(server: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
           "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}]})
}

fn group_json(group: &str) -> Value {
    let versions: Vec<Value> = kinds::group_versions()
        .into_iter()
        .filter(|(g, _, _)| *g == group)
        .map(|(g, v, _)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    let preferred = kinds::group_versions()
        .into_iter()
        .find(|(g, _, p)| *g == group && *p)
        .map(|(g, v, _)| json!({"groupVersion": format!("{g}/{v}"), "version": v}));
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": versions, "preferredVersion": preferred})
}

pub fn api_group(group: &str) -> Option<Value> {
    kinds::group_versions().iter().any(|(g, _, _)| *g == group && !g.is_empty()).then(|| group_json(group))
}

pub fn api_group_list() -> Value {
    let mut groups: Vec<&str> = vec![];
    for (g, _, _) in kinds::group_versions() {
        if !g.is_empty() && !groups.contains(&g) {
            groups.push(g);
        }
    }
    let list: Vec<Value> = groups
        .into_iter()
        .map(|g| {
            let mut v = group_json(g);
            v.as_object_mut().unwrap().remove("kind");
            v.as_object_mut().unwrap().remove("apiVersion");
            v
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": list})
}

fn kinds_in(group: &str, version: &str) -> impl Iterator<Item = &'static Kind> {
    let (g, v) = (group.to_string(), version.to_string());
    kinds::ALL.iter().filter(move |k| k.group == g && k.version == v)
}

pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = vec![];
    for k in kinds_in(group, version) {
        let mut verbs = vec!["create", "delete", "get", "list", "patch", "update", "watch"];
        if k.create_only {
            verbs = vec!["create"];
        } else if k.kind != "Namespace" {
            verbs.insert(1, "deletecollection");
        }
        let mut r = json!({"name": k.plural, "singularName": k.singular, "namespaced": k.namespaced,
            "kind": k.kind, "verbs": verbs, "shortNames": k.short_names});
        // `kubectl get all` lists the kinds in the "all" category.
        if matches!(
            k.kind,
            "Pod"
                | "Service"
                | "Deployment"
                | "ReplicaSet"
                | "ReplicationController"
                | "DaemonSet"
                | "StatefulSet"
                | "Job"
        ) && !k.legacy
        {
            r["categories"] = json!(["all"]);
        }
        resources.push(r);
        for sub in k.subresources {
            let mut r = json!({"name": format!("{}/{}", k.plural, sub), "singularName": "", "namespaced": k.namespaced,
                "kind": k.kind, "verbs": ["get", "patch", "update"]});
            if *sub == "scale" {
                r["group"] = json!("autoscaling");
                r["version"] = json!("v1");
                r["kind"] = json!("Scale");
            }
            match *sub {
                "log" => r["verbs"] = json!(["get"]),
                // Streams are opened with GET (WebSocket) or POST (SPDY), as kube-apiserver lists them.
                "exec" | "attach" | "portforward" => r["verbs"] = json!(["create", "get"]),
                "token" => {
                    r["group"] = json!("authentication.k8s.io");
                    r["version"] = json!("v1");
                    r["kind"] = json!("TokenRequest");
                    r["verbs"] = json!(["create"]);
                }
                _ => {}
            }
            resources.push(r);
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}
