//! Printing as kubectl prints: aligned tables from the server's Table, YAML and JSON, describe.

use serde_json::Value;

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
