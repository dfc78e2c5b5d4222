//! `/openapi/v2` and `/openapi/v3[/{group-version}]`: `weft_openapi`'s documents, served as
//! kube-apiserver's kube-openapi handlers serve them: the media type chosen from `Accept` (406
//! when none fits), a quoted `ETag` that is the content hash and `If-None-Match` answered with 304,
//! and `?hash=` URLs that never change content (`Cache-Control: public, immutable`; a stale hash is
//! redirected to the current one). Bodies are gzipped when the client takes it (Go's HTTP client,
//! and so kubectl, always does): the documents are megabytes of JSON, compressed once.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use http::{Response, header};
use weft_openapi::Served;

use crate::{Body, full};

/// What client-go's discovery client asks `/openapi/v2` for.
const V2_PROTOBUF: &[&str] =
    &["com.github.proto-openapi.spec.v2@v1.0+protobuf", "com.github.proto-openapi.spec.v2.v1.0+protobuf"];
const V2_PROTOBUF_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
/// Bodies smaller than this go out as they are (kube-apiserver's compression threshold).
const GZIP_MIN_BYTES: usize = 128 * 1024;

/// The request headers and query that choose the answer.
pub struct Ask<'a> {
    pub accept: &'a str,
    pub accept_encoding: &'a str,
    pub if_none_match: &'a str,
    /// The `hash` query parameter of a v3 document's URL.
    pub hash: Option<&'a str>,
}

/// What a request for `/openapi/{rest}` is answered.
pub fn serve(rest: &[&str], ask: &Ask) -> Response<Body> {
    match rest {
        ["v2"] => match negotiate(ask.accept, &[&["json"], V2_PROTOBUF]) {
            Some(0) => document(weft_openapi::v2_served(), "application/json", ask, false),
            // client-go reads only gnostic's protobuf form, which weft does not encode: an empty
            // message is a valid, empty document, after which kubectl relies on the v3 documents.
            Some(_) => document(empty_v2(), V2_PROTOBUF_TYPE, ask, false),
            None => status(406),
        },
        ["v3"] => document(weft_openapi::v3_root(), "application/json", ask, false),
        ["v3", gv @ ..] => {
            let path = gv.join("/");
            let Some(served) = weft_openapi::v3_served(&path) else { return status(404) };
            if negotiate(ask.accept, &[&["json"]]).is_none() {
                return status(406);
            }
            match ask.hash {
                Some(h) if !h.is_empty() && h != served.hash => Response::builder()
                    .status(301)
                    .header(header::LOCATION, format!("/openapi/v3/{path}?hash={}", served.hash))
                    .body(full(Bytes::new()))
                    .unwrap_or_else(|_| status(500)),
                Some(h) if !h.is_empty() => document(served, "application/json", ask, true),
                _ => document(served, "application/json", ask, false),
            }
        }
        _ => status(404),
    }
}

fn empty_v2() -> &'static Served {
    static EMPTY: OnceLock<Served> = OnceLock::new();
    EMPTY.get_or_init(|| Served::of_bytes(Vec::new()))
}

fn status(code: u16) -> Response<Body> {
    Response::builder().status(code).body(full(Bytes::new())).unwrap_or_else(|_| Response::new(full(Bytes::new())))
}

/// Which of `offers` (lists of `application/` subtypes) the `Accept` header takes first, as
/// kube-openapi's handlers choose: clauses by falling quality, and within one the offers in order.
fn negotiate(accept: &str, offers: &[&[&str]]) -> Option<usize> {
    let accept = if accept.trim().is_empty() { "*/*" } else { accept };
    let mut clauses: Vec<(&str, &str, f32)> = accept
        .split(',')
        .filter_map(|c| {
            let mut parts = c.split(';');
            let (ty, sub) = parts.next()?.trim().split_once('/')?;
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            Some((ty.trim(), sub.trim(), q))
        })
        .filter(|c| c.2 > 0.0)
        .collect();
    clauses.sort_by(|a, b| b.2.total_cmp(&a.2));
    clauses.iter().find_map(|(ty, sub, _)| {
        (*ty == "application" || *ty == "*")
            .then(|| offers.iter().position(|o| *sub == "*" || o.contains(sub)))
            .flatten()
    })
}

/// A document, or 304 when the client has it already.
fn document(served: &'static Served, content_type: &str, ask: &Ask, immutable: bool) -> Response<Body> {
    let etag = served.etag();
    let mut b = Response::builder().header(header::ETAG, &etag).header(header::VARY, "Accept");
    if immutable {
        b = b.header(header::CACHE_CONTROL, "public, immutable").header(header::EXPIRES, a_year_from_now());
    }
    if matches_etag(ask.if_none_match, &etag) {
        return b.status(304).body(full(Bytes::new())).unwrap_or_else(|_| status(500));
    }
    b = b.status(200).header(header::CONTENT_TYPE, content_type);
    let body = if takes_gzip(ask.accept_encoding) && served.bytes.len() >= GZIP_MIN_BYTES {
        b = b.header(header::CONTENT_ENCODING, "gzip");
        gzipped(served)
    } else {
        Bytes::from_static(&served.bytes)
    };
    b.body(full(body)).unwrap_or_else(|_| status(500))
}

/// `If-None-Match`: `*` or a list of tags, weak ones compared by their value (as Go's ServeContent).
fn matches_etag(if_none_match: &str, etag: &str) -> bool {
    if_none_match.split(',').map(str::trim).any(|t| t == "*" || t.trim_start_matches("W/") == etag)
}

fn takes_gzip(accept_encoding: &str) -> bool {
    accept_encoding.split(',').any(|e| {
        let mut parts = e.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let refused = parts.any(|p| p.trim().strip_prefix("q=").is_some_and(|q| q.trim().parse::<f32>() == Ok(0.0)));
        coding.eq_ignore_ascii_case("gzip") && !refused
    })
}

/// The gzip form of a document, compressed the first time it is asked for.
fn gzipped(served: &'static Served) -> Bytes {
    static CACHE: OnceLock<Mutex<HashMap<String, Bytes>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(b) = cache.lock().ok().and_then(|c| c.get(&served.hash).cloned()) {
        return b;
    }
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let gz = std::io::Write::write_all(&mut enc, &served.bytes).and_then(|_| enc.finish());
    let Ok(gz) = gz.map(Bytes::from) else { return Bytes::from_static(&served.bytes) };
    if let Ok(mut c) = cache.lock() {
        c.insert(served.hash.clone(), gz.clone());
    }
    gz
}

/// `Expires` one year ahead, in HTTP's date form.
fn a_year_from_now() -> String {
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(365 * 24);
    later.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_as_kube_openapi() {
        let offers: &[&[&str]] = &[&["json"], V2_PROTOBUF];
        assert_eq!(negotiate("application/json", offers), Some(0));
        assert_eq!(negotiate("", offers), Some(0));
        assert_eq!(negotiate("*/*", offers), Some(0));
        assert_eq!(negotiate("application/com.github.proto-openapi.spec.v2@v1.0+protobuf", offers), Some(1));
        assert_eq!(
            negotiate("application/json;q=0.5, application/com.github.proto-openapi.spec.v2.v1.0+protobuf", offers),
            Some(1)
        );
        assert_eq!(negotiate("text/html", offers), None);
        assert_eq!(negotiate("application/json;q=0", offers), None);
    }

    #[test]
    fn etags_and_encodings() {
        assert!(matches_etag("\"AB\"", "\"AB\""));
        assert!(matches_etag("\"x\", W/\"AB\"", "\"AB\""));
        assert!(matches_etag("*", "\"AB\""));
        assert!(!matches_etag("", "\"AB\""));
        assert!(!matches_etag("\"ABC\"", "\"AB\""));
        assert!(takes_gzip("gzip"));
        assert!(takes_gzip("deflate, GZIP;q=0.5"));
        assert!(!takes_gzip("gzip;q=0"));
        assert!(!takes_gzip("identity"));
    }

    #[test]
    fn served_documents() {
        let ask = |hash| Ask { accept: "application/json", accept_encoding: "gzip", if_none_match: "", hash };
        let core = weft_openapi::v3_served("api/v1").expect("core");
        let r = serve(&["v3", "api", "v1"], &ask(Some(&core.hash)));
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "public, immutable");
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(r.headers()[header::ETAG], core.etag());
        let r = serve(&["v3", "api", "v1"], &ask(Some("stale")));
        assert_eq!(r.status(), 301);
        assert_eq!(r.headers()[header::LOCATION], format!("/openapi/v3/api/v1?hash={}", core.hash).as_str());
        let r = serve(&["v3", "api", "v1"], &ask(None));
        assert!(r.headers().get(header::CACHE_CONTROL).is_none());
        let etag = core.etag();
        let again = Ask { if_none_match: &etag, ..ask(None) };
        assert_eq!(serve(&["v3", "api", "v1"], &again).status(), 304);
        assert_eq!(serve(&["v3", "apis", "nope", "v1"], &ask(None)).status(), 404);
        let pb = Ask { accept: "application/com.github.proto-openapi.spec.v3@v1.0+protobuf", ..ask(None) };
        assert_eq!(serve(&["v3", "api", "v1"], &pb).status(), 406);
    }
}
