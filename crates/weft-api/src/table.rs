//! Server-side printing: the `meta.k8s.io/v1` Table kubectl asks for, with the columns
//! kube-apiserver's printers give each kind. `weft get` prints the same tables.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::kinds::Kind;

pub struct Column {
    pub name: &'static str,
    pub ty: &'static str,
    /// 0: always shown; 1: only with `-o wide`.
    pub priority: u8,
}

const fn col(name: &'static str, priority: u8) -> Column {
    Column { name, ty: "string", priority }
}

pub fn columns(kind: &Kind) -> Vec<Column> {
    match kind.kind {
        "Pod" => vec![
            col("Name", 0),
            col("Ready", 0),
            col("Status", 0),
            col("Restarts", 0),
            col("Age", 0),
            col("IP", 1),
            col("Node", 1),
            col("Nominated Node", 1),
            col("Readiness Gates", 1),
        ],
        "Service" => vec![
            col("Name", 0),
            col("Type", 0),
            col("Cluster-IP", 0),
            col("External-IP", 0),
            col("Port(s)", 0),
            col("Age", 0),
            col("Selector", 1),
        ],
        "Endpoints" => vec![col("Name", 0), col("Endpoints", 0), col("Age", 0)],
        "EndpointSlice" => {
            vec![col("Name", 0), col("AddressType", 0), col("Ports", 0), col("Endpoints", 0), col("Age", 0)]
        }
        "Namespace" => vec![col("Name", 0), col("Status", 0), col("Age", 0)],
        "Node" => vec![
            col("Name", 0),
            col("Status", 0),
            col("Roles", 0),
            col("Age", 0),
            col("Version", 0),
            col("Internal-IP", 1),
            col("External-IP", 1),
            col("OS-Image", 1),
            col("Kernel-Version", 1),
            col("Container-Runtime", 1),
        ],
        "Deployment" => vec![
            col("Name", 0),
            col("Ready", 0),
            col("Up-to-date", 0),
            col("Available", 0),
            col("Age", 0),
            col("Containers", 1),
            col("Images", 1),
            col("Selector", 1),
        ],
        "ReplicaSet" | "ReplicationController" => vec![
            col("Name", 0),
            col("Desired", 0),
            col("Current", 0),
            col("Ready", 0),
            col("Age", 0),
            col("Containers", 1),
            col("Images", 1),
            col("Selector", 1),
        ],
        "DaemonSet" => vec![
            col("Name", 0),
            col("Desired", 0),
            col("Current", 0),
            col("Ready", 0),
            col("Up-to-date", 0),
            col("Available", 0),
            col("Node Selector", 0),
            col("Age", 0),
            col("Containers", 1),
            col("Images", 1),
            col("Selector", 1),
        ],
        "StatefulSet" => vec![col("Name", 0), col("Ready", 0), col("Age", 0), col("Containers", 1), col("Images", 1)],
        "ControllerRevision" => vec![col("Name", 0), col("Controller", 0), col("Revision", 0), col("Age", 0)],
        "Job" => vec![
            col("Name", 0),
            col("Status", 0),
            col("Completions", 0),
            col("Duration", 0),
            col("Age", 0),
            col("Containers", 1),
            col("Images", 1),
            col("Selector", 1),
        ],
        "Ingress" => {
            vec![col("Name", 0), col("Class", 0), col("Hosts", 0), col("Address", 0), col("Ports", 0), col("Age", 0)]
        }
        "IngressClass" => vec![col("Name", 0), col("Controller", 0), col("Parameters", 0), col("Age", 0)],
        "NetworkPolicy" => vec![col("Name", 0), col("Pod-Selector", 0), col("Age", 0)],
        "Lease" => vec![col("Name", 0), col("Holder", 0), col("Age", 0)],
        "Secret" => vec![col("Name", 0), col("Type", 0), col("Data", 0), col("Age", 0)],
        "ConfigMap" => vec![col("Name", 0), col("Data", 0), col("Age", 0)],
        "ServiceAccount" => vec![col("Name", 0), col("Secrets", 0), col("Age", 0)],
        "Role" | "ClusterRole" => vec![col("Name", 0), col("Created At", 0)],
        "RoleBinding" | "ClusterRoleBinding" => vec![
            col("Name", 0),
            col("Role", 0),
            col("Age", 0),
            col("Users", 1),
            col("Groups", 1),
            col("ServiceAccounts", 1),
        ],
        // kube-apiserver's event columns (`printEvent`), whichever group's Event is listed.
        "Event" => vec![
            col("Last Seen", 0),
            col("Type", 0),
            col("Reason", 0),
            col("Object", 0),
            col("Subobject", 1),
            col("Source", 1),
            col("Message", 0),
            col("First Seen", 1),
            col("Count", 1),
            col("Name", 1),
        ],
        _ => vec![col("Name", 0), col("Age", 0)],
    }
}

/// kube's `duration.HumanDuration`: 5s, 3m2s, 10m, 5h3m, 3d4h, 2y10d.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 { format!("{minutes}m") } else { format!("{minutes}m{s}s") };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 { format!("{hours}h") } else { format!("{hours}h{m}m") };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 { format!("{days}d") } else { format!("{days}d{h}h") };
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        let d = days % 365;
        return if d == 0 { format!("{years}y") } else { format!("{years}y{d}d") };
    }
    format!("{years}y")
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(|x| x.as_str()).unwrap_or("")
}
fn n(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(|x| x.as_i64()).unwrap_or(0)
}
fn arr<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr).and_then(|x| x.as_array()).map(|a| a.as_slice()).unwrap_or(&[])
}
fn or_none(s: String) -> String {
    if s.is_empty() { "<none>".into() } else { s }
}

fn age(v: &Value, now: jiff::Timestamp) -> String {
    age_of(s(v, "/metadata/creationTimestamp"), now)
}

fn age_of(ts: &str, now: jiff::Timestamp) -> String {
    match ts.parse::<jiff::Timestamp>() {
        Ok(t) => human_duration(now.as_second() - t.as_second()),
        Err(_) => "<unknown>".into(),
    }
}

/// `app=nginx,tier=web` from a label map (sorted, as Go maps print sorted here).
pub fn labels_string(m: Option<&Value>) -> String {
    let Some(Value::Object(m)) = m else {
        return String::new();
    };
    let mut kv: Vec<String> = m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect();
    kv.sort();
    kv.join(",")
}

fn selector_string(sel: Option<&Value>) -> String {
    let Some(sel) = sel else { return String::new() };
    let mut parts = vec![];
    if let Some(ml) = sel.get("matchLabels") {
        parts.push(labels_string(Some(ml)));
    }
    for e in sel.get("matchExpressions").and_then(|m| m.as_array()).into_iter().flatten() {
        let key = s(e, "/key");
        let vals: Vec<&str> = arr(e, "/values").iter().filter_map(|x| x.as_str()).collect();
        parts.push(match s(e, "/operator") {
            "In" => format!("{key} in ({})", vals.join(",")),
            "NotIn" => format!("{key} notin ({})", vals.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            _ => String::new(),
        });
    }
    parts.retain(|p| !p.is_empty());
    parts.join(",")
}

fn containers_images(tmpl_spec: Option<&Value>) -> (String, String) {
    let cs = tmpl_spec.and_then(|s| s.get("containers")).and_then(|c| c.as_array()).cloned().unwrap_or_default();
    let names: Vec<&str> = cs.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = cs.iter().map(|c| s(c, "/image")).collect();
    (names.join(","), images.join(","))
}

fn first_three(list: Vec<String>) -> String {
    if list.is_empty() {
        return "<none>".into();
    }
    let more = list.len().saturating_sub(3);
    let mut out = list.into_iter().take(3).collect::<Vec<_>>().join(",");
    if more > 0 {
        out.push_str(&format!(" + {more} more..."));
    }
    out
}

fn service_external_ip(v: &Value) -> String {
    let ty = s(v, "/spec/type");
    let mut ext: Vec<String> =
        arr(v, "/spec/externalIPs").iter().filter_map(|x| x.as_str().map(String::from)).collect();
    match ty {
        "ExternalName" => s(v, "/spec/externalName").to_string(),
        "LoadBalancer" => {
            let mut lb: Vec<String> = arr(v, "/status/loadBalancer/ingress")
                .iter()
                .map(|i| if s(i, "/ip").is_empty() { s(i, "/hostname").to_string() } else { s(i, "/ip").to_string() })
                .collect();
            lb.append(&mut ext);
            if lb.is_empty() { "<pending>".into() } else { lb.join(",") }
        }
        _ => or_none(ext.join(",")),
    }
}

fn service_ports(v: &Value) -> String {
    let ports: Vec<String> = arr(v, "/spec/ports")
        .iter()
        .map(|p| {
            let np = n(p, "/nodePort");
            let proto = s(p, "/protocol");
            if np > 0 { format!("{}:{np}/{proto}", n(p, "/port")) } else { format!("{}/{proto}", n(p, "/port")) }
        })
        .collect();
    or_none(ports.join(","))
}

fn pod_status(v: &Value) -> (String, String, String) {
    // kubectl's printPod: init containers first (the first unfinished one names the status),
    // then the app containers, sidecars (restartable init containers) counted with them.
    let statuses = arr(v, "/status/containerStatuses");
    let inits = arr(v, "/spec/initContainers");
    let is_sidecar = |name: &str| inits.iter().any(|c| s(c, "/name") == name && s(c, "/restartPolicy") == "Always");
    let total = arr(v, "/spec/containers").len() + inits.iter().filter(|c| s(c, "/restartPolicy") == "Always").count();
    let mut ready = 0usize;
    let mut restarts: i64 = 0;
    let mut sidecar_restarts: i64 = 0;
    let mut reason = s(v, "/status/reason").to_string();
    if reason.is_empty() {
        reason = s(v, "/status/phase").to_string();
    }
    let exit_reason = |t: &Value| {
        let r = s(t, "/reason");
        if !r.is_empty() {
            r.to_string()
        } else if n(t, "/signal") != 0 {
            format!("Signal:{}", n(t, "/signal"))
        } else {
            format!("ExitCode:{}", n(t, "/exitCode"))
        }
    };
    let mut initializing = false;
    let init_statuses = arr(v, "/status/initContainerStatuses");
    for (i, c) in init_statuses.iter().enumerate() {
        restarts += n(c, "/restartCount");
        let terminated = c.pointer("/state/terminated");
        let waiting = s(c, "/state/waiting/reason");
        if is_sidecar(s(c, "/name")) {
            sidecar_restarts += n(c, "/restartCount");
            if c.get("started").and_then(|b| b.as_bool()) == Some(true) {
                if c.get("ready").and_then(|b| b.as_bool()) == Some(true) {
                    ready += 1;
                }
                continue;
            }
        }
        match terminated {
            Some(t) if n(t, "/exitCode") == 0 => continue,
            Some(t) => reason = format!("Init:{}", exit_reason(t)),
            None if !waiting.is_empty() && waiting != "PodInitializing" => reason = format!("Init:{waiting}"),
            None => reason = format!("Init:{i}/{}", inits.len()),
        }
        initializing = true;
        break;
    }
    let initialized =
        arr(v, "/status/conditions").iter().any(|c| s(c, "/type") == "Initialized" && s(c, "/status") == "True");
    if !initializing || initialized {
        restarts = sidecar_restarts;
        let mut running = false;
        for c in statuses.iter().rev() {
            restarts += n(c, "/restartCount");
            let w = s(c, "/state/waiting/reason");
            if !w.is_empty() {
                reason = w.to_string();
            } else if let Some(t) = c.pointer("/state/terminated") {
                reason = exit_reason(t);
            } else if c.get("ready").and_then(|r| r.as_bool()) == Some(true) && c.pointer("/state/running").is_some() {
                running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && running {
            let pod_ready =
                arr(v, "/status/conditions").iter().any(|c| s(c, "/type") == "Ready" && s(c, "/status") == "True");
            reason = if pod_ready { "Running" } else { "NotReady" }.into();
        }
    }
    // As kubectl prints it: a pod being deleted is Terminating until it has finished (then its
    // phase says how), Unknown when its node was lost.
    let phase = s(v, "/status/phase");
    if !s(v, "/metadata/deletionTimestamp").is_empty() {
        if s(v, "/status/reason") == "NodeLost" {
            reason = "Unknown".into();
        } else if phase != "Succeeded" && phase != "Failed" {
            reason = "Terminating".into();
        }
    }
    if reason.is_empty() {
        reason = "Pending".into();
    }
    (format!("{ready}/{total}"), reason, restarts.to_string())
}

/// The cells of one row.
pub fn row(kind: &Kind, v: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let name = json!(s(v, "/metadata/name"));
    let a = json!(age(v, now));
    match kind.kind {
        "Pod" => {
            let (ready, status, restarts) = pod_status(v);
            let gates = arr(v, "/spec/readinessGates");
            vec![
                name,
                json!(ready),
                json!(status),
                json!(restarts),
                a,
                json!(or_none(s(v, "/status/podIP").into())),
                json!(or_none(s(v, "/spec/nodeName").into())),
                json!(or_none(s(v, "/status/nominatedNodeName").into())),
                json!(if gates.is_empty() { "<none>".to_string() } else { format!("0/{}", gates.len()) }),
            ]
        }
        "Service" => {
            let sel = labels_string(v.pointer("/spec/selector"));
            vec![
                name,
                json!(s(v, "/spec/type")),
                json!(or_none(s(v, "/spec/clusterIP").into())),
                json!(service_external_ip(v)),
                json!(service_ports(v)),
                a,
                json!(or_none(sel)),
            ]
        }
        "Endpoints" => {
            let mut eps = vec![];
            for sub in arr(v, "/subsets") {
                let ports = arr(sub, "/ports");
                for addr in arr(sub, "/addresses") {
                    if ports.is_empty() {
                        eps.push(s(addr, "/ip").to_string());
                    }
                    for p in ports {
                        eps.push(format!("{}:{}", s(addr, "/ip"), n(p, "/port")));
                    }
                }
            }
            vec![name, json!(first_three(eps)), a]
        }
        "EndpointSlice" => {
            let ports: Vec<String> = arr(v, "/ports")
                .iter()
                .map(|p| p.get("port").and_then(|x| x.as_i64()).map(|x| x.to_string()).unwrap_or("<unset>".into()))
                .collect();
            let addrs: Vec<String> = arr(v, "/endpoints")
                .iter()
                .flat_map(|e| arr(e, "/addresses").iter().filter_map(|a| a.as_str().map(String::from)))
                .collect();
            vec![
                name,
                json!(s(v, "/addressType")),
                json!(if ports.is_empty() { "<unset>".into() } else { ports.join(",") }),
                json!(first_three(addrs)),
                a,
            ]
        }
        "Namespace" => vec![name, json!(s(v, "/status/phase")), a],
        "Node" => {
            let ready = arr(v, "/status/conditions").iter().find(|c| s(c, "/type") == "Ready").map(|c| s(c, "/status"));
            let mut status = match ready {
                Some("True") => "Ready".to_string(),
                Some("False") => "NotReady".to_string(),
                _ => "Unknown".to_string(),
            };
            if v.pointer("/spec/unschedulable").and_then(|u| u.as_bool()) == Some(true) {
                status.push_str(",SchedulingDisabled");
            }
            let mut roles: Vec<String> = v
                .pointer("/metadata/labels")
                .and_then(|l| l.as_object())
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/").map(String::from))
                .collect();
            roles.sort();
            let addr = |t: &str| {
                arr(v, "/status/addresses").iter().find(|x| s(x, "/type") == t).map(|x| s(x, "/address").to_string())
            };
            vec![
                name,
                json!(status),
                json!(or_none(roles.join(","))),
                a,
                json!(s(v, "/status/nodeInfo/kubeletVersion")),
                json!(addr("InternalIP").unwrap_or("<none>".into())),
                json!(addr("ExternalIP").unwrap_or("<none>".into())),
                json!(s(v, "/status/nodeInfo/osImage")),
                json!(s(v, "/status/nodeInfo/kernelVersion")),
                json!(s(v, "/status/nodeInfo/containerRuntimeVersion")),
            ]
        }
        "Deployment" => {
            let (c, i) = containers_images(v.pointer("/spec/template/spec"));
            vec![
                name,
                json!(format!("{}/{}", n(v, "/status/readyReplicas"), n(v, "/spec/replicas"))),
                json!(n(v, "/status/updatedReplicas")),
                json!(n(v, "/status/availableReplicas")),
                a,
                json!(c),
                json!(i),
                json!(or_none(selector_string(v.pointer("/spec/selector")))),
            ]
        }
        "ReplicaSet" | "ReplicationController" => {
            let (c, i) = containers_images(v.pointer("/spec/template/spec"));
            let sel = if kind.kind == "ReplicaSet" {
                selector_string(v.pointer("/spec/selector"))
            } else {
                labels_string(v.pointer("/spec/selector"))
            };
            vec![
                name,
                json!(n(v, "/spec/replicas")),
                json!(n(v, "/status/replicas")),
                json!(n(v, "/status/readyReplicas")),
                a,
                json!(c),
                json!(i),
                json!(or_none(sel)),
            ]
        }
        "DaemonSet" => {
            let (c, i) = containers_images(v.pointer("/spec/template/spec"));
            vec![
                name,
                json!(n(v, "/status/desiredNumberScheduled")),
                json!(n(v, "/status/currentNumberScheduled")),
                json!(n(v, "/status/numberReady")),
                json!(n(v, "/status/updatedNumberScheduled")),
                json!(n(v, "/status/numberAvailable")),
                json!(or_none(labels_string(v.pointer("/spec/template/spec/nodeSelector")))),
                a,
                json!(c),
                json!(i),
                json!(or_none(selector_string(v.pointer("/spec/selector")))),
            ]
        }
        "StatefulSet" => {
            let (c, i) = containers_images(v.pointer("/spec/template/spec"));
            let ready = format!("{}/{}", n(v, "/status/readyReplicas"), n(v, "/spec/replicas"));
            vec![name, json!(ready), a, json!(c), json!(i)]
        }
        "ControllerRevision" => {
            // kube-apiserver's printer: the controller as `<kind>.<group>/<name>`, lowercase kind.
            let owner = arr(v, "/metadata/ownerReferences")
                .iter()
                .find(|o| o.get("controller").and_then(|c| c.as_bool()) == Some(true))
                .map(|o| {
                    let group = s(o, "/apiVersion").rsplit_once('/').map(|(g, _)| g).unwrap_or("");
                    let kind = s(o, "/kind").to_ascii_lowercase();
                    let gk = if group.is_empty() { kind } else { format!("{kind}.{group}") };
                    format!("{gk}/{}", s(o, "/name"))
                })
                .unwrap_or_else(|| "<none>".into());
            vec![name, json!(owner), json!(n(v, "/revision")), a]
        }
        "Job" => {
            let (c, i) = containers_images(v.pointer("/spec/template/spec"));
            let succeeded = n(v, "/status/succeeded");
            let completions = match (
                v.pointer("/spec/completions").and_then(|x| x.as_i64()),
                v.pointer("/spec/parallelism").and_then(|x| x.as_i64()),
            ) {
                (Some(c), _) => format!("{succeeded}/{c}"),
                (None, Some(p)) if p > 1 => format!("{succeeded}/1 of {p}"),
                _ => format!("{succeeded}/1"),
            };
            let started = s(v, "/status/startTime").parse::<jiff::Timestamp>().ok();
            let finished = s(v, "/status/completionTime").parse::<jiff::Timestamp>().ok();
            let duration = match (started, finished) {
                (None, _) => String::new(),
                (Some(st), None) => human_duration(now.as_second() - st.as_second()),
                (Some(st), Some(f)) => human_duration(f.as_second() - st.as_second()),
            };
            let has =
                |t: &str| arr(v, "/status/conditions").iter().any(|c| s(c, "/type") == t && s(c, "/status") == "True");
            let status = if has("Complete") {
                "Complete"
            } else if has("Failed") {
                "Failed"
            } else if v.pointer("/metadata/deletionTimestamp").is_some() {
                "Terminating"
            } else if has("SuccessCriteriaMet") {
                "SuccessCriteriaMet"
            } else if has("FailureTarget") {
                "FailureTarget"
            } else if v.pointer("/spec/suspend").and_then(|x| x.as_bool()) == Some(true) {
                "Suspended"
            } else {
                "Running"
            };
            vec![
                name,
                json!(status),
                json!(completions),
                json!(duration),
                a,
                json!(c),
                json!(i),
                json!(or_none(selector_string(v.pointer("/spec/selector")))),
            ]
        }
        "Ingress" => {
            let hosts: Vec<String> = arr(v, "/spec/rules")
                .iter()
                .map(|r| if s(r, "/host").is_empty() { "*".to_string() } else { s(r, "/host").to_string() })
                .collect();
            let addrs: Vec<String> = arr(v, "/status/loadBalancer/ingress")
                .iter()
                .map(|i| if s(i, "/ip").is_empty() { s(i, "/hostname").to_string() } else { s(i, "/ip").to_string() })
                .collect();
            let ports = if arr(v, "/spec/tls").is_empty() { "80" } else { "80, 443" };
            let class = s(v, "/spec/ingressClassName");
            vec![
                name,
                json!(or_none(class.into())),
                json!(if hosts.is_empty() { "*".to_string() } else { hosts.join(",") }),
                json!(addrs.join(",")),
                json!(ports),
                a,
            ]
        }
        "IngressClass" => {
            let p = v.pointer("/spec/parameters").map(|p| format!("{}/{}", s(p, "/kind"), s(p, "/name")));
            vec![name, json!(s(v, "/spec/controller")), json!(p.unwrap_or("<none>".into())), a]
        }
        "NetworkPolicy" => vec![name, json!(or_none(selector_string(v.pointer("/spec/podSelector")))), a],
        "Lease" => vec![name, json!(s(v, "/spec/holderIdentity")), a],
        "Secret" => {
            let data = v.get("data").and_then(|d| d.as_object()).map(|d| d.len()).unwrap_or(0);
            let ty = if s(v, "/type").is_empty() { "Opaque" } else { s(v, "/type") };
            vec![name, json!(ty), json!(data), a]
        }
        "ConfigMap" => {
            let d = v.get("data").and_then(|d| d.as_object()).map(|d| d.len()).unwrap_or(0)
                + v.get("binaryData").and_then(|d| d.as_object()).map(|d| d.len()).unwrap_or(0);
            vec![name, json!(d), a]
        }
        "ServiceAccount" => vec![name, json!(arr(v, "/secrets").len()), a],
        "Event" => event_row(v, now),
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => crate::rbac::row(kind, v, name, a),
        _ => vec![name, a],
    }
}

/// An Event's cells as kube-apiserver's `printEvent` makes them from a stored (core/v1) Event:
/// the first time is `firstTimestamp` or else `eventTime`; the last is `series.lastObservedTime`,
/// `lastTimestamp` or else the first; the count is `series.count`, `count`, or 1 for a singleton
/// of the new API.
fn event_row(v: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let first_ts = if s(v, "/firstTimestamp").is_empty() { s(v, "/eventTime") } else { s(v, "/firstTimestamp") };
    let first = age_of(first_ts, now);
    let mut last = if s(v, "/lastTimestamp").is_empty() { first.clone() } else { age_of(s(v, "/lastTimestamp"), now) };
    let mut count = n(v, "/count");
    if v.get("series").is_some_and(|x| x.is_object()) {
        last = age_of(s(v, "/series/lastObservedTime"), now);
        count = n(v, "/series/count");
    } else if count == 0 {
        count = 1;
    }
    let kind = s(v, "/involvedObject/kind").to_lowercase();
    let target = match s(v, "/involvedObject/name") {
        "" => kind,
        name => format!("{kind}/{name}"),
    };
    let non_empty = |a: &'_ str, b: &'_ str| if a.is_empty() { b.to_string() } else { a.to_string() };
    let component = non_empty(s(v, "/source/component"), s(v, "/reportingComponent"));
    let instance = non_empty(s(v, "/source/host"), s(v, "/reportingInstance"));
    let source = if instance.is_empty() { component } else { format!("{component}, {instance}") };
    vec![
        json!(last),
        json!(s(v, "/type")),
        json!(s(v, "/reason")),
        json!(target),
        json!(s(v, "/involvedObject/fieldPath")),
        json!(source),
        json!(s(v, "/message").trim()),
        json!(first),
        json!(count),
        json!(s(v, "/metadata/name")),
    ]
}

/// The whole Table for a list (or a single object), each row carrying its object as kubectl expects.
pub fn table(kind: &Kind, items: &[Arc<Value>], resource_version: u64, now: jiff::Timestamp) -> Value {
    let cols: Vec<Value> = columns(kind)
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": c.ty, "format": if c.name == "Name" { "name" } else { "" },
                   "description": "", "priority": c.priority})
        })
        .collect();
    // Each row's object in the version asked for (a view such as events.k8s.io's, converted).
    let rows: Vec<Value> = items
        .iter()
        .map(|o| json!({"cells": row(kind, o, now), "object": crate::convert::to_served(kind, (**o).clone())}))
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": cols,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::by_cli_name;

    #[test]
    fn durations_match_kubectl() {
        for (secs, want) in
            [(5, "5s"), (119, "119s"), (182, "3m2s"), (600, "10m"), (3 * 3600 + 60, "3h1m"), (50 * 3600, "2d2h")]
        {
            assert_eq!(human_duration(secs), want);
        }
    }

    #[test]
    fn event_rows_as_kube_apiserver_prints_them() {
        let now: jiff::Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let ev = by_cli_name("events").unwrap();
        assert_eq!(columns(ev).len(), 10);
        // Made by kube-rs's Recorder (events.k8s.io/v1, stored as core/v1), repeated twice.
        let recorded = json!({"metadata": {"name": "web.17"}, "eventTime": "2026-01-01T00:00:00.123456Z",
            "reason": "Pulled", "type": "Normal", "message": " done ", "reportingComponent": "weft.dev/test",
            "reportingInstance": "i1", "involvedObject": {"kind": "Pod", "name": "web", "fieldPath": "spec.containers{c}"},
            "series": {"count": 3, "lastObservedTime": "2026-01-01T00:09:30.5Z"}});
        assert_eq!(
            row(ev, &recorded, now),
            vec![
                json!("30s"),
                json!("Normal"),
                json!("Pulled"),
                json!("pod/web"),
                json!("spec.containers{c}"),
                json!("weft.dev/test, i1"),
                json!("done"),
                json!("10m"),
                json!(3),
                json!("web.17")
            ]
        );
        // A core/v1 Event as client-go's old recorder writes it.
        let legacy = json!({"metadata": {"name": "x"}, "reason": "Started", "involvedObject": {"kind": "Node"},
            "source": {"component": "kubelet"}, "count": 2,
            "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:05:00Z"});
        let r = row(ev, &legacy, now);
        assert_eq!(
            (&r[0], &r[3], &r[5], &r[7], &r[8]),
            (&json!("5m"), &json!("node"), &json!("kubelet"), &json!("10m"), &json!(2))
        );
        // A singleton of the new API counts 1 and was last seen when first seen.
        let single = json!({"metadata": {"name": "y"}, "eventTime": "2026-01-01T00:09:00Z", "involvedObject": {}});
        let r = row(ev, &single, now);
        assert_eq!((&r[0], &r[7], &r[8]), (&json!("60s"), &json!("60s"), &json!(1)));
    }

    #[test]
    fn pod_status_column_as_kubectl_prints_init_containers() {
        let pod = |inits: Value, init_statuses: Value, statuses: Value, initialized: bool| {
            json!({"metadata": {"name": "p"},
                   "spec": {"initContainers": inits, "containers": [{"name": "app"}]},
                   "status": {"phase": "Pending", "initContainerStatuses": init_statuses,
                              "containerStatuses": statuses,
                              "conditions": [{"type": "Initialized", "status": if initialized { "True" } else { "False" }}]}})
        };
        let two = json!([{"name": "a"}, {"name": "b"}]);
        let waiting_app = json!([{"name": "app", "ready": false, "restartCount": 0,
                                  "state": {"waiting": {"reason": "PodInitializing"}}}]);
        let done =
            json!({"name": "a", "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}});
        // The second of two init containers runs: Init:1/2.
        let running = json!({"name": "b", "restartCount": 0, "state": {"running": {}}});
        let (_, st, _) = pod_status(&pod(two.clone(), json!([done, running]), waiting_app.clone(), false));
        assert_eq!(st, "Init:1/2");
        // It failed and waits to restart: Init:CrashLoopBackOff, its restarts counted.
        let crashing = json!({"name": "b", "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}}});
        let (_, st, restarts) = pod_status(&pod(two.clone(), json!([done, crashing]), waiting_app.clone(), false));
        assert_eq!((st.as_str(), restarts.as_str()), ("Init:CrashLoopBackOff", "3"));
        // It ended with an error: Init:Error; without a reason, the exit code.
        let failed =
            json!({"name": "b", "restartCount": 0, "state": {"terminated": {"exitCode": 2, "reason": "Error"}}});
        assert_eq!(pod_status(&pod(two.clone(), json!([done, failed]), waiting_app.clone(), false)).1, "Init:Error");
        let bare = json!({"name": "b", "restartCount": 0, "state": {"terminated": {"exitCode": 2}}});
        assert_eq!(pod_status(&pod(two, json!([done, bare]), waiting_app, false)).1, "Init:ExitCode:2");
        // A started sidecar counts as a container of the pod; the app is then Running.
        let sidecar = json!([{"name": "s", "restartPolicy": "Always"}]);
        let side = json!([{"name": "s", "restartCount": 1, "started": true, "ready": true, "state": {"running": {}}}]);
        let app = json!([{"name": "app", "ready": true, "restartCount": 0, "state": {"running": {}}}]);
        let mut p = pod(sidecar, side, app, true);
        p["status"]["phase"] = json!("Running");
        assert_eq!(pod_status(&p), ("2/2".to_string(), "Running".to_string(), "1".to_string()));
    }

    #[test]
    fn service_row() {
        let v = json!({"metadata": {"name": "nginx", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.5", "selector": {"run": "nginx"},
                     "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]}});
        let now: jiff::Timestamp = "2026-01-01T00:00:30Z".parse().unwrap();
        let r = row(by_cli_name("svc").unwrap(), &v, now);
        assert_eq!(
            r,
            vec![
                json!("nginx"),
                json!("NodePort"),
                json!("10.96.0.5"),
                json!("<none>"),
                json!("80:30080/TCP"),
                json!("30s"),
                json!("run=nginx")
            ]
        );
    }

    #[test]
    fn workload_rows_match_kubectl() {
        let now: jiff::Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let k = |g: &str, kind: &str| crate::kinds::by_gvk(g, kind).unwrap();
        let job = json!({"metadata": {"name": "pi", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"completions": 3, "parallelism": 2, "template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}},
            "status": {"succeeded": 3, "startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:00:12Z",
                       "conditions": [{"type": "Complete", "status": "True"}]}});
        assert_eq!(
            &row(k("batch/v1", "Job"), &job, now)[..5],
            &[json!("pi"), json!("Complete"), json!("3/3"), json!("12s"), json!("60s")]
        );
        let cr = json!({"metadata": {"name": "fluentd-abc", "creationTimestamp": "2026-01-01T00:00:00Z",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "fluentd", "uid": "u", "controller": true}]},
            "revision": 2});
        assert_eq!(
            row(k("apps/v1", "ControllerRevision"), &cr, now)[1..3],
            [json!("daemonset.apps/fluentd"), json!(2)]
        );
        let sts = json!({"metadata": {"name": "web"}, "spec": {"replicas": 3}, "status": {"readyReplicas": 2}});
        assert_eq!(row(k("apps/v1", "StatefulSet"), &sts, now)[1], json!("2/3"));
        let ds = json!({"metadata": {"name": "d"}, "spec": {"template": {"spec": {"nodeSelector": {"disk": "ssd"}}}},
            "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberReady": 2}});
        let r = row(k("apps/v1", "DaemonSet"), &ds, now);
        assert_eq!(r[1..7], [json!(3), json!(3), json!(2), json!(0), json!(0), json!("disk=ssd")]);
    }
}
