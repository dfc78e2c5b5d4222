//! Printing as kubectl prints: aligned tables from the server's Table, YAML and JSON, describe
//! (a NetworkPolicy's with the pods it selects and the pods and namespaces its rules' peers match).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use serde_json::Value;
use weft_k8s::netpol::{self, Namespaces, Peer, PortMatch};
use weft_k8s::selectors::{Requirement, Selector};

/// Prints a `meta.k8s.io/v1` Table the way kubectl does (upper-case headers, columns padded by
/// three spaces), with a NAMESPACE column first when listing across namespaces.
pub fn render_table(t: &Value, wide: bool, with_namespace: bool, no_headers: bool) -> String {
    let cols = t.get("columnDefinitions").and_then(|c| c.as_array()).cloned().unwrap_or_default();
    let keep: Vec<usize> = cols
        .iter()
        .enumerate()
        .filter(|(_, c)| wide || c.get("priority").and_then(|p| p.as_i64()).unwrap_or(0) == 0)
        .map(|(i, _)| i)
        .collect();
    let mut rows: Vec<Vec<String>> = vec![];
    if !no_headers {
        let mut h: Vec<String> = keep.iter().map(|i| cols[*i]["name"].as_str().unwrap_or("").to_uppercase()).collect();
        if with_namespace {
            h.insert(0, "NAMESPACE".into());
        }
        rows.push(h);
    }
    for r in t.get("rows").and_then(|r| r.as_array()).into_iter().flatten() {
        let cells = r.get("cells").and_then(|c| c.as_array()).cloned().unwrap_or_default();
        let mut line: Vec<String> = keep
            .iter()
            .map(|i| match cells.get(*i) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => "<none>".into(),
                Some(v) => v.to_string(),
            })
            .collect();
        if with_namespace {
            line.insert(0, r.pointer("/object/metadata/namespace").and_then(|n| n.as_str()).unwrap_or("").to_string());
        }
        rows.push(line);
    }
    aligned(rows)
}

/// Rows as columns padded by three spaces, as kubectl prints tables.
pub fn aligned(rows: Vec<Vec<String>>) -> String {
    let ncols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..ncols)
        .map(|c| rows.iter().map(|r| r.get(c).map(|s| s.chars().count()).unwrap_or(0)).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < r.len() {
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn yaml(v: &Value) -> String {
    serde_saphyr::to_string(v).unwrap_or_else(|_| serde_json::to_string_pretty(v).unwrap_or_default())
}

fn map_lines(label: &str, m: Option<&Value>) -> String {
    let width = 26;
    let mut entries: Vec<String> = m
        .and_then(|m| m.as_object())
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    entries.sort();
    if entries.is_empty() {
        return format!("{:<width$}<none>\n", format!("{label}:"));
    }
    let mut s = String::new();
    for (i, e) in entries.iter().enumerate() {
        let head = if i == 0 { format!("{label}:") } else { String::new() };
        s.push_str(&format!("{head:<width$}{e}\n"));
    }
    s
}

fn line(label: &str, value: impl std::fmt::Display) -> String {
    format!("{:<26}{value}\n", format!("{label}:"))
}

/// `kubectl describe service`, with the endpoints from the Service's EndpointSlices.
pub fn describe_service(svc: &Value, slices: &[Value]) -> String {
    let s = |p: &str| svc.pointer(p).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let mut out = String::new();
    out += &line("Name", s("/metadata/name"));
    out += &line("Namespace", s("/metadata/namespace"));
    out += &map_lines("Labels", svc.pointer("/metadata/labels"));
    out += &map_lines("Annotations", svc.pointer("/metadata/annotations"));
    let sel = weft_api::table::labels_string(svc.pointer("/spec/selector"));
    out += &line("Selector", if sel.is_empty() { "<none>".into() } else { sel });
    let ty = s("/spec/type");
    out += &line("Type", &ty);
    if ty == "ExternalName" {
        out += &line("External Name", s("/spec/externalName"));
    } else {
        out += &line("IP Family Policy", s("/spec/ipFamilyPolicy"));
        let fams: Vec<&str> = svc
            .pointer("/spec/ipFamilies")
            .and_then(|f| f.as_array())
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
            .collect();
        out += &line("IP Families", fams.join(","));
        out += &line("IP", s("/spec/clusterIP"));
        let ips: Vec<&str> = svc
            .pointer("/spec/clusterIPs")
            .and_then(|f| f.as_array())
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
            .collect();
        out += &line("IPs", ips.join(","));
    }
    for ip in svc.pointer("/spec/externalIPs").and_then(|f| f.as_array()).into_iter().flatten() {
        out += &line("External IPs", ip.as_str().unwrap_or(""));
    }
    let lb: Vec<&str> = svc
        .pointer("/status/loadBalancer/ingress")
        .and_then(|f| f.as_array())
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("ip").and_then(|x| x.as_str()))
        .collect();
    if !lb.is_empty() {
        out += &line("LoadBalancer Ingress", lb.join(", "));
    }
    for p in svc.pointer("/spec/ports").and_then(|f| f.as_array()).into_iter().flatten() {
        let name = p.get("name").and_then(|n| n.as_str()).filter(|n| !n.is_empty()).unwrap_or("<unset>");
        let proto = p.get("protocol").and_then(|n| n.as_str()).unwrap_or("TCP");
        let port = p.get("port").and_then(|n| n.as_i64()).unwrap_or(0);
        out += &line("Port", format!("{name}  {port}/{proto}"));
        let tp = match p.get("targetPort") {
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::String(s)) => s.clone(),
            _ => port.to_string(),
        };
        out += &line("TargetPort", format!("{tp}/{proto}"));
        if let Some(np) = p.get("nodePort").and_then(|n| n.as_i64()) {
            out += &line("NodePort", format!("{name}  {np}/{proto}"));
        }
        // Endpoints for this port, from the slices.
        let mut eps = vec![];
        for sl in slices {
            let sl_port = sl
                .get("ports")
                .and_then(|x| x.as_array())
                .into_iter()
                .flatten()
                .find(|sp| {
                    sp.get("name").and_then(|n| n.as_str()).unwrap_or("")
                        == p.get("name").and_then(|n| n.as_str()).unwrap_or("")
                })
                .and_then(|sp| sp.get("port").and_then(|n| n.as_i64()));
            for e in sl.get("endpoints").and_then(|x| x.as_array()).into_iter().flatten() {
                if e.pointer("/conditions/ready").and_then(|r| r.as_bool()) == Some(false) {
                    continue;
                }
                for a in e.get("addresses").and_then(|x| x.as_array()).into_iter().flatten() {
                    eps.push(format!("{}:{}", a.as_str().unwrap_or(""), sl_port.unwrap_or(0)));
                }
            }
        }
        out += &line("Endpoints", eps.join(","));
    }
    out += &line("Session Affinity", s("/spec/sessionAffinity"));
    if ty == "NodePort" || ty == "LoadBalancer" {
        out += &line("External Traffic Policy", s("/spec/externalTrafficPolicy"));
    }
    if ty != "ExternalName" {
        out += &line("Internal Traffic Policy", s("/spec/internalTrafficPolicy"));
    }
    if let Some(h) = svc.pointer("/spec/healthCheckNodePort").and_then(|h| h.as_i64()) {
        out += &line("HealthCheck NodePort", h);
    }
    out += &line("Events", "<none>");
    out
}

/// Describe for kinds without a dedicated layout: metadata, then spec and status as YAML.
pub fn describe_generic(v: &Value) -> String {
    let s = |p: &str| v.pointer(p).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let mut out = String::new();
    out += &line("Name", s("/metadata/name"));
    if !s("/metadata/namespace").is_empty() {
        out += &line("Namespace", s("/metadata/namespace"));
    }
    out += &map_lines("Labels", v.pointer("/metadata/labels"));
    out += &map_lines("Annotations", v.pointer("/metadata/annotations"));
    out += &line("CreationTimestamp", s("/metadata/creationTimestamp"));
    for part in ["spec", "status", "data", "subsets", "endpoints", "ports"] {
        if let Some(x) = v.get(part) {
            out += &format!("{}:\n", capitalize(part));
            for l in yaml(x).lines() {
                out += &format!("  {l}\n");
            }
        }
    }
    out += &line("Events", "<none>");
    out
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

/// A selector in the `?labelSelector=` syntax (`app=web,tier in (a,b),!legacy`).
fn selector_text(sel: &Selector) -> String {
    if matches!(sel, Selector::Nothing) {
        return "<nothing>".into();
    }
    sel.requirements()
        .iter()
        .map(|r| match r {
            Requirement::Equals(k, v) => format!("{k}={v}"),
            Requirement::NotEquals(k, v) => format!("{k}!={v}"),
            Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
            Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
            Requirement::Exists(k) => k.clone(),
            Requirement::DoesNotExist(k) => format!("!{k}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Lines under one label: the first beside it, the rest aligned under the first; at most `max`
/// then how many more.
fn list_lines(label: &str, items: &[String], max: usize) -> String {
    if items.is_empty() {
        return line(label, "<none>");
    }
    let mut s = String::new();
    for (i, e) in items.iter().take(max).enumerate() {
        let head = if i == 0 { format!("{label}:") } else { String::new() };
        s.push_str(&format!("{head:<26}{e}\n"));
    }
    if items.len() > max {
        s.push_str(&format!("{:<26}... and {} more\n", "", items.len() - max));
    }
    s
}

fn pod_key(p: &Pod) -> String {
    format!("{}/{}", p.metadata.namespace.as_deref().unwrap_or(""), p.metadata.name.as_deref().unwrap_or(""))
}

fn pod_labels(p: &Pod) -> BTreeMap<String, String> {
    p.metadata.labels.clone().unwrap_or_default()
}

/// What a peer selects, in words.
fn peer_text(policy_ns: &str, p: &NetworkPolicyPeer) -> String {
    match netpol::peer(policy_ns, p) {
        Err(e) => format!("an invalid peer, which matches nothing ({e})"),
        Ok(Peer::Block(_)) => {
            let b = p.ip_block.as_ref();
            let cidr = b.map(|b| b.cidr.clone()).unwrap_or_default();
            let except = b.and_then(|b| b.except.clone()).unwrap_or_default();
            if except.is_empty() {
                format!("addresses in {cidr}")
            } else {
                format!("addresses in {cidr} except {}", except.join(", "))
            }
        }
        Ok(Peer::Pods(pp)) => {
            let pods = if pp.pods.is_everything() {
                "every pod".to_string()
            } else {
                format!("pods matching {}", selector_text(&pp.pods))
            };
            let nss = match &pp.namespaces {
                Namespaces::Own(ns) => format!("namespace {ns}"),
                Namespaces::Matching(s) if s.is_everything() => "every namespace".into(),
                Namespaces::Matching(s) => format!("namespaces matching {}", selector_text(s)),
            };
            format!("{pods} in {nss}")
        }
    }
}

fn port_text(p: &NetworkPolicyPort) -> String {
    match netpol::port(p) {
        Err(e) => format!("an invalid port, which matches nothing ({e})"),
        Ok(PortMatch::Range { protocol, first: 1, last: 65535 }) => format!("any {} port", protocol.as_str()),
        Ok(PortMatch::Range { protocol, first, last }) if first == last => {
            format!("{} port {first}", protocol.as_str())
        }
        Ok(PortMatch::Range { protocol, first, last }) => format!("{} ports {first}-{last}", protocol.as_str()),
        Ok(PortMatch::Named { protocol, name }) => format!("{} port named {name}", protocol.as_str()),
    }
}

/// `kubectl describe networkpolicy`'s facts in words, and what they select now: the pods the
/// policy selects (its namespace's pods its pod selector matches) and, per rule, the pods (by
/// labels, namespace labels or address) and namespaces its peers match. `pods` and
/// `namespaces` are the cluster's.
pub fn describe_network_policy(np: &NetworkPolicy, pods: &[Pod], namespaces: &[Namespace]) -> String {
    const MAX: usize = 100;
    let m = &np.metadata;
    let ns = m.namespace.clone().unwrap_or_else(|| "default".into());
    let spec = np.spec.clone().unwrap_or_default();
    let ns_labels: BTreeMap<String, BTreeMap<String, String>> = namespaces
        .iter()
        .map(|n| (n.metadata.name.clone().unwrap_or_default(), n.metadata.labels.clone().unwrap_or_default()))
        .collect();
    let mut out = String::new();
    out += &line("Name", m.name.as_deref().unwrap_or(""));
    out += &line("Namespace", &ns);
    let meta = serde_json::to_value(m).unwrap_or_default();
    out += &map_lines("Labels", meta.get("labels"));
    out += &map_lines("Annotations", meta.get("annotations"));
    out += &line("CreationTimestamp", meta.get("creationTimestamp").and_then(|t| t.as_str()).unwrap_or(""));
    let selector = netpol::pod_selector(np);
    out += &line(
        "Pod Selector",
        match &selector {
            Ok(s) if s.is_everything() => format!("<none> (every pod in namespace {ns})"),
            Ok(s) => selector_text(s),
            Err(e) => format!("invalid, selects nothing: {e}"),
        },
    );
    let dirs = netpol::directions(&spec);
    let types: Vec<&str> = [("Ingress", dirs.ingress), ("Egress", dirs.egress)]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(t, _)| t)
        .collect();
    out += &line("Policy Types", if types.is_empty() { "<none>".into() } else { types.join(", ") });
    let mut selected: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()) && netpol::selects(np, &ns, &pod_labels(p)))
        .collect();
    selected.sort_by_key(|p| pod_key(p));
    let selected: Vec<String> = selected
        .iter()
        .map(|p| {
            let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_else(|| "no address".into());
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_else(|| "no node".into());
            let note = if p.spec.as_ref().is_some_and(|s| s.host_network == Some(true)) {
                ", hostNetwork: not enforced"
            } else if weft_k8s::pods::is_finished(p) {
                ", finished"
            } else {
                ""
            };
            format!("{} ({ip} on {node}{note})", pod_key(p))
        })
        .collect();
    out += &list_lines("Selected Pods", &selected, MAX);
    let peer_pods = |p: &NetworkPolicyPeer| -> (Vec<String>, Option<Vec<String>>) {
        match netpol::peer(&ns, p) {
            Err(_) => (vec![], None),
            Ok(Peer::Block(b)) => (
                pods.iter()
                    .filter(|p| netpol::policy_address(p).is_some_and(|ip| b.contains(ip)))
                    .map(pod_key)
                    .collect(),
                None,
            ),
            Ok(Peer::Pods(pp)) => {
                let matched = pods
                    .iter()
                    .filter(|p| {
                        let pns = p.metadata.namespace.as_deref().unwrap_or("");
                        pp.matches(pns, &pod_labels(p), ns_labels.get(pns))
                    })
                    .map(pod_key)
                    .collect();
                let nss = match &pp.namespaces {
                    Namespaces::Own(_) => None,
                    Namespaces::Matching(s) => {
                        Some(ns_labels.iter().filter(|(_, l)| s.matches(l)).map(|(n, _)| n.clone()).collect())
                    }
                };
                (matched, nss)
            }
        }
    };
    for (dir, on, rules) in [
        (
            "Ingress",
            dirs.ingress,
            spec.ingress.as_ref().map(|r| r.iter().map(|r| (&r.from, &r.ports)).collect::<Vec<_>>()),
        ),
        ("Egress", dirs.egress, spec.egress.as_ref().map(|r| r.iter().map(|r| (&r.to, &r.ports)).collect::<Vec<_>>())),
    ] {
        let (toward, away) = if dir == "Ingress" { ("into", "from") } else { ("out of", "to") };
        let rules = rules.unwrap_or_default();
        if !on {
            out += &line(dir, format!("not affected (no {dir} type): this policy lets everything {toward} its pods"));
            continue;
        }
        if rules.is_empty() {
            out += &line(dir, format!("no rule: nothing {toward} the selected pods is allowed by this policy"));
            continue;
        }
        out += &line(dir, format!("the selected pods allow {toward} them only what a rule of their policies allows"));
        for (i, (peers, ports)) in rules.iter().enumerate() {
            let peers = peers.as_deref().unwrap_or_default();
            let ports = ports.as_deref().unwrap_or_default();
            let who = if peers.is_empty() {
                format!("{away} anywhere")
            } else {
                format!("{away} {}", peers.iter().map(|p| peer_text(&ns, p)).collect::<Vec<_>>().join(" or "))
            };
            let on_ports = if ports.is_empty() {
                "on any port".to_string()
            } else {
                format!("on {}", ports.iter().map(port_text).collect::<Vec<_>>().join(", "))
            };
            out += &format!("  {:<24}{who}, {on_ports}\n", format!("Rule {}:", i + 1));
            if peers.is_empty() {
                continue;
            }
            let mut matched: Vec<String> = vec![];
            let mut nss: Option<Vec<String>> = None;
            for p in peers {
                let (m, n) = peer_pods(p);
                matched.extend(m);
                if let Some(n) = n {
                    nss.get_or_insert_default().extend(n);
                }
            }
            matched.sort();
            matched.dedup();
            if let Some(n) = nss.as_mut() {
                n.sort();
                n.dedup();
                out += &list_lines("    Namespaces", n, MAX);
            }
            out += &list_lines("    Pods", &matched, MAX);
        }
    }
    out += &line("Events", "<none>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, labels: Value, ip: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        }))
        .unwrap()
    }

    fn namespace(name: &str, labels: Value) -> Namespace {
        let mut l = labels;
        l["kubernetes.io/metadata.name"] = json!(name);
        serde_json::from_value(json!({"metadata": {"name": name, "labels": l}})).unwrap()
    }

    use weft_testkit::run::describe_section as section;

    #[test]
    fn a_policy_is_described_with_the_pods_it_selects_and_its_peers_match() {
        let pods = vec![
            pod("x", "a", json!({"pod": "a"}), "10.244.1.5"),
            pod("x", "b", json!({"pod": "b", "tier": "db"}), "10.244.2.7"),
            pod("x", "c", json!({"pod": "c", "tier": "db"}), "10.244.3.9"),
            pod("y", "a", json!({"pod": "a"}), "10.244.1.6"),
            pod("z", "a", json!({"pod": "a"}), "10.244.1.7"),
        ];
        let namespaces =
            vec![namespace("x", json!({})), namespace("y", json!({"team": "blue"})), namespace("z", json!({}))];
        let np: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "x"},
            "spec": {
                "podSelector": {"matchLabels": {"tier": "db"}},
                "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}],
                     "ports": [{"port": 80}, {"protocol": "UDP", "port": 5000, "endPort": 5100}]},
                    {"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}, "podSelector": {}},
                              {"ipBlock": {"cidr": "10.244.1.0/24", "except": ["10.244.1.6/32"]}}]},
                ],
                "egress": [],
                "policyTypes": ["Ingress", "Egress"],
            },
        }))
        .unwrap();
        let text = describe_network_policy(&np, &pods, &namespaces);
        assert_eq!(
            section(&text, "Selected Pods"),
            ["x/b (10.244.2.7 on node-1)", "x/c (10.244.3.9 on node-1)"],
            "{text}"
        );
        assert!(text.contains("Pod Selector:             tier=db\n"), "{text}");
        assert!(text.contains("Policy Types:             Ingress, Egress\n"), "{text}");
        assert!(
            text.contains("  Rule 1:                 from pods matching pod=a in namespace x, on TCP port 80, UDP ports 5000-5100\n"),
            "{text}"
        );
        assert_eq!(section(&text, "    Pods")[0], "x/a", "{text}");
        assert!(
            text.contains(
                "from every pod in namespaces matching team=blue or addresses in 10.244.1.0/24 except 10.244.1.6/32, on any port"
            ),
            "{text}"
        );
        // Rule 2 matches y's pods by namespace and x/a and z/a by address (y/a is excepted but
        // selected by its namespace).
        let rule2 = text.split("Rule 2:").nth(1).unwrap();
        assert_eq!(section(rule2, "    Namespaces"), ["y"], "{rule2}");
        assert_eq!(section(rule2, "    Pods"), ["x/a", "y/a", "z/a"], "{rule2}");
        assert!(
            text.contains("Egress:                   no rule: nothing out of the selected pods is allowed"),
            "{text}"
        );
        // Not isolating a direction says so; an empty selector is every pod of the namespace.
        let open: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "all", "namespace": "x"},
            "spec": {"podSelector": {}, "ingress": [{}]},
        }))
        .unwrap();
        let text = describe_network_policy(&open, &pods, &namespaces);
        assert_eq!(section(&text, "Selected Pods").len(), 3, "{text}");
        assert!(text.contains("<none> (every pod in namespace x)"), "{text}");
        assert!(text.contains("  Rule 1:                 from anywhere, on any port\n"), "{text}");
        assert!(text.contains("Egress:                   not affected"), "{text}");
    }
}
