//! Who a request comes from (authentication): the bearer token it carries, as kube-apiserver's
//! token authenticators read it. The admin token (the lab's kubeconfig) is `kubernetes-admin`
//! in `system:masters`; a service-account token is its ServiceAccount
//! (`system:serviceaccount:<ns>:<name>`); every other token is refused with 401.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderMap, header};

use crate::rest::Api;
use crate::status::ApiError;
use crate::tokens::{self, TokenError};

/// An authenticated user, as `authentication.k8s.io/v1` `UserInfo` describes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    /// The holder of the admin token: `system:masters` is allowed everything, as in a
    /// kube-apiserver whose admin kubeconfig carries that group.
    pub fn admin() -> User {
        User {
            name: "kubernetes-admin".into(),
            uid: String::new(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
            extra: BTreeMap::new(),
        }
    }
}

impl User {
    /// A request without credentials, as kube-apiserver names it.
    pub fn anonymous() -> User {
        User {
            name: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
            extra: BTreeMap::new(),
        }
    }
}

/// Reads who a request is from its `Authorization` header: the admin token, or a
/// service-account token this server signed ([`crate::tokens`]) whose ServiceAccount (and bound
/// object) still exist; then applies the `Impersonate-*` headers ([`crate::impersonation`]).
pub struct Authenticator {
    admin_token: String,
    api: Arc<Api>,
}

impl Authenticator {
    pub fn new(admin_token: String, api: Arc<Api>) -> Authenticator {
        Authenticator { admin_token, api }
    }

    /// The user whose bearer token `headers` carry; `None` (401) for a missing or unknown token.
    pub fn authenticate(&self, headers: &HeaderMap) -> Option<User> {
        let given = bearer(headers)?;
        authenticate_token(&self.api, &self.admin_token, given, &[tokens::ISSUER.to_string()]).ok()
    }

    /// The user a request acts as: its token's (401 without a valid one), or the one it
    /// impersonates if that user may (403 if not, 400 for malformed headers).
    pub fn authenticate_request(&self, headers: &HeaderMap) -> Result<User, ApiError> {
        let user = self.authenticate(headers).ok_or_else(|| ApiError::new(401, "Unauthorized", "Unauthorized"))?;
        crate::impersonation::apply(&self.api, user, headers)
    }

    /// The admin token (TokenReview answers for it too).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }
}

/// The user `token` stands for, for one of `audiences`; why not, in upstream's words (a
/// TokenReview's `status.error`).
pub fn authenticate_token(api: &Api, admin_token: &str, token: &str, audiences: &[String]) -> Result<User, TokenError> {
    if !admin_token.is_empty() && constant_time_eq(token, admin_token) {
        return Ok(User::admin());
    }
    let accounts = api.accounts.get().ok_or(TokenError::NotOurs)?;
    let now = jiff::Timestamp::now().as_second();
    let claims = accounts.keys.verify(token, audiences, now)?;
    crate::service_accounts::user_of(api, &claims, now)
}

/// The token of an `Authorization: Bearer ...` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who made the request being served, and with what client: kube-apiserver passes this in the
/// request's context; here it is a task-local set around each request ([`Request::scope`]), so
/// the write path (field managers, RBAC's escalation checks) reads it without every verb taking
/// it as a parameter. Writes the server makes itself (bootstrap) run outside any scope and are
/// [`Request::internal`].
#[derive(Clone, Debug)]
pub struct Request {
    pub user: User,
    /// The `User-Agent` header: a write's default field manager is its first `/`-separated part.
    pub user_agent: String,
}

tokio::task_local! {
    static REQUEST: Request;
}

impl Request {
    /// The server itself (kube-apiserver's loopback client), in `system:masters`.
    pub fn internal() -> Request {
        Request {
            user: User {
                name: "system:apiserver".into(),
                uid: String::new(),
                groups: vec!["system:masters".into(), "system:authenticated".into()],
                extra: BTreeMap::new(),
            },
            user_agent: "weft-apiserver".into(),
        }
    }

    /// The request being served on this task ([`Request::internal`] outside any).
    pub fn current() -> Request {
        REQUEST.try_with(Request::clone).unwrap_or_else(|_| Request::internal())
    }

    /// Runs `f` as this request.
    pub async fn scope<F: std::future::Future>(self, f: F) -> F::Output {
        REQUEST.scope(self, f).await
    }
}
