//! The documents against kube-apiserver 1.32's own (api/openapi-spec/v3 in kubernetes/kubernetes).

use serde_json::{Value, json};
use weft_api::kinds;

use crate::*;

fn def(name: &str) -> &'static Value {
    v3_schemas().get(name).unwrap_or_else(|| panic!("{name} is defined"))
}

fn prop<'a>(d: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(d, |v, p| &v["properties"][*p])
}

#[test]
fn every_served_kind_has_a_definition_with_its_gvk() {
    let mut missing = vec![];
    for k in kinds::ALL {
        let Some(name) = definition_name(k.group, k.version, k.kind) else {
            // Only kinds k8s-openapi no longer has (networking.k8s.io/v1beta1 Ingress).
            assert!(k.legacy, "{}/{} {} has no definition", k.group, k.version, k.kind);
            continue;
        };
        let gvk = json!({"group": k.group, "kind": k.kind, "version": k.version});
        match v3_schemas().get(&name) {
            Some(d) if d["x-kubernetes-group-version-kind"].as_array().is_some_and(|a| a.contains(&gvk)) => {}
            _ => missing.push(name),
        }
        if !k.create_only {
            let list = format!("{}List", k.kind);
            let name = definition_name(k.group, k.version, &list).expect("a list definition");
            let gvk = json!({"group": k.group, "kind": list, "version": k.version});
            assert!(def(&name)["x-kubernetes-group-version-kind"].as_array().is_some_and(|a| a.contains(&gvk)));
        }
    }
    assert!(missing.is_empty(), "without their GVK: {missing:?}");
}

#[test]
fn every_ref_resolves() {
    let mut out = vec![];
    for d in v3_schemas().values() {
        schemas::refs(d, &mut out);
    }
    assert!(out.len() > 500, "{} refs", out.len());
    for r in out {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("{r} is a v3 ref"));
        assert!(v3_schemas().contains_key(name), "{r} resolves");
    }
}

#[test]
fn service_ports_are_a_map_keyed_by_port_and_protocol() {
    let ports = prop(def("io.k8s.api.core.v1.ServiceSpec"), &["ports"]);
    assert_eq!(ports["x-kubernetes-list-type"], "map");
    assert_eq!(ports["x-kubernetes-list-map-keys"], json!(["port", "protocol"]));
    assert_eq!(ports["x-kubernetes-patch-merge-key"], "port");
    assert_eq!(ports["x-kubernetes-patch-strategy"], "merge");
    assert_eq!(ports["items"]["$ref"], "#/components/schemas/io.k8s.api.core.v1.ServicePort");
    let target = prop(def("io.k8s.api.core.v1.ServicePort"), &["targetPort"]);
    assert_eq!(
        target["allOf"],
        json!([{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.util.intstr.IntOrString"}])
    );
    assert!(target["description"].as_str().is_some_and(|d| d.starts_with("Number or name of the port")));
}

#[test]
fn containers_and_their_ports() {
    let c = prop(def("io.k8s.api.core.v1.PodSpec"), &["containers"]);
    assert_eq!(c["x-kubernetes-patch-merge-key"], "name");
    assert_eq!(c["x-kubernetes-patch-strategy"], "merge");
    assert_eq!(c["x-kubernetes-list-type"], "map");
    assert_eq!(c["x-kubernetes-list-map-keys"], json!(["name"]));
    let p = prop(def("io.k8s.api.core.v1.Container"), &["ports"]);
    assert_eq!(p["x-kubernetes-list-type"], "map");
    assert_eq!(p["x-kubernetes-list-map-keys"], json!(["containerPort", "protocol"]));
    assert_eq!(p["x-kubernetes-patch-merge-key"], "containerPort");
    assert_eq!(prop(def("io.k8s.api.core.v1.PodSpec"), &["nodeSelector"])["x-kubernetes-map-type"], "atomic");
}

#[test]
fn object_meta() {
    let meta = def("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta");
    let f = prop(meta, &["finalizers"]);
    assert_eq!((&f["x-kubernetes-list-type"], &f["x-kubernetes-patch-strategy"]), (&json!("set"), &json!("merge")));
    let o = prop(meta, &["ownerReferences"]);
    assert_eq!(o["x-kubernetes-list-type"], "map");
    assert_eq!(o["x-kubernetes-list-map-keys"], json!(["uid"]));
    assert_eq!(o["x-kubernetes-patch-merge-key"], "uid");
    assert_eq!(o["x-kubernetes-patch-strategy"], "merge");
    let labels = prop(meta, &["labels"]);
    assert_eq!(labels["type"], "object");
    assert_eq!(labels["additionalProperties"]["type"], "string");
    assert!(labels.get("x-kubernetes-map-type").is_none());
    assert_eq!(def("io.k8s.apimachinery.pkg.apis.meta.v1.OwnerReference")["x-kubernetes-map-type"], "atomic");
    assert_eq!(def("io.k8s.api.core.v1.LocalObjectReference")["x-kubernetes-map-type"], "atomic");
}

#[test]
fn kinds_do_not_require_metadata() {
    let pod = def("io.k8s.api.core.v1.Pod");
    assert!(pod.get("required").is_none(), "{:?}", pod.get("required"));
    assert_eq!(
        pod["properties"]["metadata"]["allOf"][0]["$ref"],
        "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    );
    assert_eq!(def("io.k8s.api.core.v1.PodList")["required"], json!(["items"]));
}

fn refs_of(v: &Value) -> Vec<String> {
    let mut out = vec![];
    schemas::refs(v, &mut out);
    out
}

#[test]
fn each_group_version_document_is_whole() {
    for (g, v, _) in kinds::group_versions() {
        let doc = v3_document(g, v).unwrap_or_else(|| panic!("{g}/{v} has a document"));
        let defs = doc["components"]["schemas"].as_object().expect("schemas");
        for r in refs_of(doc) {
            let name = r.strip_prefix("#/components/schemas/").expect("a v3 ref");
            assert!(defs.contains_key(name), "{g}/{v}: {r} resolves in the document");
        }
        // kubectl's QueryParamVerifierV3: every PATCH lists `fieldValidation` among its own parameters.
        let paths = doc["paths"].as_object().expect("paths");
        let patches: Vec<&Value> = paths.values().filter_map(|p| p.get("patch")).collect();
        assert!(patches.iter().all(|p| {
            p["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|q| q["name"] == "fieldValidation" && q["in"] == "query"))
        }));
        for k in kinds::ALL.iter().filter(|k| k.group == g && k.version == v && !k.create_only) {
            let gvk = json!({"group": k.group, "kind": k.kind, "version": k.version});
            assert!(patches.iter().any(|p| p["x-kubernetes-group-version-kind"] == gvk), "{gvk} has a PATCH");
            assert!(patches.iter().any(|p| p["requestBody"]["content"].get("application/apply-patch+yaml").is_some()));
        }
    }
    let svc = &v3_document("", "v1").expect("core")["paths"]["/api/v1/namespaces/{namespace}/services/{name}"];
    assert_eq!(
        svc["put"]["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/io.k8s.api.core.v1.Service"
    );
    assert_eq!(svc["get"]["x-kubernetes-action"], "get");
    assert!(v3_document("nope", "v1").is_none());
}

#[test]
fn the_root_names_each_document_by_its_hash() {
    let root: Value = serde_json::from_slice(&v3_root().bytes).expect("JSON");
    let apps = root["paths"]["apis/apps/v1"]["serverRelativeURL"].as_str().expect("apps/v1 is listed");
    let served = v3_served("apis/apps/v1").expect("served");
    assert_eq!(apps, format!("/openapi/v3/apis/apps/v1?hash={}", served.hash));
    assert_eq!(served.hash.len(), 128);
    assert_ne!(served.hash, v3_served("api/v1").expect("core").hash);
    assert_eq!(served.etag(), format!("\"{}\"", served.hash));
}

#[test]
fn v2_has_the_same_definitions_with_v2_refs() {
    let doc = v2_document();
    let defs = doc["definitions"].as_object().expect("definitions");
    assert_eq!(defs.len(), v3_schemas().len());
    for r in refs_of(doc) {
        let name = r.strip_prefix("#/definitions/").unwrap_or_else(|| panic!("{r} is a v2 ref"));
        assert!(defs.contains_key(name), "{r} resolves");
    }
    let target = &defs["io.k8s.api.core.v1.ServicePort"]["properties"]["targetPort"];
    assert_eq!(target["$ref"], "#/definitions/io.k8s.apimachinery.pkg.util.intstr.IntOrString");
    assert!(target.get("allOf").is_none());
    assert_eq!(defs["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["format"], "int-or-string");
    assert_eq!(defs["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["type"], "string");
    let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
    assert!(patch["consumes"].as_array().is_some_and(|c| c.contains(&json!("application/apply-patch+yaml"))));
    assert!(patch["parameters"].as_array().is_some_and(|ps| ps.iter().any(|p| p["in"] == "body")));
}

/// Not an assertion: how big the documents are and how long building them takes (printed with
/// `--nocapture`).
#[test]
fn sizes() {
    let t = std::time::Instant::now();
    let n = v3_schemas().len();
    let schemas = t.elapsed();
    let total: usize =
        kinds::group_versions().iter().filter_map(|(g, v, _)| v3_served(&gv_path(g, v))).map(|s| s.bytes.len()).sum();
    let v3 = t.elapsed();
    let v2 = v2_served().bytes.len();
    eprintln!(
        "{n} definitions in {schemas:?}; v3 documents {total} bytes (api/v1 {}) by {v3:?}; v2 {v2} bytes by {:?}",
        v3_served("api/v1").map_or(0, |s| s.bytes.len()),
        t.elapsed()
    );
}
