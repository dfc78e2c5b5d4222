//! `authentication.k8s.io/v1` reviews, answered as kube-apiserver answers them: TokenReview
//! (is this token valid, and whose is it: what webhooks and in-cluster proxies ask) and
//! SelfSubjectReview (who am I: `kubectl auth whoami`).

use serde_json::{Value, json};

use crate::auth::{Request, User};
use crate::rest::Api;
use crate::status::ApiError;
use crate::tokens::{self, TokenError};

/// `UserInfo` as the reviews carry it.
pub fn user_info(u: &User) -> Value {
    let mut v = json!({"username": u.name, "groups": u.groups});
    if !u.uid.is_empty() {
        v["uid"] = json!(u.uid);
    }
    if !u.extra.is_empty() {
        v["extra"] = json!(u.extra);
    }
    v
}

fn parse(body: &[u8], kind: &str) -> Result<Value, ApiError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the {kind} body is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(format!("the {kind} body must be a JSON object")));
    }
    Ok(v)
}

fn answer(mut v: Value, kind: &str, status: Value) -> Value {
    v["apiVersion"] = json!("authentication.k8s.io/v1");
    v["kind"] = json!(kind);
    if !v.get("metadata").is_some_and(Value::is_object) {
        v["metadata"] = json!({});
    }
    v["metadata"]["creationTimestamp"] = Value::Null;
    v["status"] = status;
    v
}

/// `POST /apis/authentication.k8s.io/v1/tokenreviews`.
pub fn token_review(api: &Api, body: &[u8]) -> Result<Value, ApiError> {
    let v = parse(body, "TokenReview")?;
    let token = v.pointer("/spec/token").and_then(Value::as_str).unwrap_or("");
    if token.is_empty() {
        return Err(ApiError::bad_request("token is required for TokenReview in authentication"));
    }
    let asked: Vec<String> = v
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect())
        .unwrap_or_default();
    let audiences = if asked.is_empty() { vec![tokens::ISSUER.to_string()] } else { asked };
    let admin_token = api.accounts.get().map(|a| a.admin_token.as_str()).unwrap_or("");
    let status = match crate::auth::authenticate_token(api, admin_token, token, &audiences) {
        Ok(u) => {
            // The audiences the token is good for, of those asked (all of them for the admin
            // token, which has none of its own).
            let good: Vec<String> = match api.accounts.get().map(|a| a.keys.verify(token, &audiences, now())) {
                Some(Ok(c)) => c.aud.list().into_iter().filter(|a| audiences.contains(a)).collect(),
                _ => audiences.clone(),
            };
            json!({"authenticated": true, "user": user_info(&u), "audiences": good})
        }
        Err(TokenError::NotOurs) => json!({"user": {}}),
        Err(e @ TokenError::Invalid(_)) => json!({"user": {}, "error": format!("[{e}]")}),
    };
    Ok(answer(v, "TokenReview", status))
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// `POST /apis/authentication.k8s.io/v1/selfsubjectreviews`: the requesting user.
pub fn self_subject_review(body: &[u8]) -> Result<Value, ApiError> {
    let v = if body.is_empty() { json!({}) } else { parse(body, "SelfSubjectReview")? };
    let user = Request::current().user;
    Ok(answer(v, "SelfSubjectReview", json!({"userInfo": user_info(&user)})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_leaves_out_what_is_empty() {
        let v = user_info(&User::admin());
        assert_eq!(v, json!({"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]}));
    }

    #[tokio::test]
    async fn self_subject_review_names_the_requesting_user() {
        let r = Request { user: User::anonymous(), user_agent: String::new() };
        let v = r
            .scope(async {
                self_subject_review(br#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#)
            })
            .await
            .unwrap();
        assert_eq!(v["status"]["userInfo"]["username"], "system:anonymous");
        assert_eq!(v["kind"], "SelfSubjectReview");
    }
}
