//! Validation of objects users send, following kube-apiserver's rules for the fields weft uses.
//! Every error names the field and says how to fix it.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    Container, Endpoints, Namespace, Pod, PodSpec, PodTemplateSpec, ReplicationController, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, NetworkPolicy, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::errors::FieldError;

pub type Errors = Vec<FieldError>;

const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];

pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// An IANA service name, as a named port must be (`http`, `dns-tcp`).
pub fn is_iana_svc_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

pub fn is_label_key(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns1123_subdomain(prefix) && is_label_name(name),
        None => is_label_name(s),
    }
}

pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_label_name(s)
}

fn check_labels(field: &str, labels: Option<&BTreeMap<String, String>>, errs: &mut Errors) {
    for (k, v) in labels.into_iter().flatten() {
        if !is_label_key(k) {
            errs.push(FieldError::invalid_str(
                field,
                k,
                "a label key must be 63 characters or less of alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric, with an optional DNS subdomain prefix and '/' (e.g. 'app' or 'example.com/tier')",
            ));
        }
        if !is_label_value(v) {
            errs.push(FieldError::invalid_str(
                field.to_string(),
                v,
                "a label value must be empty or 63 characters or less of alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric (e.g. 'MyValue' or 'my_value')",
            ));
        }
    }
}

/// Which rule a kind's names follow.
#[derive(Clone, Copy)]
pub enum NameRule {
    Dns1123Label,
    Dns1123Subdomain,
    Dns1035Label,
}

pub fn check_name(name: &str, rule: NameRule, field: &str, errs: &mut Errors) {
    let (ok, what) = match rule {
        NameRule::Dns1123Label => (
            is_dns1123_label(name),
            "a lowercase RFC 1123 label must be 63 characters or less of lowercase letters, digits and '-', starting and ending with a letter or digit (e.g. 'my-name')",
        ),
        NameRule::Dns1123Subdomain => (
            is_dns1123_subdomain(name),
            "a lowercase RFC 1123 subdomain must be 253 characters or less of lowercase letters, digits, '-' and '.', each part starting and ending with a letter or digit (e.g. 'example.com')",
        ),
        NameRule::Dns1035Label => (
            is_dns1035_label(name),
            "a DNS-1035 label must be 63 characters or less of lowercase letters, digits and '-', starting with a letter and ending with a letter or digit (e.g. 'my-name')",
        ),
    };
    if !ok {
        errs.push(FieldError::invalid_str(field, name, what));
    }
}

/// Checks `metadata`: name (or generateName), namespace and labels.
pub fn check_meta(md: &ObjectMeta, rule: NameRule, namespaced: bool, errs: &mut Errors) {
    match (&md.name, &md.generate_name) {
        (Some(n), _) if !n.is_empty() => check_name(n, rule, "metadata.name", errs),
        (_, Some(g)) if !g.is_empty() => {
            // generateName gets five characters appended; check it as if it had them.
            let probe = format!("{}abcde", g);
            if !matches!(rule, NameRule::Dns1123Subdomain) && probe.len() > 63 || !is_dns1123_subdomain(&probe) {
                errs.push(FieldError::invalid_str(
                    "metadata.generateName",
                    g,
                    "must be a valid name prefix: lowercase letters, digits and '-'",
                ));
            }
        }
        _ => errs.push(FieldError::required("metadata.name", "name or generateName is required: set metadata.name")),
    }
    if namespaced
        && let Some(ns) = &md.namespace
        && !ns.is_empty()
    {
        check_name(ns, NameRule::Dns1123Label, "metadata.namespace", errs);
    }
    check_labels("metadata.labels", md.labels.as_ref(), errs);
}

fn check_port_number(field: String, port: i32, errs: &mut Errors) {
    if !(1..=65535).contains(&port) {
        errs.push(FieldError::invalid(field, port, "must be between 1 and 65535, inclusive"));
    }
}

fn check_protocol(field: String, p: Option<&String>, errs: &mut Errors) {
    if let Some(p) = p
        && !PROTOCOLS.contains(&p.as_str())
    {
        errs.push(FieldError::not_supported(field, p, PROTOCOLS));
    }
}

fn check_ip(field: String, ip: &str, errs: &mut Errors) {
    if ip.parse::<IpAddr>().is_err() {
        errs.push(FieldError::invalid_str(field, ip, "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"));
    }
}

/// Why an address may not be an endpoint or an external IP (kube-apiserver's
/// `ValidateNonSpecialIP`, and all multicast): traffic to a Service must never be steered to
/// this host itself or to a range that is not a host's. None when it is an ordinary address.
pub fn special_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) if a.is_unspecified() => Some("may not be unspecified (0.0.0.0)"),
        IpAddr::V6(a) if a.is_unspecified() => Some("may not be unspecified (::)"),
        IpAddr::V4(a) if a.is_loopback() => Some("may not be in the loopback range (127.0.0.0/8, ::1/128)"),
        IpAddr::V6(a) if a.is_loopback() => Some("may not be in the loopback range (127.0.0.0/8, ::1/128)"),
        IpAddr::V4(a) if a.is_link_local() => Some("may not be in the link-local range (169.254.0.0/16, fe80::/10)"),
        IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80 => {
            Some("may not be in the link-local range (169.254.0.0/16, fe80::/10)")
        }
        IpAddr::V4(a) if a.is_multicast() => Some("may not be a multicast address (224.0.0.0/4, ff00::/8)"),
        IpAddr::V6(a) if a.is_multicast() => Some("may not be a multicast address (224.0.0.0/4, ff00::/8)"),
        IpAddr::V4(a) if a.is_broadcast() => Some("may not be the broadcast address (255.255.255.255)"),
        _ => None,
    }
}

/// A valid IP that is not special ([`special_ip`]).
fn check_non_special_ip(field: String, ip: &str, errs: &mut Errors) {
    match ip.parse::<IpAddr>() {
        Err(_) => errs.push(FieldError::invalid_str(
            field,
            ip,
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        )),
        Ok(a) => {
            if let Some(why) = special_ip(a) {
                errs.push(FieldError::invalid_str(field, ip, why));
            }
        }
    }
}

pub(crate) fn check_selector(field: &str, sel: &LabelSelector, errs: &mut Errors) {
    check_labels(&format!("{field}.matchLabels"), sel.match_labels.as_ref(), errs);
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        if !is_label_key(&e.key) {
            errs.push(FieldError::invalid_str(format!("{f}.key"), &e.key, "must be a valid label key"));
        }
        match e.operator.as_str() {
            "In" | "NotIn" => {
                if e.values.as_ref().is_none_or(|v| v.is_empty()) {
                    errs.push(FieldError::required(
                        format!("{f}.values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    ));
                }
            }
            "Exists" | "DoesNotExist" => {
                if e.values.as_ref().is_some_and(|v| !v.is_empty()) {
                    errs.push(FieldError::forbidden(
                        format!("{f}.values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ));
                }
            }
            op => errs.push(FieldError::not_supported(
                format!("{f}.operator"),
                op,
                &["In", "NotIn", "Exists", "DoesNotExist"],
            )),
        }
    }
}

/// Does a label selector select these labels? (An invalid one selects nothing.)
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    weft_k8s::selectors::label_selector_matches(Some(sel), labels)
}

pub fn service(svc: &Service, errs: &mut Errors) {
    check_meta(&svc.metadata, NameRule::Dns1035Label, true, errs);
    let Some(spec) = &svc.spec else {
        errs.push(FieldError::required("spec", "a Service needs a spec with ports"));
        return;
    };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    const TYPES: &[&str] = &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
    if !TYPES.contains(&ty) {
        errs.push(FieldError::not_supported("spec.type", ty, TYPES));
    }
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
    let headless = cluster_ip == "None";
    if ty == "ExternalName" {
        match spec.external_name.as_deref() {
            None | Some("") => errs.push(FieldError::required(
                "spec.externalName",
                "an ExternalName Service needs the DNS name it aliases, e.g. 'db.example.com'",
            )),
            Some(n) => {
                let n = n.strip_suffix('.').unwrap_or(n);
                if !is_dns1123_subdomain(n) {
                    errs.push(FieldError::invalid_str(
                        "spec.externalName",
                        n,
                        "must be a DNS name of lowercase letters, digits, '-' and '.' (e.g. 'db.example.com')",
                    ));
                }
            }
        }
        if !cluster_ip.is_empty() {
            errs.push(FieldError::forbidden("spec.clusterIP", "may not be set for an ExternalName Service: remove it"));
        }
    } else if !cluster_ip.is_empty() && !headless {
        check_ip("spec.clusterIP".into(), cluster_ip, errs);
    }
    if headless && (ty == "NodePort" || ty == "LoadBalancer") {
        errs.push(FieldError::invalid_str(
            "spec.clusterIP",
            "None",
            format!("may not be set to 'None' for {ty} services: use type ClusterIP for a headless Service"),
        ));
    }
    let ports = spec.ports.as_deref().unwrap_or(&[]);
    if ports.is_empty() && ty != "ExternalName" && !headless {
        errs.push(FieldError::required("spec.ports", "list at least one port, e.g. '- port: 80'"));
    }
    let mut names = HashSet::new();
    let mut seen = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        match p.name.as_deref() {
            None | Some("") if ports.len() > 1 => errs.push(FieldError::required(
                format!("{f}.name"),
                "a Service with more than one port must name each port",
            )),
            None | Some("") => {}
            Some(n) => {
                if !is_dns1123_label(n) {
                    check_name(n, NameRule::Dns1123Label, &format!("{f}.name"), errs);
                }
                if !names.insert(n.to_string()) {
                    errs.push(FieldError::duplicate(format!("{f}.name"), format!("{n:?}")));
                }
            }
        }
        check_port_number(format!("{f}.port"), p.port, errs);
        check_protocol(format!("{f}.protocol"), p.protocol.as_ref(), errs);
        let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
        if !seen.insert((p.port, proto.clone())) {
            errs.push(FieldError::duplicate(f.clone(), format!("{{Port:{}, Protocol:{}}}", p.port, proto)));
        }
        match &p.target_port {
            Some(IntOrString::Int(t)) if *t != 0 => check_port_number(format!("{f}.targetPort"), *t, errs),
            Some(IntOrString::String(s)) if !is_iana_svc_name(s) => errs.push(FieldError::invalid_str(
                format!("{f}.targetPort"),
                s,
                "must be a port number (1-65535) or the name of a container port (at most 15 lowercase letters, digits and '-', with at least one letter)",
            )),
            _ => {}
        }
        if let Some(np) = p.node_port
            && np != 0
        {
            if ty == "ClusterIP" || ty == "ExternalName" {
                errs.push(FieldError::forbidden(
                    format!("{f}.nodePort"),
                    format!("may not be used when `type` is '{ty}': use type NodePort or LoadBalancer"),
                ));
            } else if !(1..=65535).contains(&np) {
                check_port_number(format!("{f}.nodePort"), np, errs);
            }
        }
    }
    if let Some(sa) = spec.session_affinity.as_deref()
        && sa != "None"
        && sa != "ClientIP"
    {
        errs.push(FieldError::not_supported("spec.sessionAffinity", sa, &["ClientIP", "None"]));
    }
    if let Some(t) =
        spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()).and_then(|c| c.timeout_seconds)
        && !(1..=86400).contains(&t)
    {
        errs.push(FieldError::invalid(
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            t,
            "must be greater than 0 and less than 86400",
        ));
    }
    if let Some(p) = spec.external_traffic_policy.as_deref() {
        if ty != "NodePort" && ty != "LoadBalancer" {
            errs.push(FieldError::invalid_str(
                "spec.externalTrafficPolicy",
                p,
                "may only be set for externally-accessible services (type NodePort or LoadBalancer)",
            ));
        } else if p != "Cluster" && p != "Local" {
            errs.push(FieldError::not_supported("spec.externalTrafficPolicy", p, &["Cluster", "Local"]));
        }
    }
    if let Some(p) = spec.internal_traffic_policy.as_deref()
        && p != "Cluster"
        && p != "Local"
    {
        errs.push(FieldError::not_supported("spec.internalTrafficPolicy", p, &["Cluster", "Local"]));
    }
    check_labels("spec.selector", spec.selector.as_ref(), errs);
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        check_non_special_ip(format!("spec.externalIPs[{i}]"), ip, errs);
    }
    if let Some(ip) = spec.load_balancer_ip.as_deref()
        && !ip.is_empty()
    {
        check_ip("spec.loadBalancerIP".into(), ip, errs);
    }
    for (i, r) in spec.load_balancer_source_ranges.iter().flatten().enumerate() {
        if r.trim().parse::<ipnet::IpNet>().is_err() {
            errs.push(FieldError::invalid_str(
                format!("spec.loadBalancerSourceRanges[{i}]"),
                r,
                "must be a list of IP ranges. For example, 10.240.0.0/24,10.250.0.0/24",
            ));
        }
    }
}

fn container(c: &Container, f: &str, errs: &mut Errors, port_names: &mut HashSet<String>) {
    check_name(&c.name, NameRule::Dns1123Label, &format!("{f}.name"), errs);
    if c.image.as_deref().unwrap_or("").is_empty() {
        errs.push(FieldError::required(format!("{f}.image"), "name the container image, e.g. 'nginx'"));
    }
    crate::env::container_env(c.env.as_deref().unwrap_or_default(), f, errs);
    for (j, p) in c.ports.iter().flatten().enumerate() {
        let pf = format!("{f}.ports[{j}]");
        check_port_number(format!("{pf}.containerPort"), p.container_port, errs);
        if let Some(hp) = p.host_port
            && hp != 0
        {
            check_port_number(format!("{pf}.hostPort"), hp, errs);
        }
        check_protocol(format!("{pf}.protocol"), p.protocol.as_ref(), errs);
        if let Some(n) = &p.name {
            if !is_iana_svc_name(n) {
                errs.push(FieldError::invalid_str(
                    format!("{pf}.name"),
                    n,
                    "a port name must be at most 15 lowercase letters, digits and '-', with at least one letter (e.g. 'http')",
                ));
            } else if !port_names.insert(n.clone()) {
                errs.push(FieldError::duplicate(format!("{pf}.name"), format!("{n:?}")));
            }
        }
    }
}

/// `is_pod`: the spec of a Pod, not of a template (a template's hostPort may be left unset).
pub fn pod_spec(spec: &PodSpec, f: &str, is_pod: bool, errs: &mut Errors) {
    if spec.containers.is_empty() {
        errs.push(FieldError::required(format!("{f}.containers"), "a pod needs at least one container"));
    }
    if spec.host_network == Some(true) {
        host_network_ports(spec, f, is_pod, errs);
    }
    let mut names = HashSet::new();
    let mut port_names = HashSet::new();
    for (i, c) in spec.containers.iter().enumerate() {
        if !names.insert(c.name.clone()) {
            errs.push(FieldError::duplicate(format!("{f}.containers[{i}].name"), format!("{:?}", c.name)));
        }
        container(c, &format!("{f}.containers[{i}]"), errs, &mut port_names);
    }
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        container(c, &format!("{f}.initContainers[{i}]"), errs, &mut HashSet::new());
    }
    if let Some(rp) = spec.restart_policy.as_deref()
        && !["Always", "OnFailure", "Never"].contains(&rp)
    {
        errs.push(FieldError::not_supported(format!("{f}.restartPolicy"), rp, &["Always", "OnFailure", "Never"]));
    }
    if let Some(h) = &spec.hostname {
        check_name(h, NameRule::Dns1123Label, &format!("{f}.hostname"), errs);
    }
    if let Some(s) = &spec.subdomain {
        check_name(s, NameRule::Dns1123Label, &format!("{f}.subdomain"), errs);
    }
}

/// With hostNetwork a container's port is its node's: hostPort, when set (always on a Pod,
/// where it is defaulted), must be the containerPort.
fn host_network_ports(spec: &PodSpec, f: &str, is_pod: bool, errs: &mut Errors) {
    let groups =
        [("containers", &spec.containers[..]), ("initContainers", spec.init_containers.as_deref().unwrap_or_default())];
    for (group, containers) in groups {
        for (i, c) in containers.iter().enumerate() {
            for (j, p) in c.ports.iter().flatten().enumerate() {
                let hp = p.host_port.unwrap_or(0);
                if (is_pod || hp != 0) && hp != p.container_port {
                    errs.push(FieldError::invalid(
                        format!("{f}.{group}[{i}].ports[{j}].hostPort"),
                        hp,
                        "must match `containerPort` when `hostNetwork` is true",
                    ));
                }
            }
        }
    }
}

pub fn pod(p: &Pod, errs: &mut Errors) {
    check_meta(&p.metadata, NameRule::Dns1123Subdomain, true, errs);
    match &p.spec {
        Some(s) => pod_spec(s, "spec", true, errs),
        None => errs.push(FieldError::required("spec", "a Pod needs a spec with containers")),
    }
}

fn template(t: Option<&PodTemplateSpec>, errs: &mut Errors) -> Option<BTreeMap<String, String>> {
    let Some(t) = t else {
        errs.push(FieldError::required("spec.template", "give the pod template the controller creates"));
        return None;
    };
    let labels = t.metadata.as_ref().and_then(|m| m.labels.clone());
    check_labels("spec.template.metadata.labels", labels.as_ref(), errs);
    match &t.spec {
        Some(s) => pod_spec(s, "spec.template.spec", false, errs),
        None => errs.push(FieldError::required("spec.template.spec", "the template needs containers")),
    }
    labels
}

fn workload(sel: Option<&LabelSelector>, tmpl: Option<&PodTemplateSpec>, replicas: Option<i32>, errs: &mut Errors) {
    let labels = template(tmpl, errs).unwrap_or_default();
    match sel {
        None => errs.push(FieldError::required("spec.selector", "give a selector matching the template's labels")),
        Some(s)
            if s.match_labels.as_ref().is_none_or(|m| m.is_empty())
                && s.match_expressions.as_ref().is_none_or(|m| m.is_empty()) =>
        {
            errs.push(FieldError::invalid("spec.selector", "{}", "empty selector is invalid for deployment"))
        }
        Some(s) => {
            check_selector("spec.selector", s, errs);
            if !selector_matches(s, &labels) {
                errs.push(FieldError::invalid(
                    "spec.template.metadata.labels",
                    format!("{labels:?}"),
                    "`selector` does not match template `labels`: make spec.selector.matchLabels a subset of the template's labels",
                ));
            }
        }
    }
    if let Some(r) = replicas
        && r < 0
    {
        errs.push(FieldError::invalid("spec.replicas", r, "must be greater than or equal to 0"));
    }
}

pub fn deployment(d: &Deployment, errs: &mut Errors) {
    check_meta(&d.metadata, NameRule::Dns1123Subdomain, true, errs);
    let s = &d.spec;
    workload(Some(&s.selector), Some(&s.template), s.replicas, errs);
    if let Some(st) = &s.strategy {
        match st.type_.as_deref().unwrap_or("RollingUpdate") {
            "RollingUpdate" => {
                let ru = st.rolling_update.clone().unwrap_or_default();
                surge_unavailable(
                    "spec.strategy.rollingUpdate",
                    ru.max_surge.as_ref(),
                    ru.max_unavailable.as_ref(),
                    errs,
                );
            }
            "Recreate" if st.rolling_update.is_some() => errs.push(FieldError::forbidden(
                "spec.strategy.rollingUpdate",
                "may not be specified when strategy `type` is 'Recreate'",
            )),
            "Recreate" => {}
            t => errs.push(FieldError::not_supported("spec.strategy.type", t, &["Recreate", "RollingUpdate"])),
        }
    }
    non_negative("spec.minReadySeconds", s.min_ready_seconds, errs);
    non_negative("spec.revisionHistoryLimit", s.revision_history_limit, errs);
    if let Some(p) = s.progress_deadline_seconds
        && p <= s.min_ready_seconds.unwrap_or(0)
    {
        errs.push(FieldError::invalid("spec.progressDeadlineSeconds", p, "must be greater than minReadySeconds"));
    }
}

fn non_negative(field: &str, v: Option<i32>, errs: &mut Errors) {
    if let Some(v) = v
        && v < 0
    {
        errs.push(FieldError::invalid(field, v, "must be greater than or equal to 0"));
    }
}

/// An IntOrString count or percentage (`25%`): its error, if any.
fn int_or_percent(field: &str, v: &IntOrString, errs: &mut Errors) -> bool {
    let ok = match v {
        IntOrString::Int(i) => *i >= 0,
        IntOrString::String(s) => s.strip_suffix('%').and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n <= 100),
    };
    if !ok {
        let shown = match v {
            IntOrString::Int(i) => i.to_string(),
            IntOrString::String(s) => s.clone(),
        };
        errs.push(FieldError::invalid_str(
            field,
            &shown,
            "must be a non-negative integer or a percentage between 0% and 100% (e.g. '25%')",
        ));
    }
    ok
}

fn is_zero(v: Option<&IntOrString>) -> bool {
    match v {
        None => true,
        Some(IntOrString::Int(i)) => *i == 0,
        Some(IntOrString::String(s)) => s.trim_end_matches('%').parse::<u32>() == Ok(0),
    }
}

/// maxSurge and maxUnavailable of a rolling update: each valid, not both zero (the rollout
/// could never move).
fn surge_unavailable(f: &str, surge: Option<&IntOrString>, unavailable: Option<&IntOrString>, errs: &mut Errors) {
    let a = surge.is_none_or(|v| int_or_percent(&format!("{f}.maxSurge"), v, errs));
    let b = unavailable.is_none_or(|v| int_or_percent(&format!("{f}.maxUnavailable"), v, errs));
    if a && b && is_zero(surge) && is_zero(unavailable) {
        errs.push(FieldError::invalid(
            format!("{f}.maxUnavailable"),
            0,
            "may not be 0 when `maxSurge` is 0: allow at least one of them",
        ));
    }
}

fn restart_policy(t: &PodTemplateSpec, allowed: &[&str], errs: &mut Errors) {
    let p = t.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always");
    if !allowed.contains(&p) {
        errs.push(FieldError::not_supported("spec.template.spec.restartPolicy", p, allowed));
    }
}

pub fn daemon_set(d: &DaemonSet, errs: &mut Errors) {
    check_meta(&d.metadata, NameRule::Dns1123Subdomain, true, errs);
    let s = &d.spec;
    workload(Some(&s.selector), Some(&s.template), None, errs);
    restart_policy(&s.template, &["Always"], errs);
    non_negative("spec.minReadySeconds", s.min_ready_seconds, errs);
    non_negative("spec.revisionHistoryLimit", s.revision_history_limit, errs);
    if let Some(st) = &s.update_strategy {
        match st.type_.as_deref().unwrap_or("RollingUpdate") {
            "RollingUpdate" => {
                let ru = st.rolling_update.clone().unwrap_or_default();
                surge_unavailable(
                    "spec.updateStrategy.rollingUpdate",
                    ru.max_surge.as_ref(),
                    ru.max_unavailable.as_ref(),
                    errs,
                );
            }
            "OnDelete" => {}
            t => errs.push(FieldError::not_supported("spec.updateStrategy.type", t, &["OnDelete", "RollingUpdate"])),
        }
    }
}

pub fn stateful_set(d: &StatefulSet, errs: &mut Errors) {
    check_meta(&d.metadata, NameRule::Dns1123Subdomain, true, errs);
    let s = &d.spec;
    workload(Some(&s.selector), Some(&s.template), s.replicas, errs);
    restart_policy(&s.template, &["Always"], errs);
    non_negative("spec.minReadySeconds", s.min_ready_seconds, errs);
    non_negative("spec.revisionHistoryLimit", s.revision_history_limit, errs);
    if let Some(n) = s.service_name.as_deref().filter(|n| !n.is_empty())
        && !is_dns1123_label(n)
    {
        errs.push(FieldError::invalid_str(
            "spec.serviceName",
            n,
            "must be the name of a Service (a DNS-1123 label): the pods' DNS names are <pod>.<serviceName>",
        ));
    }
    let p = s.pod_management_policy.as_deref().unwrap_or("OrderedReady");
    if !matches!(p, "OrderedReady" | "Parallel") {
        errs.push(FieldError::not_supported("spec.podManagementPolicy", p, &["OrderedReady", "Parallel"]));
    }
    if let Some(st) = &s.update_strategy {
        match st.type_.as_deref().unwrap_or("RollingUpdate") {
            "RollingUpdate" => {
                let ru = st.rolling_update.clone().unwrap_or_default();
                non_negative("spec.updateStrategy.rollingUpdate.partition", ru.partition, errs);
                if let Some(m) = &ru.max_unavailable
                    && int_or_percent("spec.updateStrategy.rollingUpdate.maxUnavailable", m, errs)
                    && is_zero(Some(m))
                {
                    errs.push(FieldError::invalid(
                        "spec.updateStrategy.rollingUpdate.maxUnavailable",
                        0,
                        "must be greater than 0",
                    ));
                }
            }
            "OnDelete" if st.rolling_update.is_some() => errs.push(FieldError::forbidden(
                "spec.updateStrategy.rollingUpdate",
                "only allowed for updateStrategy 'RollingUpdate'",
            )),
            "OnDelete" => {}
            t => errs.push(FieldError::not_supported("spec.updateStrategy.type", t, &["OnDelete", "RollingUpdate"])),
        }
    }
    // A pod's name is `<set>-<ordinal>` and must stay a DNS label (the pod-name label too).
    if let Some(n) = &d.metadata.name
        && n.len() > 52
    {
        errs.push(FieldError::invalid_str(
            "metadata.name",
            n,
            "must be no more than 52 characters: the pods are named <name>-<ordinal> and labelled with it",
        ));
    }
}

pub fn controller_revision(r: &ControllerRevision, errs: &mut Errors) {
    check_meta(&r.metadata, NameRule::Dns1123Subdomain, true, errs);
    if let Some(v) = r.revision
        && v < 0
    {
        errs.push(FieldError::invalid("revision", v, "must be greater than or equal to 0"));
    }
}

pub fn job(j: &Job, errs: &mut Errors) {
    check_meta(&j.metadata, NameRule::Dns1123Subdomain, true, errs);
    let Some(s) = &j.spec else {
        errs.push(FieldError::required("spec", "a Job needs a spec with a template"));
        return;
    };
    match &s.selector {
        Some(sel) => workload(Some(sel), Some(&s.template), None, errs),
        None if s.manual_selector == Some(true) => {
            errs.push(FieldError::required("spec.selector", "give a selector with `manualSelector: true`"))
        }
        // The selector is generated from the job's uid (absent only in a dry run of a pure check).
        None => {
            template(Some(&s.template), errs);
        }
    }
    let p = s.template.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always");
    if !matches!(p, "OnFailure" | "Never") {
        errs.push(FieldError::not_supported("spec.template.spec.restartPolicy", p, &["OnFailure", "Never"]));
    }
    non_negative("spec.parallelism", s.parallelism, errs);
    non_negative("spec.completions", s.completions, errs);
    non_negative("spec.backoffLimit", s.backoff_limit, errs);
    non_negative("spec.ttlSecondsAfterFinished", s.ttl_seconds_after_finished, errs);
    if let Some(a) = s.active_deadline_seconds
        && a <= 0
    {
        errs.push(FieldError::invalid("spec.activeDeadlineSeconds", a, "must be greater than 0"));
    }
    let mode = s.completion_mode.as_deref().unwrap_or("NonIndexed");
    if mode != "NonIndexed" {
        errs.push(FieldError::not_supported("spec.completionMode", mode, &["NonIndexed"]));
    }
}

pub fn replica_set(d: &ReplicaSet, errs: &mut Errors) {
    check_meta(&d.metadata, NameRule::Dns1123Subdomain, true, errs);
    let s = &d.spec;
    workload(Some(&s.selector), s.template.as_ref(), s.replicas, errs);
}

pub fn replication_controller(rc: &ReplicationController, errs: &mut Errors) {
    check_meta(&rc.metadata, NameRule::Dns1123Subdomain, true, errs);
    let Some(s) = &rc.spec else {
        errs.push(FieldError::required("spec", "a ReplicationController needs a spec"));
        return;
    };
    let sel = s.selector.clone().map(|m| LabelSelector { match_labels: Some(m), match_expressions: None });
    match sel {
        Some(sel) => workload(Some(&sel), s.template.as_ref(), s.replicas, errs),
        None => {
            template(s.template.as_ref(), errs);
        }
    }
}

pub fn namespace(ns: &Namespace, errs: &mut Errors) {
    check_meta(&ns.metadata, NameRule::Dns1123Label, false, errs);
}

pub fn endpoints(ep: &Endpoints, errs: &mut Errors) {
    check_meta(&ep.metadata, NameRule::Dns1123Subdomain, true, errs);
    for (i, s) in ep.subsets.iter().flatten().enumerate() {
        let f = format!("subsets[{i}]");
        for (j, a) in s.addresses.iter().flatten().enumerate() {
            check_non_special_ip(format!("{f}.addresses[{j}].ip"), &a.ip, errs);
        }
        for (j, a) in s.not_ready_addresses.iter().flatten().enumerate() {
            check_non_special_ip(format!("{f}.notReadyAddresses[{j}].ip"), &a.ip, errs);
        }
        for (j, p) in s.ports.iter().flatten().enumerate() {
            check_port_number(format!("{f}.ports[{j}].port"), p.port, errs);
            check_protocol(format!("{f}.ports[{j}].protocol"), p.protocol.as_ref(), errs);
        }
    }
}

pub fn endpoint_slice(es: &EndpointSlice, errs: &mut Errors) {
    check_meta(&es.metadata, NameRule::Dns1123Subdomain, true, errs);
    const TYPES: &[&str] = &["IPv4", "IPv6", "FQDN"];
    if !TYPES.contains(&es.address_type.as_str()) {
        errs.push(FieldError::not_supported("addressType", &es.address_type, TYPES));
    }
    for (i, e) in es.endpoints.iter().flatten().enumerate() {
        if e.addresses.is_empty() {
            errs.push(FieldError::required(format!("endpoints[{i}].addresses"), "list the endpoint's address"));
        }
        for (j, a) in e.addresses.iter().enumerate() {
            let f = format!("endpoints[{i}].addresses[{j}]");
            match es.address_type.as_str() {
                "IPv4" if a.parse::<std::net::Ipv4Addr>().is_err() => {
                    errs.push(FieldError::invalid_str(f, a, "must be a valid IPv4 address"))
                }
                "IPv6" if a.parse::<std::net::Ipv6Addr>().is_err() => {
                    errs.push(FieldError::invalid_str(f, a, "must be a valid IPv6 address"))
                }
                "IPv4" | "IPv6" => {
                    if let Some(why) = a.parse::<IpAddr>().ok().and_then(special_ip) {
                        errs.push(FieldError::invalid_str(f, a, why));
                    }
                }
                _ => {}
            }
        }
    }
    for (i, p) in es.ports.iter().flatten().enumerate() {
        if let Some(n) = p.port {
            check_port_number(format!("ports[{i}].port"), n, errs);
        }
        check_protocol(format!("ports[{i}].protocol"), p.protocol.as_ref(), errs);
    }
}

fn backend(b: &IngressBackend, f: &str, errs: &mut Errors) {
    match (&b.service, &b.resource) {
        (Some(s), None) => {
            check_name(&s.name, NameRule::Dns1035Label, &format!("{f}.service.name"), errs);
            match &s.port {
                None => errs
                    .push(FieldError::required(format!("{f}.service.port"), "give the Service port by number or name")),
                Some(p) => match (&p.name, p.number) {
                    (Some(_), Some(_)) => errs.push(FieldError::invalid(
                        format!("{f}.service.port"),
                        "name and number",
                        "cannot set both port name & port number: keep one",
                    )),
                    (Some(n), None) if !is_iana_svc_name(n) => errs.push(FieldError::invalid_str(
                        format!("{f}.service.port.name"),
                        n,
                        "must be a valid port name",
                    )),
                    (None, Some(n)) => check_port_number(format!("{f}.service.port.number"), n, errs),
                    (None, None) => {
                        errs.push(FieldError::required(format!("{f}.service.port"), "port name or number is required"))
                    }
                    _ => {}
                },
            }
        }
        (None, Some(_)) => {}
        (Some(_), Some(_)) => errs.push(FieldError::invalid(
            f,
            "service and resource",
            "cannot set both `service` and `resource` backends",
        )),
        (None, None) => errs.push(FieldError::required(f, "give a `service` (name and port) to send traffic to")),
    }
}

pub fn ingress(ing: &Ingress, errs: &mut Errors) {
    check_meta(&ing.metadata, NameRule::Dns1123Subdomain, true, errs);
    let Some(spec) = &ing.spec else { return };
    if let Some(b) = &spec.default_backend {
        backend(b, "spec.defaultBackend", errs);
    }
    for (i, r) in spec.rules.iter().flatten().enumerate() {
        let f = format!("spec.rules[{i}]");
        if let Some(h) = r.host.as_deref() {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            if !is_dns1123_subdomain(bare) || h.parse::<IpAddr>().is_ok() {
                errs.push(FieldError::invalid_str(
                    format!("{f}.host"),
                    h,
                    "must be a DNS name, not an IP address, optionally with a leading '*.' wildcard (e.g. 'foo.example.com')",
                ));
            }
        }
        for (j, p) in r.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
            let pf = format!("{f}.http.paths[{j}]");
            const TYPES: &[&str] = &["Exact", "Prefix", "ImplementationSpecific"];
            let pt = p.path_type.as_str();
            if !TYPES.contains(&pt) {
                errs.push(FieldError::not_supported(format!("{pf}.pathType"), pt, TYPES));
            }
            let path = p.path.as_deref().unwrap_or("");
            if (pt == "Exact" || pt == "Prefix") && !path.starts_with('/') {
                errs.push(FieldError::invalid_str(
                    format!("{pf}.path"),
                    path,
                    "must be an absolute path (start with '/')",
                ));
            }
            backend(&p.backend, &format!("{pf}.backend"), errs);
        }
    }
    for (i, t) in spec.tls.iter().flatten().enumerate() {
        for (j, h) in t.hosts.iter().flatten().enumerate() {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            if !is_dns1123_subdomain(bare) {
                errs.push(FieldError::invalid_str(format!("spec.tls[{i}].hosts[{j}]"), h, "must be a DNS name"));
            }
        }
    }
}

fn np_ports(ports: Option<&Vec<NetworkPolicyPort>>, f: &str, errs: &mut Errors) {
    for (i, p) in ports.into_iter().flatten().enumerate() {
        let pf = format!("{f}.ports[{i}]");
        check_protocol(format!("{pf}.protocol"), p.protocol.as_ref(), errs);
        match &p.port {
            Some(IntOrString::Int(n)) => {
                check_port_number(format!("{pf}.port"), *n, errs);
                if let Some(e) = p.end_port
                    && e < *n
                {
                    errs.push(FieldError::invalid(
                        format!("{pf}.endPort"),
                        e,
                        "must be greater than or equal to `port`",
                    ));
                }
            }
            Some(IntOrString::String(s)) => {
                if !is_iana_svc_name(s) {
                    errs.push(FieldError::invalid_str(
                        format!("{pf}.port"),
                        s,
                        "must be a port number or a valid port name",
                    ));
                }
                if p.end_port.is_some() {
                    errs.push(FieldError::forbidden(
                        format!("{pf}.endPort"),
                        "may not be specified when `port` is a name",
                    ));
                }
            }
            None => {
                if p.end_port.is_some() {
                    errs.push(FieldError::required(format!("{pf}.port"), "must be specified when `endPort` is"));
                }
            }
        }
    }
}

fn ip_block(b: &k8s_openapi::api::networking::v1::IPBlock, f: &str, errs: &mut Errors) {
    match b.cidr.parse::<ipnet::IpNet>() {
        Err(_) => {
            errs.push(FieldError::invalid_str(format!("{f}.cidr"), &b.cidr, "must be a valid CIDR (e.g. 10.0.0.0/16)"))
        }
        Ok(net) => {
            for (i, e) in b.except.iter().flatten().enumerate() {
                match e.parse::<ipnet::IpNet>() {
                    Ok(x) if net.contains(&x) && x.prefix_len() > net.prefix_len() => {}
                    Ok(_) => errs.push(FieldError::invalid_str(
                        format!("{f}.except[{i}]"),
                        e,
                        "must be a strict subset of `cidr`",
                    )),
                    Err(_) => errs.push(FieldError::invalid_str(format!("{f}.except[{i}]"), e, "must be a valid CIDR")),
                }
            }
        }
    }
}

fn np_peers(peers: Option<&Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>>, f: &str, errs: &mut Errors) {
    for (j, p) in peers.into_iter().flatten().enumerate() {
        let pf = format!("{f}[{j}]");
        // As kube-apiserver: a peer names something, and an ipBlock stands alone.
        let named = [p.pod_selector.is_some(), p.namespace_selector.is_some(), p.ip_block.is_some()];
        match named.iter().filter(|n| **n).count() {
            0 => errs.push(FieldError::required(
                pf.clone(),
                "must specify a peer: podSelector, namespaceSelector (or both), or ipBlock",
            )),
            n if n > 1 && p.ip_block.is_some() => {
                errs.push(FieldError::forbidden(pf.clone(), "may not specify both ipBlock and another peer"))
            }
            _ => {}
        }
        if let Some(s) = &p.pod_selector {
            check_selector(&format!("{pf}.podSelector"), s, errs);
        }
        if let Some(s) = &p.namespace_selector {
            check_selector(&format!("{pf}.namespaceSelector"), s, errs);
        }
        if let Some(b) = &p.ip_block {
            ip_block(b, &format!("{pf}.ipBlock"), errs);
        }
    }
}

/// A Lease, as `ValidateLeaseSpec` checks one.
pub fn lease(l: &k8s_openapi::api::coordination::v1::Lease, errs: &mut Errors) {
    check_meta(&l.metadata, NameRule::Dns1123Subdomain, true, errs);
    let Some(spec) = &l.spec else { return };
    if let Some(d) = spec.lease_duration_seconds.filter(|d| *d <= 0) {
        errs.push(FieldError::invalid("spec.leaseDurationSeconds", d, "must be greater than 0"));
    }
    if let Some(t) = spec.lease_transitions.filter(|t| *t < 0) {
        errs.push(FieldError::invalid("spec.leaseTransitions", t, "must be greater than or equal to 0"));
    }
}

pub fn network_policy(np: &NetworkPolicy, errs: &mut Errors) {
    check_meta(&np.metadata, NameRule::Dns1123Subdomain, true, errs);
    let Some(spec) = &np.spec else { return };
    if let Some(s) = &spec.pod_selector {
        check_selector("spec.podSelector", s, errs);
    }
    for (i, t) in spec.policy_types.iter().flatten().enumerate() {
        if t != "Ingress" && t != "Egress" {
            errs.push(FieldError::not_supported(format!("spec.policyTypes[{i}]"), t, &["Ingress", "Egress"]));
        }
    }
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        let f = format!("spec.ingress[{i}]");
        np_ports(r.ports.as_ref(), &f, errs);
        np_peers(r.from.as_ref(), &format!("{f}.from"), errs);
    }
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        let f = format!("spec.egress[{i}]");
        np_ports(r.ports.as_ref(), &f, errs);
        np_peers(r.to.as_ref(), &format!("{f}.to"), errs);
    }
}
