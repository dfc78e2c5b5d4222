//! Discovery documents (/api, /apis, per group-version resource lists) and the OpenAPI v3
//! documents kubectl reads to learn that the server validates fields itself (`fieldValidation`).

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

/// The (empty) OpenAPI v2 document in JSON.
pub fn openapi_v2() -> Value {
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": format!("v{VERSION_MAJOR}.{VERSION_MINOR}.0")},
           "paths": {}, "definitions": {}})
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

pub fn openapi_v3_root() -> Value {
    let mut paths = serde_json::Map::new();
    for (g, v, _) in kinds::group_versions() {
        let p = gv_path(g, v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=weft-{}", env!("CARGO_PKG_VERSION"))}),
        );
    }
    json!({"paths": paths})
}

/// A group-version's OpenAPI v3 document: paths with the operations, their GVK extension and the
/// `fieldValidation` parameter, which tells kubectl to leave field validation to this server.
pub fn openapi_v3_group_version(path: &str) -> Option<Value> {
    let (g, v) = kinds::group_versions().into_iter().map(|(g, v, _)| (g, v)).find(|(g, v)| gv_path(g, v) == path)?;
    let mut paths = serde_json::Map::new();
    let param = |name: &str, place: &str| json!({"name": name, "in": place, "required": place == "path", "schema": {"type": "string"}});
    for k in kinds_in(g, v) {
        let gvk = json!({"group": k.group, "version": k.version, "kind": k.kind});
        let base = if g.is_empty() { format!("/api/{v}") } else { format!("/apis/{g}/{v}") };
        let coll = if k.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", k.plural)
        } else {
            format!("{base}/{}", k.plural)
        };
        let op = |action: &str| json!({"x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk, "responses": {"200": {"description": "OK"}}});
        let mut item_params = vec![
            param("name", "path"),
            param("fieldValidation", "query"),
            param("dryRun", "query"),
            param("fieldManager", "query"),
        ];
        let mut coll_params = vec![param("fieldValidation", "query"), param("dryRun", "query")];
        if k.namespaced {
            item_params.push(param("namespace", "path"));
            coll_params.push(param("namespace", "path"));
        }
        let mut patch = op("patch");
        // kubectl looks for `fieldValidation` among the PATCH operation's own parameters.
        patch["parameters"] = json!([param("fieldValidation", "query")]);
        patch["requestBody"] =
            json!({"content": {"application/json-patch+json": {}, "application/merge-patch+json": {}}});
        paths.insert(coll.clone(), json!({"parameters": coll_params, "get": op("list"), "post": op("post")}));
        paths.insert(format!("{coll}/{{name}}"), json!({"parameters": item_params.clone(), "get": op("get"), "put": op("put"), "patch": patch.clone(), "delete": op("delete")}));
        for sub in k.subresources {
            let ops = match *sub {
                "log" => json!({"parameters": item_params.clone(), "get": op("get")}),
                "exec" | "attach" | "portforward" => {
                    json!({"parameters": item_params.clone(), "get": op("get"), "post": op("post")})
                }
                _ => {
                    json!({"parameters": item_params.clone(), "get": op("get"), "put": op("put"), "patch": patch.clone()})
                }
            };
            paths.insert(format!("{coll}/{{name}}/{sub}"), ops);
        }
    }
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": format!("v{VERSION_MAJOR}.{VERSION_MINOR}.0")},
                "paths": paths, "components": {"schemas": {}}}),
    )
}
