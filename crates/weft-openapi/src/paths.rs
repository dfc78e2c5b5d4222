//! The REST operations of a group-version's kinds, as kube-apiserver lists them in its OpenAPI v3
//! documents: each with its `x-kubernetes-action` and `x-kubernetes-group-version-kind`, its query
//! parameters (kubectl's QueryParamVerifierV3 looks for `fieldValidation` among PATCH's own), and
//! request and response bodies pointing at the definitions.

use serde_json::{Map, Value, json};
use weft_api::kinds::{self, Kind};

use crate::schemas::{self, V3_PREFIX};

const STATUS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Status";
const DELETE_OPTIONS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions";
const PATCH: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch";
const RESOURCE_LIST: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.APIResourceList";
const WRITE_TYPES: &[&str] = &["application/json", "application/yaml"];
const READ_TYPES: &[&str] = &["application/json", "application/yaml"];
/// What PATCH takes; `application/apply-patch+yaml` is server-side apply.
const PATCH_TYPES: &[&str] = &[
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
];

/// `api/v1` or `apis/apps/v1`: the v3 document's path under `/openapi/v3/`.
pub fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

/// The kind a subresource's body is: `scale` takes autoscaling/v1 Scale, `token` an
/// authentication.k8s.io/v1 TokenRequest; `status` is the kind itself. None: not JSON (streams).
fn subresource_kind<'a>(k: &'a Kind, sub: &str) -> Option<(&'a str, &'a str, &'a str)> {
    match sub {
        "status" => Some((k.group, k.version, k.kind)),
        "scale" => Some(("autoscaling", "v1", "Scale")),
        "token" => Some(("authentication.k8s.io", "v1", "TokenRequest")),
        "eviction" => Some(("policy", "v1", "Eviction")),
        "binding" => Some(("", "v1", "Binding")),
        _ => None,
    }
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("{V3_PREFIX}{name}")})
}

fn content(types: &[&str], schema: &Value) -> Value {
    Value::Object(types.iter().map(|t| (t.to_string(), json!({"schema": schema}))).collect())
}

fn query(name: &str, ty: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": ty, "uniqueItems": true}})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn write_params(patch: bool) -> Vec<Value> {
    let mut p = vec![
        query(
            "dryRun",
            "string",
            "When present, indicates that modifications should not be persisted. An invalid or unrecognized dryRun directive will result in an error response and no further processing of the request. Valid values are: - All: all dry run stages will be processed",
        ),
        query(
            "fieldManager",
            "string",
            "fieldManager is a name associated with the actor or entity that is making these changes. The value must be less than or 128 characters long, and only contain printable characters, as defined by https://golang.org/pkg/unicode/#IsPrint.",
        ),
        query(
            "fieldValidation",
            "string",
            "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore: This will ignore any unknown fields that are silently dropped from the object, and will ignore all but the last duplicate field that the decoder encounters. This is the default behavior prior to v1.23. - Warn: This will send a warning via the standard warning response header for each unknown field that is dropped from the object, and for each duplicate field that is encountered. The request will still succeed if there are no other errors, and will only persist the last of any duplicate fields. This is the default in v1.23+ - Strict: This will fail the request with a BadRequest error if any unknown fields would be dropped from the object, or if any duplicate fields are present. The error returned from the server will contain all unknown and duplicate fields encountered.",
        ),
    ];
    if patch {
        p.push(query("force", "boolean", "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people. Force flag must be unset for non-apply patch requests."));
    }
    p
}

fn list_params() -> Vec<Value> {
    [
        ("allowWatchBookmarks", "boolean"),
        ("continue", "string"),
        ("fieldSelector", "string"),
        ("labelSelector", "string"),
        ("limit", "integer"),
        ("resourceVersion", "string"),
        ("resourceVersionMatch", "string"),
        ("sendInitialEvents", "boolean"),
        ("timeoutSeconds", "integer"),
        ("watch", "boolean"),
    ]
    .iter()
    .map(|(n, t)| query(n, t, ""))
    .collect()
}

fn delete_params() -> Vec<Value> {
    vec![
        query("dryRun", "string", "When present, indicates that modifications should not be persisted."),
        query("gracePeriodSeconds", "integer", "The duration in seconds before the object should be deleted."),
        query(
            "orphanDependents",
            "boolean",
            "Deprecated: please use the PropagationPolicy, this field will be deprecated in 1.7.",
        ),
        query(
            "propagationPolicy",
            "string",
            "Whether and how garbage collection will be performed. Acceptable values are: 'Orphan', 'Background', 'Foreground'.",
        ),
    ]
}

/// One operation.
struct Op<'a> {
    action: &'a str,
    /// The camel-case verb of its operationId (`read`, `listNamespaced`, ...).
    id: String,
    description: String,
    params: Vec<Value>,
    body: Option<(Vec<&'a str>, Value)>,
    response: Option<Value>,
    created: bool,
}

impl Op<'_> {
    fn to_json(&self, gvk: &Value, tag: &str) -> Value {
        let mut responses = Map::new();
        let ok = |d: &str| match &self.response {
            Some(schema) => json!({"description": d, "content": content(READ_TYPES, schema)}),
            None => json!({"description": d, "content": {"*/*": {"schema": {"type": "string"}}}}),
        };
        responses.insert("200".into(), ok("OK"));
        if self.created {
            responses.insert("201".into(), ok("Created"));
            responses.insert("202".into(), ok("Accepted"));
        }
        responses.insert("401".into(), json!({"description": "Unauthorized"}));
        let mut op = json!({
            "tags": [tag],
            "description": self.description,
            "operationId": self.id,
            "responses": responses,
            "x-kubernetes-action": self.action,
            "x-kubernetes-group-version-kind": gvk,
        });
        if !self.params.is_empty() {
            op["parameters"] = json!(self.params);
        }
        if let Some((types, schema)) = &self.body {
            op["requestBody"] = json!({"required": true, "content": content(types, schema)});
        }
        op
    }
}

/// `CoreV1`, `AppsV1`, `NetworkingV1beta1`, `RbacAuthorizationV1`: the operationIds' middle.
fn gv_camel(group: &str, version: &str) -> String {
    let group = if group.is_empty() { "core" } else { group.trim_end_matches(".k8s.io") };
    let mut out = String::new();
    for part in group.split(['.', '-']) {
        let mut c = part.chars();
        if let Some(f) = c.next() {
            out.extend(f.to_uppercase());
            out.push_str(c.as_str());
        }
    }
    let mut v = version.chars();
    if let Some(f) = v.next() {
        out.extend(f.to_uppercase());
        out.push_str(v.as_str());
    }
    out
}

/// The paths of one group-version; None when it is not served.
pub fn paths(group: &str, version: &str) -> Option<Map<String, Value>> {
    let served: Vec<&Kind> = kinds::ALL.iter().filter(|k| k.group == group && k.version == version).collect();
    if served.is_empty() {
        return None;
    }
    let gv = gv_camel(group, version);
    let tag = if group.is_empty() {
        format!("core_{version}")
    } else {
        format!("{}_{version}", group.trim_end_matches(".k8s.io").replace('.', "_"))
    };
    let base = if group.is_empty() { format!("/api/{version}") } else { format!("/apis/{group}/{version}") };
    let mut out = Map::new();
    out.insert(
        format!("{base}/"),
        json!({"get": {"tags": [tag], "description": "get available resources", "operationId": format!("get{gv}APIResources"),
                        "responses": {"200": {"description": "OK", "content": content(READ_TYPES, &reference(RESOURCE_LIST))}, "401": {"description": "Unauthorized"}}}}),
    );
    for k in served {
        kind_paths(k, &base, &gv, &tag, &mut out);
    }
    Some(out)
}

fn kind_paths(k: &Kind, base: &str, gv: &str, tag: &str, out: &mut Map<String, Value>) {
    let gvk = json!({"group": k.group, "kind": k.kind, "version": k.version});
    let schema = schemas::name_of(k.group, k.version, k.kind).map(|n| reference(&n));
    let list_schema = schemas::name_of(k.group, k.version, &format!("{}List", k.kind)).map(|n| reference(&n));
    let ns = if k.namespaced { "Namespaced" } else { "" };
    let kind = k.kind;
    let coll = if k.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", k.plural)
    } else {
        format!("{base}/{}", k.plural)
    };
    let mut scope = vec![query(
        "pretty",
        "string",
        "If 'true', then the output is pretty printed. Defaults to 'false' unless the user-agent indicates a browser or command-line HTTP tool (curl and wget).",
    )];
    if k.namespaced {
        scope.push(path_param("namespace", "object name and auth scope, such as for teams and projects"));
    }
    let body = |types: &[&'static str], s: &Option<Value>| s.clone().map(|s| (types.to_vec(), s));
    let create = Op {
        action: "post",
        id: format!("create{gv}{ns}{kind}"),
        description: format!("create {a} {kind}", a = article(kind)),
        params: write_params(false),
        body: body(WRITE_TYPES, &schema),
        response: schema.clone(),
        created: true,
    };
    let ops_json = |ops: &[Op], params: &[Value]| {
        let mut item = Map::new();
        item.insert("parameters".into(), json!(params));
        for op in ops {
            let method = match op.action {
                "get" | "list" | "connect-get" => "get",
                "post" | "connect-post" => "post",
                "put" => "put",
                "patch" => "patch",
                _ => "delete",
            };
            item.insert(method.into(), op.to_json(&gvk, tag));
        }
        Value::Object(item)
    };
    if k.create_only {
        out.insert(coll, ops_json(&[create], &scope));
        return;
    }
    let list = |id: String| Op {
        action: "list",
        id,
        description: format!("list or watch objects of kind {kind}"),
        params: list_params(),
        body: None,
        response: list_schema.clone(),
        created: false,
    };
    let delete_collection = Op {
        action: "deletecollection",
        id: format!("deletecollection{gv}{ns}{kind}"),
        description: format!("delete collection of {kind}"),
        params: [delete_params(), list_params()].concat(),
        body: Some((vec!["application/json"], reference(DELETE_OPTIONS))),
        response: Some(reference(STATUS)),
        created: false,
    };
    out.insert(coll.clone(), ops_json(&[list(format!("list{gv}{ns}{kind}")), create, delete_collection], &scope));
    if k.namespaced {
        out.insert(
            format!("{base}/{}", k.plural),
            ops_json(&[list(format!("list{gv}{kind}ForAllNamespaces"))], &scope[..1]),
        );
    }
    let mut item_scope = vec![path_param("name", &format!("name of the {kind}"))];
    item_scope.extend(scope.iter().cloned());
    out.insert(format!("{coll}/{{name}}"), ops_json(&object_ops(gv, ns, kind, "", &schema, true), &item_scope));
    for sub in k.subresources {
        let sub_camel = camel(sub);
        let ops = match subresource_kind(k, sub) {
            Some((g, v, sk)) => {
                let sub_schema = schemas::name_of(g, v, sk).map(|n| reference(&n));
                if matches!(*sub, "status" | "scale") {
                    object_ops(gv, ns, kind, &sub_camel, &sub_schema, false)
                } else {
                    vec![Op {
                        action: "post",
                        id: format!("create{gv}{ns}{kind}{sub_camel}"),
                        description: format!("create {sub} of {a} {kind}", a = article(kind)),
                        params: write_params(false),
                        body: body(WRITE_TYPES, &sub_schema),
                        response: sub_schema.clone(),
                        created: true,
                    }]
                }
            }
            None if *sub == "log" => vec![Op {
                action: "get",
                id: format!("read{gv}{ns}{kind}Log"),
                description: format!("read log of the specified {kind}"),
                params: ["container", "follow", "previous", "sinceSeconds", "tailLines", "timestamps"]
                    .iter()
                    .map(|n| query(n, "string", ""))
                    .collect(),
                body: None,
                response: None,
                created: false,
            }],
            None => ["get", "post"]
                .iter()
                .map(|m| Op {
                    action: if *m == "get" { "connect-get" } else { "connect-post" },
                    id: format!("connect{}{gv}{ns}{kind}{sub_camel}", camel(m)),
                    description: format!("connect {m} requests to {sub} of {kind}"),
                    params: vec![],
                    body: None,
                    response: None,
                    created: false,
                })
                .collect(),
        };
        out.insert(format!("{coll}/{{name}}/{sub}"), ops_json(&ops, &item_scope));
    }
}

/// get, put, patch (and delete for the object itself) of an object or its status or scale.
fn object_ops<'a>(gv: &str, ns: &str, kind: &str, sub: &str, schema: &Option<Value>, delete: bool) -> Vec<Op<'a>> {
    let what = if sub.is_empty() {
        format!("the specified {kind}")
    } else {
        format!("{} of the specified {kind}", sub.to_lowercase())
    };
    let mut ops = vec![
        Op {
            action: "get",
            id: format!("read{gv}{ns}{kind}{sub}"),
            description: format!("read {what}"),
            params: vec![],
            body: None,
            response: schema.clone(),
            created: false,
        },
        Op {
            action: "put",
            id: format!("replace{gv}{ns}{kind}{sub}"),
            description: format!("replace {what}"),
            params: write_params(false),
            body: schema.clone().map(|s| (WRITE_TYPES.to_vec(), s)),
            response: schema.clone(),
            created: true,
        },
        Op {
            action: "patch",
            id: format!("patch{gv}{ns}{kind}{sub}"),
            description: format!("partially update {what}"),
            params: write_params(true),
            body: Some((PATCH_TYPES.to_vec(), reference(PATCH))),
            response: schema.clone(),
            created: true,
        },
    ];
    if delete {
        ops.push(Op {
            action: "delete",
            id: format!("delete{gv}{ns}{kind}"),
            description: format!("delete {a} {kind}", a = article(kind)),
            params: delete_params(),
            body: Some((vec!["application/json"], reference(DELETE_OPTIONS))),
            response: Some(reference(STATUS)),
            created: false,
        });
    }
    ops
}

fn camel(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

fn article(kind: &str) -> &'static str {
    if kind.starts_with(['A', 'E', 'I', 'O', 'U']) { "an" } else { "a" }
}
