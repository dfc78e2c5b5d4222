//! Every definition, in kube-apiserver's OpenAPI v3 form: k8s-openapi's schemas, plus what
//! kube-apiserver's generator writes and k8s-openapi leaves out: the `x-kubernetes-*` list, map
//! and patch extensions (from the `.proto` markers, `weft_protobuf::markers`), the
//! `x-kubernetes-group-version-kind` of each kind, and the List kinds.

use k8s_openapi::schemars::SchemaGenerator;
use k8s_openapi::schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};
use weft_api::kinds;
use weft_protobuf::markers::{self, Markers};

use crate::types;

/// Where v3 documents keep their definitions.
pub const V3_PREFIX: &str = "#/components/schemas/";
pub const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";
const INT_OR_STRING: &str = "io.k8s.apimachinery.pkg.util.intstr.IntOrString";
const QUANTITY: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";
const DELETE_OPTIONS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions";
const WATCH_EVENT: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.WatchEvent";

/// Builds every definition.
pub fn build() -> Map<String, Value> {
    let mut g: SchemaGenerator = SchemaSettings::openapi3()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            // The v3 form is written below, as kube-apiserver writes it.
            s.transforms.clear();
        })
        .into_generator();
    for t in types::KINDS.iter().chain(types::META) {
        (t.add)(&mut g);
    }
    types::meta_definitions(&mut g);
    let mut defs = g.take_definitions(false);
    for (name, def) in defs.iter_mut() {
        finish(name, def);
    }
    for t in types::KINDS.iter().chain(types::META) {
        if let Some(def) = defs.get_mut(&(t.name)()) {
            add_gvk(def, t.group, t.version, t.kind);
        }
    }
    // Every group takes DeleteOptions and streams WatchEvents.
    for (group, version, _) in kinds::group_versions() {
        for (name, kind) in [(DELETE_OPTIONS, "DeleteOptions"), (WATCH_EVENT, "WatchEvent")] {
            if let Some(def) = defs.get_mut(name) {
                add_gvk(def, group, version, kind);
            }
        }
    }
    for k in kinds::ALL.iter().filter(|k| !k.create_only) {
        if let Some(t) = types::find(k.group, k.version, k.kind) {
            let name = format!("{}List", (t.name)());
            defs.entry(name).or_insert_with(|| list(k, &(t.name)()));
        }
    }
    defs.sort_keys();
    defs
}

/// The definition name of a group/version/kind, if there is one.
pub fn name_of(group: &str, version: &str, kind: &str) -> Option<String> {
    if let Some(item) = kind.strip_suffix("List") {
        return types::find(group, version, item).map(|t| format!("{}List", (t.name)()));
    }
    types::find(group, version, kind).map(|t| (t.name)())
}

fn add_gvk(def: &mut Value, group: &str, version: &str, kind: &str) {
    let Some(obj) = def.as_object_mut() else { return };
    let gvk = json!({"group": group, "kind": kind, "version": version});
    let list = obj.entry("x-kubernetes-group-version-kind").or_insert_with(|| json!([]));
    if let Some(list) = list.as_array_mut().filter(|l| !l.contains(&gvk)) {
        list.push(gvk);
    }
}

/// A List kind's definition, as kube-apiserver's generator writes them.
fn list(k: &kinds::Kind, item: &str) -> Value {
    let mut def = json!({
        "description": format!("{}List is a list of {}.", k.kind, k.kind),
        "type": "object",
        "properties": {
            "apiVersion": {"description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources", "type": "string"},
            "items": {"description": format!("List of {}.", k.plural), "type": "array", "items": {"$ref": format!("{V3_PREFIX}{item}")}},
            "kind": {"description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds", "type": "string"},
            "metadata": {"allOf": [{"$ref": format!("{V3_PREFIX}{LIST_META}")}], "default": {}, "description": "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"},
        },
        "required": ["items"],
    });
    add_gvk(&mut def, k.group, k.version, &format!("{}List", k.kind));
    def
}

/// One definition in kube-apiserver's v3 form.
fn finish(name: &str, def: &mut Value) {
    match name {
        // Both are written as strings or numbers; kube-apiserver's generator says so with `oneOf`.
        INT_OR_STRING => {
            def["format"] = json!("int-or-string");
            def["oneOf"] = json!([{"type": "integer"}, {"type": "string"}]);
        }
        QUANTITY => {
            if let Some(o) = def.as_object_mut() {
                o.remove("x-kubernetes-int-or-string");
            }
            def["oneOf"] = json!([{"type": "string"}, {"type": "number"}]);
        }
        _ => {}
    }
    let proto = proto_name(name);
    if let Some(m) = proto.as_deref().and_then(markers::of_message)
        && let (Some(t), Some(o)) = (m.struct_type, def.as_object_mut())
    {
        o.insert("x-kubernetes-map-type".into(), json!(t));
    }
    let Some(obj) = def.as_object_mut() else { return };
    // k8s-openapi makes `metadata` required (its field is not an Option); kube-apiserver does not.
    if let Some(req) = obj.get_mut("required").and_then(Value::as_array_mut) {
        req.retain(|r| r != "metadata");
        if req.is_empty() {
            obj.remove("required");
        }
    }
    if let Some(props) = obj.get_mut("properties").and_then(Value::as_object_mut) {
        for (field, schema) in props.iter_mut() {
            if let Some(m) = proto.as_deref().and_then(|p| markers::of_field(p, field)) {
                extend(schema, &m);
            }
        }
    }
    refs_to_all_of(def);
}

/// `io.k8s.api.core.v1.ServicePort` is `k8s.io.api.core.v1.ServicePort` in the `.proto` files.
fn proto_name(definition: &str) -> Option<String> {
    definition.strip_prefix("io.k8s.").map(|rest| format!("k8s.io.{rest}"))
}

/// A field's markers as kube-apiserver's extensions.
fn extend(schema: &mut Value, m: &Markers) {
    let Some(o) = schema.as_object_mut() else { return };
    if let Some(t) = &m.list_type {
        o.insert("x-kubernetes-list-type".into(), json!(t));
    }
    if !m.list_map_keys.is_empty() {
        o.insert("x-kubernetes-list-map-keys".into(), json!(m.list_map_keys));
    }
    if let Some(t) = m.map_type.as_ref().or(m.struct_type.as_ref()) {
        o.insert("x-kubernetes-map-type".into(), json!(t));
    }
    if let Some(k) = &m.patch_merge_key {
        o.insert("x-kubernetes-patch-merge-key".into(), json!(k));
    }
    if let Some(s) = &m.patch_strategy {
        o.insert("x-kubernetes-patch-strategy".into(), json!(s));
    }
}

/// A `$ref` with siblings (a field's description) becomes `allOf: [{$ref}]` beside them, as in
/// kube-apiserver's v3 documents: OpenAPI 3.0 ignores the siblings of a `$ref`.
fn refs_to_all_of(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if o.len() > 1
                && let Some(r) = o.remove("$ref")
            {
                o.insert("allOf".into(), json!([{"$ref": r}]));
            }
            o.values_mut().for_each(refs_to_all_of);
        }
        Value::Array(a) => a.iter_mut().for_each(refs_to_all_of),
        _ => {}
    }
}

/// Every `$ref` target in a schema.
pub fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            if let Some(r) = o.get("$ref").and_then(Value::as_str) {
                out.push(r.to_string());
            }
            o.values().for_each(|v| refs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}
