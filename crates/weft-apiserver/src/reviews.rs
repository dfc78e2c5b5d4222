//! The create-only kinds ([`weft_api::kinds::Kind::create_only`]): reviews a client posts and
//! gets answered at once, never stored (TokenReview, SubjectAccessReview and their kin). The
//! request's user is [`crate::auth::Request::current`].

use serde_json::Value;

use crate::rest::{Api, Target, WriteOpts};
use crate::status::ApiError;

/// Answers a posted review of kind `t.kind`: the object with its `status` filled in.
pub async fn create(api: &Api, t: &Target, body: &[u8], _o: WriteOpts) -> Result<Value, ApiError> {
    match (t.kind.group, t.kind.kind) {
        ("authentication.k8s.io", "TokenReview") => return crate::authn_reviews::token_review(api, body),
        ("authentication.k8s.io", "SelfSubjectReview") => return crate::authn_reviews::self_subject_review(body),
        ("authorization.k8s.io", _) => return crate::access_reviews::create(api, t, body),
        _ => {}
    }
    Err(ApiError::new(
        404,
        "NotFound",
        format!("the server could not find the requested resource ({} is not served)", t.kind.plural),
    ))
}
