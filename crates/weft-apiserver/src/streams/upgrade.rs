//! The HTTP/1.1 upgrade of a streaming request: to a WebSocket with the subprotocol the client
//! prefers among those served, or to SPDY/3.1 for port-forward. The session runs on a task of
//! its own once hyper hands over the connection.

use std::sync::Arc;

use http::{HeaderMap, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::{PodStreams, Session, Sub, channels, portforward, spdy_exec};
use crate::status::ApiError;

pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";
/// kubectl 1.31+'s port-forward: SPDY/3.1 carried in WebSocket binary messages.
pub const SPDY_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

/// The largest WebSocket message taken: kubectl sends stdin in 32 KiB pieces.
const MAX_MESSAGE: usize = 4 << 20;

/// Sessions (exec, attach, port-forward) at once. An upgraded connection leaves hyper, and with
/// it the server's connection slot; an attach holds a thread of tokio's blocking pool, which the
/// kubelets' sandboxes and probes share in a lab's daemon.
const MAX_SESSIONS: usize = 256;
static SESSIONS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_SESSIONS);

fn values<'a>(h: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = String> + 'a {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn has_token(h: &HeaderMap, name: &str, token: &str) -> bool {
    values(h, name).any(|v| v.eq_ignore_ascii_case(token))
}

fn error(e: ApiError) -> Response<crate::Body> {
    crate::error_response(&e)
}

/// The subprotocols served for a subresource, best first.
fn served(sub: Sub) -> &'static [&'static str] {
    match sub {
        Sub::Exec | Sub::Attach => &[V5, V4],
        Sub::PortForward => &[SPDY_TUNNEL, V4],
    }
}

pub(crate) fn upgrade(
    session: Session,
    streams: Arc<dyn PodStreams>,
    mut req: Request<Incoming>,
) -> Response<crate::Body> {
    let what = format!("pods/{}", session.sub.name());
    let Ok(permit) = SESSIONS.try_acquire() else {
        return error(ApiError::new(
            429,
            "TooManyRequests",
            format!("{MAX_SESSIONS} exec, attach and port-forward sessions are open already: end some and try again"),
        ));
    };
    let h = req.headers();
    if req.version() != Version::HTTP_11 {
        return error(ApiError::bad_request(format!(
            "Upgrade request required: {what} upgrades the connection: send it over HTTP/1.1 (this request came over {:?})",
            req.version()
        )));
    }
    let upgrade_to = h.get(header::UPGRADE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    if upgrade_to == "websocket" {
        let Some(key) = h.get(header::SEC_WEBSOCKET_KEY).map(|k| k.as_bytes().to_vec()) else {
            return error(ApiError::bad_request("a WebSocket upgrade needs a Sec-WebSocket-Key header"));
        };
        if !has_token(h, header::CONNECTION.as_str(), "upgrade") {
            return error(ApiError::bad_request("a WebSocket upgrade needs Connection: Upgrade"));
        }
        let offered: Vec<String> = values(h, header::SEC_WEBSOCKET_PROTOCOL.as_str()).collect();
        let Some(protocol) = offered.iter().find(|p| served(session.sub).contains(&p.as_str())).cloned() else {
            return error(ApiError::bad_request(format!(
                "none of the WebSocket subprotocols offered ({}) is served for {what}: this server speaks {}",
                if offered.is_empty() { "none".to_string() } else { offered.join(", ") },
                served(session.sub).join(", ")
            )));
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let proto = protocol.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "a streaming upgrade did not complete");
                    return;
                }
            };
            let cfg = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE)).max_frame_size(Some(MAX_MESSAGE));
            let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(cfg)).await;
            match (session.sub, proto.as_str()) {
                (Sub::PortForward, SPDY_TUNNEL) => {
                    portforward::spdy(portforward::websocket_bytes(ws), Arc::new(session), streams).await
                }
                (Sub::PortForward, _) => portforward::websocket(ws, Arc::new(session), streams).await,
                (_, p) => channels::run(ws, p == V5, session, streams).await,
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, derive_accept_key(&key))
            .header(header::SEC_WEBSOCKET_PROTOCOL, protocol)
            .body(crate::full(""))
            .unwrap();
    }
    if upgrade_to.starts_with("spdy/3") && session.sub != Sub::PortForward {
        let offered: Vec<String> = values(h, "x-stream-protocol-version").collect();
        if !offered.iter().any(|p| p == V4) {
            return error(ApiError::bad_request(format!(
                "none of the stream protocols offered ({}) is served for {what} over SPDY: this server speaks {V4} \
                 (and {V5} over WebSockets)",
                offered.join(", ")
            )));
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let _permit = permit;
            match on_upgrade.await {
                Ok(u) => spdy_exec::run(TokioIo::new(u), session, streams).await,
                Err(e) => tracing::debug!(error = %e, "a SPDY upgrade did not complete"),
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "SPDY/3.1")
            .header("X-Stream-Protocol-Version", V4)
            .body(crate::full(""))
            .unwrap();
    }
    if upgrade_to.starts_with("spdy/3") {
        let offered: Vec<String> = values(h, "x-stream-protocol-version").collect();
        if !offered.is_empty() && !offered.iter().any(|p| p == PORT_FORWARD_PROTOCOL) {
            return error(ApiError::bad_request(format!(
                "none of the stream protocols offered ({}) is served: this server speaks {PORT_FORWARD_PROTOCOL}",
                offered.join(", ")
            )));
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let _permit = permit;
            match on_upgrade.await {
                Ok(u) => portforward::spdy(TokioIo::new(u), Arc::new(session), streams).await,
                Err(e) => tracing::debug!(error = %e, "a SPDY upgrade did not complete"),
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "SPDY/3.1")
            .header("X-Stream-Protocol-Version", PORT_FORWARD_PROTOCOL)
            .body(crate::full(""))
            .unwrap();
    }
    error(ApiError::bad_request(format!(
        "Upgrade request required: {what} is a streaming subresource: upgrade the connection to a WebSocket (Upgrade: websocket, \
         Sec-WebSocket-Protocol: {}){}",
        served(session.sub).join(", "),
        if session.sub == Sub::PortForward { " or to SPDY/3.1" } else { "" }
    )))
}
