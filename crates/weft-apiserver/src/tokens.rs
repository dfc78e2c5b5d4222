//! Service-account tokens as kube-apiserver issues them: JWTs signed (ES256) with a key made on
//! first start and kept (0600) in the state directory, carrying upstream's claims (`iss`, `sub`
//! `system:serviceaccount:<ns>:<name>`, `aud`, `exp`, `iat`, `nbf`, `jti` and the private
//! `kubernetes.io` claim naming the ServiceAccount and the pod, secret or node the token is bound
//! to). Issuing and checking are pure here (the caller passes `now`); whether the named objects
//! still exist is `auth`'s business.

use std::path::Path;

use anyhow::{Context, Result};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The issuer, and the API's audience (kube-apiserver's default `--service-account-issuer`,
/// which `--api-audiences` defaults to).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// TokenRequest's bounds (kube-apiserver's `ValidateTokenRequest`).
pub const MIN_EXPIRATION_SECONDS: i64 = 10 * 60;
pub const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;
/// TokenRequest's default lifetime.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// Clock skew allowed on `exp` and `nbf` (go-jose's `DefaultLeeway`, which upstream uses).
pub const LEEWAY_SECONDS: i64 = 60;
/// Tokens longer than this are refused unread (a signed token of ours is under 1 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 << 10;

/// A name and uid, as the `kubernetes.io` claim refers to objects.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

/// The private `kubernetes.io` claim.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaim {
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub serviceaccount: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
}

/// `aud` is a string or a list of strings in a JWT.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn list(&self) -> Vec<String> {
        match self {
            Audience::One(a) => vec![a.clone()],
            Audience::Many(a) => a.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Audience,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaim,
}

/// The object a token is bound to (TokenRequest's `boundObjectRef`, looked up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bound {
    None,
    /// A pod, and the node it runs on (if bound to one yet), as upstream records both.
    Pod(ObjectRef, Option<ObjectRef>),
    Secret(ObjectRef),
    Node(ObjectRef),
}

/// The username of a ServiceAccount (`serviceaccount.MakeUsername`).
pub fn username(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// The claims of a fresh token for ServiceAccount `sa` in `namespace`, bound to `bound`, valid
/// from `now` for `expiration_seconds`.
pub fn claims(
    namespace: &str,
    sa: ObjectRef,
    bound: Bound,
    audiences: Vec<String>,
    expiration_seconds: i64,
    now: i64,
) -> Claims {
    let mut k = KubernetesClaim { namespace: namespace.to_string(), serviceaccount: sa, ..Default::default() };
    match bound {
        Bound::None => {}
        Bound::Pod(p, node) => {
            k.pod = Some(p);
            k.node = node;
        }
        Bound::Secret(s) => k.secret = Some(s),
        Bound::Node(n) => k.node = Some(n),
    }
    Claims {
        iss: ISSUER.to_string(),
        sub: username(namespace, &k.serviceaccount.name),
        aud: Audience::Many(audiences),
        exp: now.saturating_add(expiration_seconds),
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4().to_string(),
        kubernetes: k,
    }
}

/// Why a token is not a valid service-account token of this server (upstream's words: they
/// appear in a TokenReview's `status.error`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Not a JWT of ours at all (another issuer, another key, `alg: none`, garbage).
    NotOurs,
    Invalid(String),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::NotOurs => f.write_str("invalid bearer token"),
            TokenError::Invalid(m) => write!(f, "invalid bearer token, {m}"),
        }
    }
}

/// The service-account signing key.
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The public key (PEM), for whoever verifies tokens elsewhere.
    pub public_pem: String,
}

impl Keys {
    /// Loads `sa.key` from `dir`, making it (ECDSA P-256, PKCS#8, mode 0600) the first time.
    pub fn load_or_create(dir: &Path) -> Result<Keys> {
        let path = dir.join("sa.key");
        let pem = match std::fs::read_to_string(&path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate().context("making the service-account signing key")?;
                let pem = key.serialize_pem();
                crate::tls::write_private(&path, pem.as_bytes())?;
                pem
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Keys::from_pem(&pem).with_context(|| format!("the service-account key {}", path.display()))
    }

    /// Keys from a PKCS#8 ECDSA P-256 private key.
    pub fn from_pem(pem: &str) -> Result<Keys> {
        let pair = rcgen::KeyPair::from_pem(pem).context("not a PEM private key")?;
        let public_pem = pair.public_key_pem();
        Ok(Keys {
            encoding: EncodingKey::from_ec_pem(pem.as_bytes()).context("not an ECDSA P-256 key")?,
            decoding: DecodingKey::from_ec_pem(public_pem.as_bytes()).context("its public key")?,
            public_pem,
        })
    }

    /// A fresh key (tests).
    pub fn generate() -> Result<Keys> {
        Keys::from_pem(&rcgen::KeyPair::generate()?.serialize_pem())
    }

    pub fn sign(&self, c: &Claims) -> Result<String> {
        Ok(jsonwebtoken::encode(&Header::new(Algorithm::ES256), c, &self.encoding)?)
    }

    /// The claims of `token` if it is one of ours, signed with this key, valid at `now` and for
    /// one of `audiences` (as upstream's JWT authenticator and claims validator check them).
    pub fn verify(&self, token: &str, audiences: &[String], now: i64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES || token.split('.').count() != 3 {
            return Err(TokenError::NotOurs);
        }
        // Only the signature (and ES256: `none` and HMAC are refused) is checked here; times
        // and audiences below, against the caller's clock.
        let mut v = Validation::new(Algorithm::ES256);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).map_err(|_| TokenError::NotOurs)?;
        let c = data.claims;
        if c.iss != ISSUER {
            return Err(TokenError::NotOurs);
        }
        check_claims(&c, audiences, now)?;
        Ok(c)
    }
}

/// The checks on a signed token's claims: time (with upstream's leeway), audience, subject.
pub fn check_claims(c: &Claims, audiences: &[String], now: i64) -> Result<(), TokenError> {
    let invalid = |m: String| Err(TokenError::Invalid(m));
    if now > c.exp.saturating_add(LEEWAY_SECONDS) {
        return invalid("service account token has expired".into());
    }
    if now.saturating_add(LEEWAY_SECONDS) < c.nbf {
        return invalid("service account token is not valid yet".into());
    }
    if now.saturating_add(LEEWAY_SECONDS) < c.iat {
        return invalid("service account token is issued in the future".into());
    }
    let aud = c.aud.list();
    if !aud.iter().any(|a| audiences.contains(a)) {
        return invalid(format!(
            "token audiences {} is invalid for the target audiences {}",
            go_quoted_list(&aud),
            go_quoted_list(audiences)
        ));
    }
    let k = &c.kubernetes;
    if k.namespace.is_empty()
        || k.serviceaccount.name.is_empty()
        || c.sub != username(&k.namespace, &k.serviceaccount.name)
    {
        return invalid("service account token claims could not be validated".into());
    }
    Ok(())
}

/// A list as Go's `%q` prints a `[]string`: `["a" "b"]`.
fn go_quoted_list(l: &[String]) -> String {
    format!("[{}]", l.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(" "))
}

/// kube-apiserver's checks of a TokenRequest's `spec.expirationSeconds`: (field, message) pairs.
pub fn check_expiration(seconds: i64) -> Option<&'static str> {
    if seconds < MIN_EXPIRATION_SECONDS {
        Some("may not specify a duration less than 10m0s")
    } else if seconds > MAX_EXPIRATION_SECONDS {
        Some("may not specify a duration larger than 1193046h28m16s")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa() -> ObjectRef {
        ObjectRef { name: "robot".into(), uid: "u-1".into() }
    }

    fn api() -> Vec<String> {
        vec![ISSUER.to_string()]
    }

    #[test]
    fn claims_are_upstreams() {
        let pod = ObjectRef { name: "p".into(), uid: "pu".into() };
        let node = ObjectRef { name: "node-1".into(), uid: "nu".into() };
        let c = claims("ns", sa(), Bound::Pod(pod, Some(node)), api(), 3607, 1000);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["sub"], "system:serviceaccount:ns:robot");
        assert_eq!(v["iss"], ISSUER);
        assert_eq!(v["aud"], serde_json::json!([ISSUER]));
        assert_eq!((v["iat"].as_i64(), v["nbf"].as_i64(), v["exp"].as_i64()), (Some(1000), Some(1000), Some(4607)));
        assert_eq!(v["kubernetes.io"]["namespace"], "ns");
        assert_eq!(v["kubernetes.io"]["serviceaccount"], serde_json::json!({"name": "robot", "uid": "u-1"}));
        assert_eq!(v["kubernetes.io"]["pod"], serde_json::json!({"name": "p", "uid": "pu"}));
        assert_eq!(v["kubernetes.io"]["node"], serde_json::json!({"name": "node-1", "uid": "nu"}));
        assert!(v["kubernetes.io"].get("secret").is_none());
        assert_eq!(v["jti"].as_str().map(str::len), Some(36));
    }

    #[test]
    fn a_signed_token_verifies_and_round_trips() {
        let k = Keys::generate().unwrap();
        let c = claims("ns", sa(), Bound::None, api(), 3600, 1000);
        let t = k.sign(&c).unwrap();
        assert_eq!(k.verify(&t, &api(), 1001), Ok(c));
    }

    #[test]
    fn times_are_checked_with_upstreams_leeway() {
        let k = Keys::generate().unwrap();
        let t = k.sign(&claims("ns", sa(), Bound::None, api(), 600, 1000)).unwrap();
        assert!(k.verify(&t, &api(), 1600 + LEEWAY_SECONDS).is_ok());
        let e = k.verify(&t, &api(), 1601 + LEEWAY_SECONDS).unwrap_err();
        assert_eq!(e.to_string(), "invalid bearer token, service account token has expired");
        let e = k.verify(&t, &api(), 1000 - LEEWAY_SECONDS - 1).unwrap_err();
        assert_eq!(e.to_string(), "invalid bearer token, service account token is not valid yet");
    }

    #[test]
    fn audiences_must_meet() {
        let k = Keys::generate().unwrap();
        let t = k.sign(&claims("ns", sa(), Bound::None, vec!["vault".into()], 600, 1000)).unwrap();
        assert!(k.verify(&t, &["vault".into(), "x".into()], 1000).is_ok());
        let e = k.verify(&t, &api(), 1000).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "invalid bearer token, token audiences [\"vault\"] is invalid for the target audiences [\"{ISSUER}\"]"
            )
        );
    }

    #[test]
    fn forged_tokens_are_not_ours() {
        let k = Keys::generate().unwrap();
        let other = Keys::generate().unwrap();
        let c = claims("ns", sa(), Bound::None, api(), 600, 1000);
        // Another key.
        assert_eq!(k.verify(&other.sign(&c).unwrap(), &api(), 1000), Err(TokenError::NotOurs));
        // `alg: none`, and HMAC keyed with the public key (the classic confusion).
        use base64::Engine;
        let b64 = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let body = b64(&serde_json::to_vec(&c).unwrap());
        let none = format!("{}.{body}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
        assert_eq!(k.verify(&none, &api(), 1000), Err(TokenError::NotOurs));
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &c,
            &EncodingKey::from_secret(k.public_pem.as_bytes()),
        )
        .unwrap();
        assert_eq!(k.verify(&hs, &api(), 1000), Err(TokenError::NotOurs));
        // A good signature on claims of another issuer.
        let mut foreign = c.clone();
        foreign.iss = "https://elsewhere".into();
        assert_eq!(k.verify(&k.sign(&foreign).unwrap(), &api(), 1000), Err(TokenError::NotOurs));
        // Garbage and huge input.
        for g in ["", "a.b.c", "....", "x", &"a".repeat(MAX_TOKEN_BYTES + 1), "é.é.é"] {
            assert_eq!(k.verify(g, &api(), 1000), Err(TokenError::NotOurs), "{g:.20}");
        }
    }

    #[test]
    fn the_subject_must_name_the_service_account() {
        let k = Keys::generate().unwrap();
        let mut c = claims("ns", sa(), Bound::None, api(), 600, 1000);
        c.sub = "system:serviceaccount:kube-system:admin".into();
        assert!(matches!(k.verify(&k.sign(&c).unwrap(), &api(), 1000), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn expiration_bounds_are_upstreams() {
        assert_eq!(check_expiration(599), Some("may not specify a duration less than 10m0s"));
        assert_eq!(check_expiration(600), None);
        assert_eq!(check_expiration(1 << 32), None);
        assert_eq!(check_expiration((1 << 32) + 1), Some("may not specify a duration larger than 1193046h28m16s"));
    }

    #[test]
    fn the_key_is_kept_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Keys::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("sa.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Keys::load_or_create(dir.path()).unwrap();
        let t = a.sign(&claims("ns", sa(), Bound::None, api(), 600, 1000)).unwrap();
        assert!(b.verify(&t, &api(), 1000).is_ok());
    }
}
