//! The type model server-side apply merges by, built from OpenAPI v3 schemas as kube-openapi's
//! `schemaconv` builds structured-merge-diff's schema:
//!
//! - a list is `x-kubernetes-list-type` `atomic`, `set` (items by value) or `map` (items by
//!   `x-kubernetes-list-map-keys`); without a list type, a list with
//!   `x-kubernetes-patch-strategy: merge` and `x-kubernetes-patch-merge-key` is a map keyed by
//!   that key, any other list atomic;
//! - maps and structs are granular unless `x-kubernetes-map-type: atomic`;
//! - `x-kubernetes-int-or-string` is a scalar of either kind; `x-kubernetes-preserve-unknown-fields`
//!   (or no type at all) is the "deduced" type: a scalar, an atomic list or a granular map of
//!   deduced values, whichever the value is.
//!
//! Types live in one arena, named definitions once each (recursive ones such as JSONSchemaProps
//! refer to themselves by index).

use std::collections::HashMap;

use serde_json::{Map, Value};

/// An index into [`Schema`]'s arena.
pub type TypeRef = usize;

/// The deduced type (upstream's `__untyped_deduced_`).
pub const DEDUCED: TypeRef = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar {
    String,
    Numeric,
    Boolean,
    /// Any scalar (int-or-string, deduced).
    Untyped,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListKind {
    Atomic,
    /// Associative by value.
    Set,
    /// Associative by these fields of each item.
    Map(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListType {
    pub elem: TypeRef,
    pub kind: ListKind,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapType {
    /// A struct's declared fields.
    pub fields: HashMap<String, TypeRef>,
    /// The type of any other key (a map's values; deduced for preserve-unknown-fields structs).
    pub elem: Option<TypeRef>,
    pub atomic: bool,
    /// Scalar defaults of declared fields: a map-list item's missing key takes its default.
    pub defaults: HashMap<String, Value>,
    /// Fields Go always writes (`required`: no `omitempty`) and struct fields that are not
    /// pointers (`default: {}`): what an empty object of the kind has (see [`Schema::zero`]).
    pub required: Vec<String>,
    pub structs: Vec<String>,
}

impl MapType {
    pub fn field(&self, name: &str) -> Option<TypeRef> {
        self.fields.get(name).copied().or(self.elem)
    }
}

/// What a value of a type may be: upstream's `Atom` (the deduced type is all three).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Atom {
    pub scalar: Option<Scalar>,
    pub list: Option<ListType>,
    pub map: Option<MapType>,
}

#[derive(Debug)]
pub struct Schema {
    atoms: Vec<Atom>,
    by_name: HashMap<String, TypeRef>,
    /// `group/version/Kind` -> the definition's type.
    by_gvk: HashMap<String, TypeRef>,
}

const REF_PREFIXES: [&str; 2] = ["#/components/schemas/", "#/definitions/"];

impl Schema {
    /// A model of every definition in `defs` (OpenAPI v3 `components.schemas`).
    pub fn new(defs: &Map<String, Value>) -> Schema {
        let deduced = Atom {
            scalar: Some(Scalar::Untyped),
            list: Some(ListType { elem: DEDUCED, kind: ListKind::Atomic }),
            map: Some(MapType { elem: Some(DEDUCED), ..MapType::default() }),
        };
        let mut s = Schema { atoms: vec![deduced], by_name: HashMap::new(), by_gvk: HashMap::new() };
        for (name, def) in defs {
            let t = s.named(defs, name);
            if let Some(Value::Array(gvks)) = def.get("x-kubernetes-group-version-kind") {
                for g in gvks {
                    let (group, version, kind) =
                        (g["group"].as_str().unwrap_or(""), g["version"].as_str().unwrap_or(""), g["kind"].as_str());
                    if let Some(kind) = kind {
                        s.by_gvk.insert(gvk_key(group, version, kind), t);
                    }
                }
            }
        }
        s
    }

    /// The type of a top-level kind (its definition's `x-kubernetes-group-version-kind`).
    pub fn kind(&self, group: &str, version: &str, kind: &str) -> Option<TypeRef> {
        self.by_gvk.get(&gvk_key(group, version, kind)).copied()
    }

    /// The type of a definition by name (`io.k8s.api.apps.v1.Deployment`).
    pub fn named_type(&self, name: &str) -> Option<TypeRef> {
        self.by_name.get(name).copied()
    }

    /// An empty object of type `t` as Go's typed objects are when made into JSON: non-pointer
    /// structs as objects, fields without `omitempty` as their zero value (null for lists, maps
    /// and pointers). An object's creation is compared against this, so its creator's field set
    /// is upstream's (no `.` for `spec`, which always exists; one for `metadata.labels`).
    pub fn zero(&self, t: TypeRef) -> Value {
        self.zero_at(t, 0)
    }

    fn zero_at(&self, t: TypeRef, depth: usize) -> Value {
        let Some(m) = self.atom(t).map.as_ref() else { return Value::Null };
        let mut out = Map::new();
        if depth > 32 {
            return Value::Object(out);
        }
        for f in &m.structs {
            out.insert(f.clone(), self.zero_at(m.fields.get(f).copied().unwrap_or(DEDUCED), depth + 1));
        }
        for f in &m.required {
            if !out.contains_key(f) {
                out.insert(f.clone(), m.defaults.get(f).cloned().unwrap_or(Value::Null));
            }
        }
        Value::Object(out)
    }

    pub fn atom(&self, t: TypeRef) -> &Atom {
        self.atoms.get(t).unwrap_or(&self.atoms[DEDUCED])
    }

    fn push(&mut self, a: Atom) -> TypeRef {
        self.atoms.push(a);
        self.atoms.len() - 1
    }

    fn named(&mut self, defs: &Map<String, Value>, name: &str) -> TypeRef {
        if let Some(&t) = self.by_name.get(name) {
            return t;
        }
        let Some(def) = defs.get(name) else { return DEDUCED };
        // Reserved before its fields are built, so a definition that refers to itself finds it.
        let t = self.push(Atom::default());
        self.by_name.insert(name.to_string(), t);
        let atom = self.atom_of(defs, def, 0);
        self.atoms[t] = atom;
        t
    }

    /// The type of an inline schema (a property's, an item's).
    fn type_of(&mut self, defs: &Map<String, Value>, s: &Value, depth: usize) -> TypeRef {
        if let Some(name) = ref_name(s) {
            return self.named(defs, name);
        }
        if depth > 64 {
            return DEDUCED;
        }
        let a = self.atom_of(defs, s, depth + 1);
        if a == self.atoms[DEDUCED] {
            return DEDUCED;
        }
        self.push(a)
    }

    fn atom_of(&mut self, defs: &Map<String, Value>, s: &Value, depth: usize) -> Atom {
        if let Some(name) = ref_name(s) {
            let t = self.named(defs, name);
            return self.atom(t).clone();
        }
        let ext = |k: &str| s.get(k);
        if ext("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
            return Atom { scalar: Some(Scalar::Untyped), ..Atom::default() };
        }
        let preserve = ext("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        let ty = s.get("type").and_then(|t| t.as_str()).unwrap_or("");
        match ty {
            "string" => Atom { scalar: Some(Scalar::String), ..Atom::default() },
            "integer" | "number" => Atom { scalar: Some(Scalar::Numeric), ..Atom::default() },
            "boolean" => Atom { scalar: Some(Scalar::Boolean), ..Atom::default() },
            "array" => {
                let elem = match s.get("items") {
                    Some(items) => self.type_of(defs, items, depth),
                    None => DEDUCED,
                };
                Atom { list: Some(ListType { elem, kind: list_kind(s) }), ..Atom::default() }
            }
            "object" | "" => {
                let props = s.get("properties").and_then(|p| p.as_object());
                let additional = s.get("additionalProperties").filter(|a| a.is_object());
                if props.is_none() && additional.is_none() {
                    if ty.is_empty() || preserve || !s.get("x-kubernetes-map-type").is_some_and(|m| m == "atomic") {
                        return self.atoms[DEDUCED].clone();
                    }
                    return Atom {
                        map: Some(MapType { elem: Some(DEDUCED), atomic: true, ..MapType::default() }),
                        ..Atom::default()
                    };
                }
                let mut m = MapType {
                    atomic: ext("x-kubernetes-map-type").and_then(|m| m.as_str()) == Some("atomic"),
                    ..MapType::default()
                };
                for (k, p) in props.into_iter().flatten() {
                    let t = self.type_of(defs, p, depth);
                    m.fields.insert(k.clone(), t);
                    match p.get("default") {
                        Some(Value::Object(o)) if o.is_empty() => m.structs.push(k.clone()),
                        Some(d) if !d.is_object() && !d.is_array() => {
                            m.defaults.insert(k.clone(), d.clone());
                        }
                        _ => {}
                    }
                }
                if let Some(Value::Array(req)) = s.get("required") {
                    m.required = req.iter().filter_map(|r| r.as_str().map(String::from)).collect();
                }
                if let Some(a) = additional {
                    m.elem = Some(self.type_of(defs, a, depth));
                } else if preserve {
                    m.elem = Some(DEDUCED);
                }
                Atom { map: Some(m), ..Atom::default() }
            }
            _ => self.atoms[DEDUCED].clone(),
        }
    }
}

fn gvk_key(group: &str, version: &str, kind: &str) -> String {
    format!("{group}/{version}/{kind}")
}

/// The definition a schema refers to: `$ref`, or `allOf` with a single `$ref` (how v3 documents
/// give a referenced field a description or default).
fn ref_name(s: &Value) -> Option<&str> {
    let r = s.get("$ref").and_then(|r| r.as_str()).or_else(|| match s.get("allOf") {
        Some(Value::Array(all)) if all.len() == 1 => all[0].get("$ref").and_then(|r| r.as_str()),
        _ => None,
    })?;
    REF_PREFIXES.iter().find_map(|p| r.strip_prefix(p))
}

fn list_kind(s: &Value) -> ListKind {
    let strs = |v: Option<&Value>| -> Vec<String> {
        v.and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|k| k.as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    match s.get("x-kubernetes-list-type").and_then(|t| t.as_str()) {
        Some("set") => return ListKind::Set,
        Some("map") => {
            let keys = strs(s.get("x-kubernetes-list-map-keys"));
            return if keys.is_empty() { ListKind::Atomic } else { ListKind::Map(keys) };
        }
        Some(_) => return ListKind::Atomic,
        None => {}
    }
    let strategy = s.get("x-kubernetes-patch-strategy").and_then(|p| p.as_str()).unwrap_or("");
    if strategy.split(',').any(|p| p == "merge")
        && let Some(key) = s.get("x-kubernetes-patch-merge-key").and_then(|k| k.as_str())
    {
        return ListKind::Map(vec![key.to_string()]);
    }
    ListKind::Atomic
}

#[cfg(test)]
pub(crate) mod fixtures {
    use serde_json::{Map, Value, json};

    /// A small Deployment-like schema in the v3 form kube-apiserver publishes.
    pub fn defs() -> Map<String, Value> {
        let v = json!({
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta": {"type": "object", "properties": {
                "name": {"type": "string"}, "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string", "default": ""}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string", "default": ""}},
                "finalizers": {"type": "array", "items": {"type": "string", "default": ""},
                    "x-kubernetes-list-type": "set", "x-kubernetes-patch-strategy": "merge"},
                "managedFields": {"type": "array", "items": {"type": "object"}},
                "resourceVersion": {"type": "string"}, "uid": {"type": "string"},
                "generation": {"type": "integer"}, "creationTimestamp": {"type": "string"}}},
            "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector": {"type": "object",
                "x-kubernetes-map-type": "atomic", "properties": {
                "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}},
            "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {"type": "string", "format": "int-or-string",
                "x-kubernetes-int-or-string": true},
            "io.k8s.api.apps.v1.Deployment": {"type": "object", "properties": {
                "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                "metadata": {"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}], "default": {}},
                "spec": {"allOf": [{"$ref": "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"}], "default": {}},
                "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}}},
                "x-kubernetes-group-version-kind": [{"group": "apps", "kind": "Deployment", "version": "v1"}]},
            "io.k8s.api.apps.v1.DeploymentSpec": {"type": "object", "required": ["selector", "template"], "properties": {
                "replicas": {"type": "integer"},
                "selector": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"},
                "strategy": {"type": "object", "default": {}, "properties": {"type": {"type": "string"},
                    "rollingUpdate": {"type": "object", "properties": {
                        "maxSurge": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.util.intstr.IntOrString"}}}}},
                "template": {"allOf": [{"$ref": "#/components/schemas/io.k8s.api.core.v1.PodTemplateSpec"}], "default": {}}}},
            "io.k8s.api.core.v1.PodTemplateSpec": {"type": "object", "properties": {
                "metadata": {"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}], "default": {}},
                "spec": {"allOf": [{"$ref": "#/components/schemas/io.k8s.api.core.v1.PodSpec"}], "default": {}}}},
            "io.k8s.api.core.v1.PodSpec": {"type": "object", "required": ["containers"], "properties": {
                "containers": {"type": "array", "items": {"$ref": "#/components/schemas/io.k8s.api.core.v1.Container"},
                    "x-kubernetes-list-map-keys": ["name"], "x-kubernetes-list-type": "map",
                    "x-kubernetes-patch-merge-key": "name", "x-kubernetes-patch-strategy": "merge"},
                "volumes": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}},
                    "x-kubernetes-patch-merge-key": "name", "x-kubernetes-patch-strategy": "merge,retainKeys"},
                "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"},
                    "x-kubernetes-map-type": "atomic"},
                "tolerations": {"type": "array", "items": {"type": "object", "properties": {"key": {"type": "string"}}}}}},
            "io.k8s.api.core.v1.Container": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string", "default": ""}, "image": {"type": "string"},
                "args": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "atomic"},
                "ports": {"type": "array", "items": {"$ref": "#/components/schemas/io.k8s.api.core.v1.ContainerPort"},
                    "x-kubernetes-list-map-keys": ["containerPort", "protocol"], "x-kubernetes-list-type": "map",
                    "x-kubernetes-patch-merge-key": "containerPort", "x-kubernetes-patch-strategy": "merge"},
                "env": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"}, "value": {"type": "string"}}},
                    "x-kubernetes-patch-merge-key": "name", "x-kubernetes-patch-strategy": "merge"}}},
            "io.k8s.api.core.v1.ContainerPort": {"type": "object", "properties": {
                "containerPort": {"type": "integer"}, "protocol": {"type": "string", "default": "TCP"},
                "name": {"type": "string"}}},
            "io.k8s.apiextensions.JSONSchemaProps": {"type": "object", "properties": {
                "items": {"$ref": "#/components/schemas/io.k8s.apiextensions.JSONSchemaProps"},
                "x-kubernetes-embedded-resource": {"type": "boolean"}}},
            "io.k8s.api.core.v1.ConfigMap": {"type": "object", "properties": {
                "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                "metadata": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
                "data": {"type": "object", "additionalProperties": {"type": "string"}},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                "x-kubernetes-group-version-kind": [{"group": "", "kind": "ConfigMap", "version": "v1"}]}
        });
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_maps_and_structs_as_schemaconv_reads_them() {
        let s = Schema::new(&fixtures::defs());
        let d = s.kind("apps", "v1", "Deployment").unwrap();
        let field = |t: TypeRef, n: &str| s.atom(t).map.as_ref().unwrap().fields[n];
        let pod = field(field(field(d, "spec"), "template"), "spec");
        let list = |t: TypeRef| s.atom(t).list.clone().unwrap().kind;
        assert_eq!(list(field(pod, "containers")), ListKind::Map(vec!["name".into()]));
        assert_eq!(list(field(pod, "volumes")), ListKind::Map(vec!["name".into()]));
        assert_eq!(list(field(pod, "tolerations")), ListKind::Atomic);
        assert!(s.atom(field(pod, "nodeSelector")).map.as_ref().unwrap().atomic);
        assert!(s.atom(field(field(d, "spec"), "selector")).map.as_ref().unwrap().atomic);
        assert!(!s.atom(field(d, "spec")).map.as_ref().unwrap().atomic);
        let meta = field(d, "metadata");
        assert_eq!(list(field(meta, "finalizers")), ListKind::Set);
        let c = s.atom(field(pod, "containers")).list.as_ref().unwrap().elem;
        let ports = list(field(c, "ports"));
        assert_eq!(ports, ListKind::Map(vec!["containerPort".into(), "protocol".into()]));
        let surge = field(field(field(field(d, "spec"), "strategy"), "rollingUpdate"), "maxSurge");
        assert_eq!(s.atom(surge).scalar, Some(Scalar::Untyped));
        // Recursive definitions end.
        let p = s.named_type("io.k8s.apiextensions.JSONSchemaProps").unwrap();
        assert_eq!(field(p, "items"), p);
        // preserve-unknown-fields is deduced.
        let cm = s.kind("", "v1", "ConfigMap").unwrap();
        assert_eq!(field(cm, "extra"), DEDUCED);
    }
}
