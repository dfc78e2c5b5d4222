//! Port-forward: over SPDY (kubectl: a pair of streams per connection, an error stream and a
//! data stream with the same `requestID` and `port` headers) and over a WebSocket with the
//! channel protocol (kube-rs's `Portforwarder`, kubelet's websocket port-forward: port i has
//! data channel 2i and error channel 2i+1, each opened by a message holding the port as two
//! bytes, little-endian). Either way the bytes go to 127.0.0.1:PORT inside the pod, through
//! [`PodStreams::port_forward`].

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, DuplexStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::channels::{frame, normal_close};
use super::spdy::{self, Frame};
use super::{PodStreams, Session};

/// Streams one SPDY connection may have open at once (each forwarded connection takes two).
const MAX_STREAMS: usize = 2048;
/// What one read from a pod's socket sends at most.
const CHUNK: usize = 32 << 10;
/// The client's data one SPDY connection holds at most before it is written into the pod (over
/// every stream: a frame is up to 1 MiB, and a stream whose pod does not read, or whose pair
/// never completes, would otherwise hold 16 of them, times [`MAX_STREAMS`]).
const MAX_BUFFERED: usize = 8 << 20;

const _: () = assert!(spdy::MAX_DATA <= MAX_BUFFERED);

/// A piece of the client's data, with its share of the connection's buffer.
type Piece = (Bytes, tokio::sync::OwnedSemaphorePermit);

fn forward_error(s: &Session, port: u16, e: &std::io::Error) -> String {
    format!("error forwarding port {port} to pod {}/{}, uid {}: {e}", s.ns, s.name, s.uid)
}

/// A WebSocket's binary messages as a byte stream both ways (kubectl's SPDY tunnel).
pub(crate) fn websocket_bytes<S>(ws: WebSocketStream<S>) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(256 << 10);
    tokio::spawn(async move {
        let (mut sink, mut source) = ws.split();
        let (mut r, mut w) = tokio::io::split(ours);
        let inbound = async move {
            while let Some(Ok(msg)) = source.next().await {
                match msg {
                    Message::Binary(b) if w.write_all(&b).await.is_err() => break,
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            let _ = w.shutdown().await;
        };
        let outbound = async move {
            let mut buf = vec![0u8; CHUNK + 64];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = sink.send(normal_close()).await;
            let _ = sink.close().await;
        };
        tokio::join!(inbound, outbound);
    });
    theirs
}

/// One forwarded connection's pair of streams, as they arrive.
#[derive(Default)]
struct Pair {
    error: Option<u32>,
    data: Option<(u32, mpsc::Receiver<Piece>)>,
    port: Option<u16>,
}

/// Serves kubectl's port-forward over a SPDY connection until it ends.
pub(crate) async fn spdy<S>(io: S, session: Arc<Session>, streams: Arc<dyn PodStreams>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (r, w) = tokio::io::split(io);
    let (tx, writer) = spdy::frame_writer(w);
    let mut reader = spdy::Reader::new(BufReader::with_capacity(64 << 10, r));
    let mut first_reply = true;
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut to_pod: HashMap<u32, mpsc::Sender<Piece>> = HashMap::new();
    let budget = Arc::new(tokio::sync::Semaphore::new(MAX_BUFFERED));
    let mut forwards = tokio::task::JoinSet::new();
    loop {
        let f = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, pod = %session.name, "a port-forward connection ended");
                break;
            }
        };
        match f {
            Frame::SynStream { id, headers, .. } => {
                if to_pod.len() + pairs.len() * 2 >= MAX_STREAMS {
                    let _ = tx.send(spdy::refuse(id)).await;
                    continue;
                }
                if tx.send(spdy::syn_reply(id, first_reply)).await.is_err() {
                    break;
                }
                first_reply = false;
                let kind = spdy::header(&headers, "streamtype").unwrap_or("");
                let request = spdy::header(&headers, "requestid").unwrap_or("").to_string();
                let port = spdy::header(&headers, "port").and_then(|p| p.parse::<u16>().ok()).filter(|p| *p > 0);
                let pair = pairs.entry(request.clone()).or_default();
                pair.port = pair.port.or(port);
                match kind {
                    "error" => pair.error = Some(id),
                    "data" => {
                        let (dtx, drx) = mpsc::channel(16);
                        to_pod.insert(id, dtx);
                        pair.data = Some((id, drx));
                    }
                    _ => {
                        // Not a stream port-forward knows: end it at once.
                        let _ = tx.send(spdy::data(id, true, b"")).await;
                        continue;
                    }
                }
                if pair.error.is_some() && pair.data.is_some() {
                    let pair = pairs.remove(&request).unwrap_or_default();
                    let (Some(error), Some((data, from_client))) = (pair.error, pair.data) else { continue };
                    let (tx, session, streams) = (tx.clone(), session.clone(), streams.clone());
                    forwards.spawn(forward(tx, data, error, pair.port, from_client, session, streams));
                }
            }
            Frame::Data { id, fin, data } => {
                if !data.is_empty()
                    && let Some(s) = to_pod.get(&id)
                {
                    // A frame is at most 1 MiB (spdy::MAX_DATA), less than the whole budget.
                    let Ok(permit) = budget.clone().acquire_many_owned(data.len() as u32).await else { break };
                    if s.send((data, permit)).await.is_err() {
                        to_pod.remove(&id);
                    }
                }
                if fin {
                    to_pod.remove(&id);
                }
            }
            Frame::Rst { id } => {
                to_pod.remove(&id);
            }
            Frame::Ping { id } => {
                let _ = tx.send(spdy::ping(id)).await;
            }
            Frame::GoAway => break,
            Frame::Ignored => {}
        }
        // Finished forwards are collected as we go.
        while forwards.try_join_next().is_some() {}
    }
    forwards.abort_all();
    drop(tx);
    let _ = writer.await;
}

/// One forwarded connection: the pod's socket against the data stream; what goes wrong is
/// written on the error stream. Both streams are ended (FIN) when the pod's side is done, which
/// is when kubectl reads the error stream to its end.
async fn forward(
    tx: mpsc::Sender<Vec<u8>>,
    data: u32,
    error: u32,
    port: Option<u16>,
    mut from_client: mpsc::Receiver<Piece>,
    session: Arc<Session>,
    streams: Arc<dyn PodStreams>,
) {
    let Some(port) = port else {
        let msg = format!("pod {}/{}: a port-forward stream without a valid \"port\" header", session.ns, session.name);
        let _ = tx.send(spdy::data(error, false, msg.as_bytes())).await;
        let _ = tx.send(spdy::data(error, true, b"")).await;
        let _ = tx.send(spdy::data(data, true, b"")).await;
        return;
    };
    let sock = match streams.port_forward(session.pod(), port).await {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(spdy::data(error, false, forward_error(&session, port, &e).as_bytes())).await;
            let _ = tx.send(spdy::data(error, true, b"")).await;
            let _ = tx.send(spdy::data(data, true, b"")).await;
            return;
        }
    };
    let (mut pr, mut pw) = tokio::io::split(sock);
    let up = async move {
        while let Some((b, _held)) = from_client.recv().await {
            if pw.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = pw.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match pr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(spdy::data(data, false, &buf[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(spdy::data(data, true, b"")).await;
        let _ = tx.send(spdy::data(error, true, b"")).await;
    };
    tokio::join!(up, down);
}

/// Serves kube-rs's port-forward over a WebSocket until the client closes it or every port's
/// connection has ended.
pub(crate) async fn websocket<S>(ws: WebSocketStream<S>, session: Arc<Session>, streams: Arc<dyn PodStreams>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        let _ = sink.send(normal_close()).await;
        let _ = sink.close().await;
    });
    if session.ports.is_empty() {
        let msg = format!("pod {}/{}: name the ports to forward (ports=8080,9090)", session.ns, session.name);
        let _ = tx.send(frame(1, msg.as_bytes())).await;
        drop(tx);
        let _ = writer.await;
        return;
    }
    let mut to_pod: Vec<Option<tokio::io::WriteHalf<Box<dyn super::Duplex>>>> = vec![];
    let mut pumps = tokio::task::JoinSet::new();
    for (i, port) in session.ports.iter().enumerate() {
        let (data, error) = ((2 * i) as u8, (2 * i + 1) as u8);
        let _ = tx.send(frame(data, &port.to_le_bytes())).await;
        let _ = tx.send(frame(error, &port.to_le_bytes())).await;
        match streams.port_forward(session.pod(), *port).await {
            Ok(sock) => {
                let (mut r, w) = tokio::io::split(sock);
                to_pod.push(Some(w));
                let tx = tx.clone();
                pumps.spawn(async move {
                    let mut buf = vec![0u8; CHUNK];
                    loop {
                        match r.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if tx.send(frame(data, &buf[..n])).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
            Err(e) => {
                to_pod.push(None);
                let _ = tx.send(frame(error, forward_error(&session, *port, &e).as_bytes())).await;
            }
        }
    }
    let client = async {
        while let Some(Ok(msg)) = source.next().await {
            let data = match msg {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&ch, rest)) = data.split_first() else { continue };
            let i = (ch / 2) as usize;
            if ch % 2 != 0 || rest.is_empty() {
                continue;
            }
            if let Some(slot) = to_pod.get_mut(i)
                && let Some(w) = slot
                && w.write_all(rest).await.is_err()
            {
                *slot = None;
            }
        }
        for w in to_pod.iter_mut().flatten() {
            let _ = w.shutdown().await;
        }
    };
    // Ends when the client closes, or when every pod connection has ended (then the close tells
    // the client there is nothing more).
    tokio::select! {
        _ = client => {}
        _ = async { while pumps.join_next().await.is_some() {} } => {}
    }
    pumps.abort_all();
    drop(tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use flate2::{Compress, Compression, FlushCompress};

    use super::*;
    use crate::streams::{NoPodStreams, StreamOptions, Sub};

    fn syn_stream(c: &mut Compress, id: u32, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
        for (k, v) in headers {
            for s in [k, v] {
                raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
                raw.extend_from_slice(s.as_bytes());
            }
        }
        let mut block = Vec::with_capacity(raw.len() + 64);
        c.compress_vec(&raw, &mut block, FlushCompress::Sync).unwrap();
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        body.extend_from_slice(&block);
        let mut f = vec![0x80, 0x03, 0, spdy::SYN_STREAM as u8, 0];
        f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        f.extend_from_slice(&body);
        f
    }

    #[tokio::test]
    async fn a_client_cannot_make_a_connection_buffer_more_than_its_budget() {
        let (ours, mut theirs) = tokio::io::duplex(64 << 10);
        let session = Arc::new(Session {
            ns: "default".into(),
            name: "p".into(),
            uid: "u".into(),
            sub: Sub::PortForward,
            container: String::new(),
            opts: StreamOptions::default(),
            ports: vec![],
        });
        let server = tokio::spawn(spdy(ours, session, Arc::new(NoPodStreams)));
        // Drain what the server writes (SYN_REPLYs), so it never waits on us.
        let (mut r, mut w) = tokio::io::split(&mut theirs);
        let drain = async {
            let mut buf = vec![0u8; 4096];
            while r.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        };
        let send = async {
            let mut c = Compress::new(Compression::fast(), true);
            // Data streams whose pairs never complete: nothing ever reads what they are sent.
            let ids = [1u32, 3, 5, 7];
            for id in ids {
                let req = id.to_string();
                w.write_all(&syn_stream(&mut c, id, &[("streamtype", "data"), ("port", "80"), ("requestid", &req)]))
                    .await
                    .unwrap();
            }
            let payload = vec![7u8; spdy::MAX_DATA];
            let mut accepted = 0usize;
            'all: for _ in 0..16 {
                for id in ids {
                    let frame = spdy::data(id, false, &payload);
                    match tokio::time::timeout(Duration::from_millis(300), w.write_all(&frame)).await {
                        Ok(Ok(())) => accepted += payload.len(),
                        _ => break 'all,
                    }
                }
            }
            accepted
        };
        let accepted = tokio::select! {
            a = send => a,
            _ = drain => unreachable!("the server ended the connection"),
        };
        assert!(accepted <= MAX_BUFFERED + (2 << 20), "the server took {accepted} bytes it cannot write anywhere");
        server.abort();
    }
}
