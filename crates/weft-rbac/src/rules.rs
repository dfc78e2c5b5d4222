//! PolicyRules: whether one allows a request (`RuleAllows`), and whether a set of rules covers
//! another (`Covers`, what the escalation checks and the bootstrap reconciliation ask), as
//! kube-apiserver's rbac helpers decide them.

use std::collections::HashSet;

use k8s_openapi::api::rbac::v1::PolicyRule;

use crate::quote::quote_list;

/// What a request asks, as RBAC reads kube-apiserver's authorizer attributes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Request<'a> {
    pub verb: &'a str,
    /// A request for a resource (else for a non-resource `path`).
    pub resource_request: bool,
    pub api_group: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    /// Empty for a cluster-scoped request.
    pub namespace: &'a str,
    pub name: &'a str,
    pub path: &'a str,
}

/// The values of an optional list field (`None` is no values, as Go's nil slice).
pub fn list(v: &Option<Vec<String>>) -> &[String] {
    v.as_deref().unwrap_or_default()
}

fn has(set: &[String], s: &str) -> bool {
    set.iter().any(|x| x == s)
}

fn verb_matches(rule: &PolicyRule, verb: &str) -> bool {
    rule.verbs.iter().any(|v| v == "*" || v == verb)
}

fn api_group_matches(rule: &PolicyRule, group: &str) -> bool {
    list(&rule.api_groups).iter().any(|g| g == "*" || g == group)
}

/// `resource` is `pods` or `pods/log`; a rule's `*/log` matches any resource's `log`.
fn resource_matches(rule: &PolicyRule, combined: &str, subresource: &str) -> bool {
    list(&rule.resources).iter().any(|r| {
        r == "*"
            || r == combined
            || (!subresource.is_empty()
                && r.len() == subresource.len() + 2
                && r.starts_with("*/")
                && r.ends_with(subresource))
    })
}

fn resource_name_matches(rule: &PolicyRule, name: &str) -> bool {
    let names = list(&rule.resource_names);
    names.is_empty() || has(names, name)
}

/// A non-resource URL rule: exact, `*`, or a prefix ending in `*` (`/healthz/*`).
fn url_covers(rule_url: &str, path: &str) -> bool {
    rule_url == "*" || rule_url == path || (rule_url.ends_with('*') && path.starts_with(rule_url.trim_end_matches('*')))
}

/// Does `rule` allow the request?
pub fn rule_allows(r: &Request, rule: &PolicyRule) -> bool {
    if r.resource_request {
        let combined;
        let resource = if r.subresource.is_empty() {
            r.resource
        } else {
            combined = format!("{}/{}", r.resource, r.subresource);
            &combined
        };
        verb_matches(rule, r.verb)
            && api_group_matches(rule, r.api_group)
            && resource_matches(rule, resource, r.subresource)
            && resource_name_matches(rule, r.name)
    } else {
        verb_matches(rule, r.verb) && list(&rule.non_resource_urls).iter().any(|u| url_covers(u, r.path))
    }
}

/// The most single-permission pieces a coverage check breaks rules into: past it, the rest of
/// a (hostile, huge) rule is reported as not covered instead of being enumerated.
pub const MAX_BREAKDOWN: usize = 1 << 20;

/// One permission: at most one group, resource, verb and name, or one URL and verb.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Atom<'a> {
    group: Option<&'a str>,
    resource: Option<&'a str>,
    url: Option<&'a str>,
    verb: &'a str,
    name: Option<&'a str>,
}

impl Atom<'_> {
    fn rule(&self) -> PolicyRule {
        let one = |s: Option<&str>| s.map(|s| vec![s.to_string()]);
        PolicyRule {
            api_groups: one(self.group),
            resources: one(self.resource),
            non_resource_urls: one(self.url),
            resource_names: one(self.name),
            verbs: vec![self.verb.to_string()],
        }
    }
}

/// Does `owner` hold the single permission `a`? (upstream's `ruleCovers` on a broken-down rule)
fn atom_covered(owner: &PolicyRule, a: &Atom) -> bool {
    let verbs = has(&owner.verbs, "*") || has(&owner.verbs, a.verb);
    let groups = match a.group {
        Some(g) => has(list(&owner.api_groups), "*") || has(list(&owner.api_groups), g),
        None => true,
    };
    let resources = match a.resource {
        Some(r) => {
            let own = list(&owner.resources);
            has(own, "*")
                || has(own, r)
                || r.split_once('/').is_some_and(|(_, sub)| own.iter().any(|o| o.strip_prefix("*/") == Some(sub)))
        }
        None => true,
    };
    let urls = match a.url {
        Some(u) => list(&owner.non_resource_urls)
            .iter()
            .any(|o| o == u || (o.ends_with('*') && u.starts_with(o.trim_end_matches('*')))),
        None => true,
    };
    let owner_names = list(&owner.resource_names);
    let names = match a.name {
        None => owner_names.is_empty(),
        Some(n) => owner_names.is_empty() || has(owner_names, n),
    };
    verbs && groups && resources && urls && names
}

/// Does `owner` hold everything `rule` grants, on its own? (A quick answer before the rule is
/// broken down: true for the common case of a rule held as it is or by a wider one.)
fn rule_covered_whole(owner: &PolicyRule, rule: &PolicyRule) -> bool {
    let all_in = |own: &[String], want: &[String]| has(own, "*") || want.iter().all(|w| has(own, w));
    let names_ok = {
        let own = list(&owner.resource_names);
        own.is_empty() || (!list(&rule.resource_names).is_empty() && all_in(own, list(&rule.resource_names)))
    };
    all_in(&owner.verbs, &rule.verbs)
        && (list(&rule.resources).is_empty()
            || (all_in(list(&owner.api_groups), list(&rule.api_groups))
                && all_in(list(&owner.resources), list(&rule.resources))
                && names_ok))
        && list(&rule.non_resource_urls).iter().all(|u| {
            list(&owner.non_resource_urls)
                .iter()
                .any(|o| o == u || (o.ends_with('*') && u.starts_with(o.trim_end_matches('*'))))
        })
}

/// Whether `owner` rules hold every permission `servant` rules grant, and the single
/// permissions they do not (upstream's `Covers`: each servant rule broken down into one group,
/// resource, verb and name at a time, each piece held by some owner rule).
pub fn covers(owner: &[PolicyRule], servant: &[PolicyRule]) -> (bool, Vec<PolicyRule>) {
    let mut missing = vec![];
    let mut seen: HashSet<Atom> = HashSet::new();
    let mut budget = MAX_BREAKDOWN;
    for rule in servant {
        if owner.iter().any(|o| rule_covered_whole(o, rule)) {
            continue;
        }
        let names: Vec<Option<&str>> = match list(&rule.resource_names) {
            [] => vec![None],
            ns => ns.iter().map(|n| Some(n.as_str())).collect(),
        };
        let size = list(&rule.api_groups)
            .len()
            .saturating_mul(list(&rule.resources).len())
            .saturating_mul(rule.verbs.len())
            .saturating_mul(names.len())
            .saturating_add(list(&rule.non_resource_urls).len().saturating_mul(rule.verbs.len()));
        if size > budget {
            // Too big to enumerate: refused as a whole (a denial, never a wrongful grant).
            missing.push(rule.clone());
            budget = 0;
            continue;
        }
        let mut atoms = Vec::with_capacity(size);
        for g in list(&rule.api_groups) {
            for r in list(&rule.resources) {
                for v in &rule.verbs {
                    for n in &names {
                        atoms.push(Atom { group: Some(g), resource: Some(r), url: None, verb: v, name: *n });
                    }
                }
            }
        }
        for u in list(&rule.non_resource_urls) {
            for v in &rule.verbs {
                atoms.push(Atom { group: None, resource: None, url: Some(u), verb: v, name: None });
            }
        }
        budget -= atoms.len();
        for a in atoms {
            if !owner.iter().any(|o| atom_covered(o, &a)) && seen.insert(a.clone()) {
                missing.push(a.rule());
            }
        }
    }
    (missing.is_empty(), missing)
}

/// Single-permission rules merged where only their verbs differ (upstream's `CompactRules`),
/// so that a message lists `pods: get, list` once rather than once per verb.
pub fn compact(rules: &[PolicyRule]) -> Vec<PolicyRule> {
    let mut out: Vec<PolicyRule> = vec![];
    let mut simple: Vec<PolicyRule> = vec![];
    for r in rules {
        let is_simple = list(&r.api_groups).len() == 1
            && list(&r.resources).len() == 1
            && list(&r.resource_names).len() <= 1
            && list(&r.non_resource_urls).is_empty();
        if !is_simple {
            out.push(r.clone());
            continue;
        }
        let same = |s: &&mut PolicyRule| {
            list(&s.api_groups) == list(&r.api_groups)
                && list(&s.resources) == list(&r.resources)
                && list(&s.resource_names) == list(&r.resource_names)
        };
        match simple.iter_mut().find(|s| same(s)) {
            Some(s) => {
                for v in &r.verbs {
                    if !s.verbs.contains(v) {
                        s.verbs.push(v.clone());
                    }
                }
            }
            None => simple.push(r.clone()),
        }
    }
    out.extend(simple);
    out
}

/// A rule as upstream's `CompactString` writes it in messages:
/// `{APIGroups:[""], Resources:["pods"], Verbs:["get" "list"]}`.
pub fn compact_string(r: &PolicyRule) -> String {
    let mut parts = vec![];
    for (label, values) in [
        ("APIGroups", list(&r.api_groups)),
        ("Resources", list(&r.resources)),
        ("NonResourceURLs", list(&r.non_resource_urls)),
        ("ResourceNames", list(&r.resource_names)),
        ("Verbs", &r.verbs[..]),
    ] {
        if !values.is_empty() {
            parts.push(format!("{label}:{}", quote_list(values)));
        }
    }
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> PolicyRule {
        let v = |s: &[&str]| (!s.is_empty()).then(|| s.iter().map(|x| x.to_string()).collect());
        PolicyRule {
            verbs: verbs.iter().map(|x| x.to_string()).collect(),
            api_groups: v(groups),
            resources: v(resources),
            resource_names: v(names),
            non_resource_urls: None,
        }
    }
    fn url_rule(verbs: &[&str], urls: &[&str]) -> PolicyRule {
        PolicyRule {
            verbs: verbs.iter().map(|x| x.to_string()).collect(),
            non_resource_urls: Some(urls.iter().map(|x| x.to_string()).collect()),
            ..Default::default()
        }
    }
    fn res<'a>(verb: &'a str, group: &'a str, resource: &'a str, sub: &'a str, name: &'a str) -> Request<'a> {
        Request {
            verb,
            resource_request: true,
            api_group: group,
            resource,
            subresource: sub,
            namespace: "ns",
            name,
            path: "",
        }
    }
    fn path<'a>(verb: &'a str, path: &'a str) -> Request<'a> {
        Request { verb, path, ..Default::default() }
    }

    #[test]
    fn resource_rules_match_verbs_groups_resources_and_names() {
        let r = rule(&["get", "list"], &[""], &["pods", "services"], &[]);
        assert!(rule_allows(&res("get", "", "pods", "", "p"), &r));
        assert!(rule_allows(&res("list", "", "services", "", ""), &r));
        assert!(!rule_allows(&res("delete", "", "pods", "", "p"), &r));
        assert!(!rule_allows(&res("get", "apps", "pods", "", "p"), &r));
        assert!(!rule_allows(&res("get", "", "secrets", "", "p"), &r));
        // A subresource is its own resource: `pods` does not grant `pods/log`.
        assert!(!rule_allows(&res("get", "", "pods", "log", "p"), &r));
        assert!(rule_allows(&res("get", "", "pods", "log", "p"), &rule(&["get"], &[""], &["pods/log"], &[])));
        assert!(rule_allows(&res("get", "", "pods", "log", "p"), &rule(&["get"], &[""], &["*/log"], &[])));
        assert!(!rule_allows(&res("get", "", "pods", "", "p"), &rule(&["get"], &[""], &["*/log"], &[])));
        assert!(!rule_allows(&res("get", "", "pods", "logs", "p"), &rule(&["get"], &[""], &["*/log"], &[])));
        // Stars.
        let all = rule(&["*"], &["*"], &["*"], &[]);
        assert!(rule_allows(&res("escalate", "rbac.authorization.k8s.io", "roles", "", "x"), &all));
        assert!(rule_allows(&res("get", "", "pods", "exec", "x"), &all));
        // Names: only those named; a list or create (no name) is not a named request.
        let named = rule(&["get", "list"], &[""], &["configmaps"], &["a"]);
        assert!(rule_allows(&res("get", "", "configmaps", "", "a"), &named));
        assert!(!rule_allows(&res("get", "", "configmaps", "", "b"), &named));
        assert!(!rule_allows(&res("list", "", "configmaps", "", ""), &named));
        // A resource rule does not grant paths, nor a path rule resources.
        assert!(!rule_allows(&path("get", "/api"), &all));
        assert!(!rule_allows(&res("get", "", "pods", "", ""), &url_rule(&["*"], &["*"])));
    }

    #[test]
    fn url_rules_match_exactly_or_by_a_trailing_star() {
        let r = url_rule(&["get"], &["/healthz", "/api/*", "/version/"]);
        assert!(rule_allows(&path("get", "/healthz"), &r));
        assert!(!rule_allows(&path("get", "/healthz/etcd"), &r));
        assert!(rule_allows(&path("get", "/api/v1"), &r));
        assert!(rule_allows(&path("get", "/api/"), &r));
        assert!(!rule_allows(&path("get", "/api"), &r));
        assert!(!rule_allows(&path("post", "/api/v1"), &r));
        assert!(!rule_allows(&path("get", "/version"), &r));
        assert!(rule_allows(&path("put", "/anything"), &url_rule(&["*"], &["*"])));
    }

    #[test]
    fn coverage_breaks_rules_down_to_single_permissions() {
        let owner = vec![rule(&["get", "list"], &[""], &["pods"], &[]), rule(&["get"], &[""], &["*/log"], &[])];
        assert!(covers(&owner, &[rule(&["get"], &[""], &["pods"], &[])]).0);
        assert!(covers(&owner, &[rule(&["get"], &[""], &["pods"], &["a", "b"])]).0);
        assert!(covers(&owner, &[rule(&["get"], &[""], &["pods/log", "services/log"], &[])]).0);
        let (ok, missing) = covers(&owner, &[rule(&["get", "list", "delete"], &["", "apps"], &["pods"], &[])]);
        assert!(!ok);
        let shown: Vec<String> = compact(&missing).iter().map(compact_string).collect();
        assert_eq!(
            shown,
            [
                r#"{APIGroups:[""], Resources:["pods"], Verbs:["delete"]}"#,
                r#"{APIGroups:["apps"], Resources:["pods"], Verbs:["get" "list" "delete"]}"#
            ]
        );
        // A named permission does not cover the unnamed one.
        let named = vec![rule(&["get"], &[""], &["pods"], &["a"])];
        assert!(covers(&named, &[rule(&["get"], &[""], &["pods"], &["a"])]).0);
        assert!(!covers(&named, &[rule(&["get"], &[""], &["pods"], &[])]).0);
        // URLs.
        let urls = vec![url_rule(&["get"], &["/healthz/*"])];
        assert!(covers(&urls, &[url_rule(&["get"], &["/healthz/etcd"])]).0);
        let (ok, missing) = covers(&urls, &[url_rule(&["get", "post"], &["/healthz/x", "/metrics"])]);
        assert!(!ok);
        let shown: Vec<String> = compact(&missing).iter().map(compact_string).collect();
        assert_eq!(
            shown,
            [
                r#"{NonResourceURLs:["/healthz/x"], Verbs:["post"]}"#,
                r#"{NonResourceURLs:["/metrics"], Verbs:["get"]}"#,
                r#"{NonResourceURLs:["/metrics"], Verbs:["post"]}"#
            ]
        );
        // Everything covers everything.
        let admin = vec![rule(&["*"], &["*"], &["*"], &[]), url_rule(&["*"], &["*"])];
        assert!(covers(&admin, &[rule(&["x"], &["y"], &["z/w"], &["n"]), url_rule(&["get"], &["/a"])]).0);
    }

    #[test]
    fn a_huge_rule_is_refused_without_enumerating_it() {
        let many: Vec<String> = (0..2000).map(|i| format!("r{i}")).collect();
        let many: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
        let huge = rule(&many, &many, &many, &[]);
        let (ok, missing) = covers(&[rule(&["get"], &[""], &["pods"], &[])], std::slice::from_ref(&huge));
        assert!(!ok);
        assert_eq!(missing, vec![huge.clone()]);
        // And held at once by a wider rule.
        assert!(covers(&[rule(&["*"], &["*"], &["*"], &[])], &[huge]).0);
    }
}
