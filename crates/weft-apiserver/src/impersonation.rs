//! User impersonation (`Impersonate-User`, `-Group`, `-Uid`, `-Extra-*` headers; `kubectl --as`,
//! `--as-group`, `--as-uid`, `auth can-i --as`), as kube-apiserver's impersonation filter does
//! it: each thing impersonated is authorized with the `impersonate` verb for the requesting user
//! (users, groups and uids, `serviceaccounts` in their namespace for a service-account name,
//! `userextras/<key>`), and the request then acts as the impersonated user.

use std::collections::BTreeMap;

use http::HeaderMap;

use crate::auth::User;
use crate::authz::{self, Attributes};
use crate::rest::Api;
use crate::status::ApiError;

pub const USER: &str = "impersonate-user";
pub const UID: &str = "impersonate-uid";
pub const GROUP: &str = "impersonate-group";
pub const EXTRA_PREFIX: &str = "impersonate-extra-";

/// What a request asks to impersonate, read from its headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    pub user: Option<String>,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl Wanted {
    fn is_empty(&self) -> bool {
        self.user.is_none() && self.uid.is_none() && self.groups.is_empty() && self.extra.is_empty()
    }
}

/// Reads the impersonation headers (400 for values that are not text or headers without a user).
pub fn read(headers: &HeaderMap) -> Result<Wanted, ApiError> {
    let text = |name: &str, v: &http::HeaderValue| {
        v.to_str().map(str::to_string).map_err(|_| ApiError::bad_request(format!("the {name} header is not text")))
    };
    let mut w = Wanted::default();
    for (name, v) in headers {
        let n = name.as_str();
        if n == USER {
            w.user = Some(text(n, v)?);
        } else if n == UID {
            w.uid = Some(text(n, v)?);
        } else if n == GROUP {
            w.groups.push(text(n, v)?);
        } else if let Some(key) = n.strip_prefix(EXTRA_PREFIX) {
            // Keys are percent-encoded in header names (upstream's unescapeExtraKey).
            let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy().to_lowercase();
            w.extra.entry(key).or_default().push(text(n, v)?);
        }
    }
    if w.user.is_none() && !w.is_empty() {
        let mut what = vec![];
        if w.uid.is_some() {
            what.push("uid".to_string());
        }
        what.extend(w.groups.iter().map(|g| format!("group {g:?}")));
        what.extend(w.extra.keys().map(|k| format!("extra {k:?}")));
        return Err(ApiError::bad_request(format!(
            "requested [{}] without impersonating a user: add Impersonate-User (kubectl --as)",
            what.join(", ")
        )));
    }
    Ok(w)
}

fn impersonate(group: &str, resource: &str, subresource: &str, namespace: &str, name: &str) -> Attributes {
    Attributes {
        verb: "impersonate".into(),
        resource_request: true,
        api_group: group.into(),
        api_version: "v1".into(),
        resource: resource.into(),
        subresource: subresource.into(),
        namespace: namespace.into(),
        name: name.into(),
        path: String::new(),
    }
}

/// The authorization checks impersonating `w` takes, and the user the request then acts as.
pub fn plan(w: &Wanted) -> Option<(Vec<Attributes>, User)> {
    let name = w.user.clone()?;
    let mut checks = vec![];
    let mut groups = w.groups.clone();
    match name.strip_prefix("system:serviceaccount:").and_then(|r| r.split_once(':')) {
        Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() => {
            checks.push(impersonate("", "serviceaccounts", "", ns, sa));
            if w.groups.is_empty() {
                groups.extend(["system:serviceaccounts".to_string(), format!("system:serviceaccounts:{ns}")]);
            }
        }
        _ => checks.push(impersonate("", "users", "", "", &name)),
    }
    checks.extend(w.groups.iter().map(|g| impersonate("", "groups", "", "", g)));
    if let Some(uid) = &w.uid {
        checks.push(impersonate("authentication.k8s.io", "uids", "", "", uid));
    }
    for (k, vs) in &w.extra {
        checks.extend(vs.iter().map(|v| impersonate("authentication.k8s.io", "userextras", k, "", v)));
    }
    // Everyone but the anonymous user is authenticated, unless a group says otherwise.
    if name != "system:anonymous"
        && !groups.iter().any(|g| g == "system:authenticated" || g == "system:unauthenticated")
    {
        groups.push("system:authenticated".into());
    }
    let user = User { name, uid: w.uid.clone().unwrap_or_default(), groups, extra: w.extra.clone() };
    Some((checks, user))
}

/// `user` as the request's impersonation headers make it, each step authorized for `user`.
pub fn apply(api: &Api, user: User, headers: &HeaderMap) -> Result<User, ApiError> {
    let w = read(headers)?;
    let Some((checks, as_user)) = plan(&w) else { return Ok(user) };
    for a in &checks {
        authz::authorize(api, &user, a)?;
    }
    Ok(as_user)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(h: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in h {
            m.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        m
    }

    #[test]
    fn no_headers_no_impersonation() {
        assert_eq!(plan(&read(&headers(&[])).unwrap()), None);
    }

    #[test]
    fn a_service_account_is_impersonated_in_its_namespace_with_its_groups() {
        let (checks, u) =
            plan(&read(&headers(&[("Impersonate-User", "system:serviceaccount:ns:robot")])).unwrap()).unwrap();
        assert_eq!(checks.len(), 1);
        assert_eq!(
            (checks[0].resource.as_str(), checks[0].namespace.as_str(), checks[0].name.as_str()),
            ("serviceaccounts", "ns", "robot")
        );
        assert_eq!(checks[0].verb, "impersonate");
        assert_eq!(u.name, "system:serviceaccount:ns:robot");
        assert_eq!(u.groups, ["system:serviceaccounts", "system:serviceaccounts:ns", "system:authenticated"]);
    }

    #[test]
    fn users_groups_uids_and_extras_are_each_checked() {
        let h = headers(&[
            ("Impersonate-User", "jane"),
            ("Impersonate-Group", "devs"),
            ("Impersonate-Group", "ops"),
            ("Impersonate-Uid", "42"),
            ("Impersonate-Extra-Reason%2Fwhy", "debug"),
        ]);
        let (checks, u) = plan(&read(&h).unwrap()).unwrap();
        let seen: Vec<(&str, &str, &str, &str)> = checks
            .iter()
            .map(|a| (a.api_group.as_str(), a.resource.as_str(), a.subresource.as_str(), a.name.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("", "users", "", "jane"),
                ("", "groups", "", "devs"),
                ("", "groups", "", "ops"),
                ("authentication.k8s.io", "uids", "", "42"),
                ("authentication.k8s.io", "userextras", "reason/why", "debug"),
            ]
        );
        assert_eq!(u.groups, ["devs", "ops", "system:authenticated"]);
        assert_eq!(u.uid, "42");
        assert_eq!(u.extra["reason/why"], ["debug"]);
    }

    #[test]
    fn groups_without_a_user_are_a_bad_request() {
        let e = read(&headers(&[("Impersonate-Group", "system:masters")])).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("without impersonating a user"), "{}", e.message);
    }

    #[test]
    fn the_anonymous_user_stays_unauthenticated() {
        let (_, u) = plan(&read(&headers(&[("Impersonate-User", "system:anonymous")])).unwrap()).unwrap();
        assert!(!u.groups.contains(&"system:authenticated".to_string()));
    }
}
