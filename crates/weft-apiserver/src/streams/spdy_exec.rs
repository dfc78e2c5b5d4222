//! Exec and attach over SPDY/3.1 (`v4.channel.k8s.io`): what kubectl before 1.30 speaks, and
//! what kubectl falls back to (or is told to use with KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false).
//! The client opens one stream per channel, named by its `streamType` header: `error` (the
//! final `metav1.Status`), `stdin` (its end is the stream's FIN), `stdout`, `stderr` and, with a
//! tty, `resize` (a run of `{"Width": W, "Height": H}` objects). The session starts once every
//! stream the options ask for is there.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::channels::{exit_status, failure_status, parse_resize};
use super::spdy::{self, Frame};
use super::{BoxRead, PodStreams, Process, Session, Sub};

/// How long a client has to open its streams (kubelet's streamCreationTimeout).
const STREAMS_WITHIN: Duration = Duration::from_secs(30);
/// A resize stream holds small JSON objects: more than this unparsed is not one.
const MAX_RESIZE_BUFFER: usize = 4096;

async fn pump(mut from: BoxRead, id: u32, to: mpsc::Sender<Vec<u8>>) {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.send(spdy::data(id, false, &buf[..n])).await.is_err() {
            return;
        }
    }
}

/// Runs one exec or attach session on an upgraded SPDY connection.
pub(crate) async fn run<S>(io: S, session: Session, streams: Arc<dyn PodStreams>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (r, w) = tokio::io::split(io);
    let (tx, writer) = spdy::frame_writer(w);
    let mut reader = spdy::Reader::new(BufReader::with_capacity(64 << 10, r));
    let o = &session.opts;
    let wanted: Vec<&str> = [
        Some("error"),
        o.stdin.then_some("stdin"),
        o.stdout.then_some("stdout"),
        o.stderr.then_some("stderr"),
        o.tty.then_some("resize"),
    ]
    .into_iter()
    .flatten()
    .collect();
    // The streams, as they come (bounded in time and in number).
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut first_reply = true;
    let opened = tokio::time::timeout(STREAMS_WITHIN, async {
        while !wanted.iter().all(|w| ids.contains_key(*w)) {
            match reader.next().await {
                Ok(Some(Frame::SynStream { id, headers, .. })) => {
                    if tx.send(spdy::syn_reply(id, first_reply)).await.is_err() {
                        return false;
                    }
                    first_reply = false;
                    let kind = spdy::header(&headers, "streamtype").unwrap_or("").to_string();
                    if ids.len() >= 8 || !wanted.contains(&kind.as_str()) {
                        let _ = tx.send(spdy::refuse(id)).await;
                        continue;
                    }
                    ids.insert(kind, id);
                }
                Ok(Some(Frame::Ping { id })) => {
                    let _ = tx.send(spdy::ping(id)).await;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return false,
            }
        }
        true
    })
    .await;
    if opened != Ok(true) {
        tracing::debug!(pod = %session.name, "a SPDY exec client did not open its streams");
        drop(tx);
        let _ = writer.await;
        return;
    }
    let error_id = ids["error"];
    // With a terminal, its first size before the process starts (kubectl sends it at once);
    // whatever else comes meanwhile is kept for the session.
    let mut session = session;
    let mut early = vec![];
    if let Some(&rid) = ids.get("resize") {
        let _ = tokio::time::timeout(super::FIRST_RESIZE_WAIT, async {
            while early.len() < 16 {
                match reader.next().await {
                    Ok(Some(Frame::Data { id, data, .. })) if id == rid => {
                        // The first complete object of the stream is the terminal's size.
                        let v: Option<serde_json::Value> =
                            serde_json::Deserializer::from_slice(&data).into_iter().next().and_then(Result::ok);
                        session.opts.size = v.and_then(|v| parse_resize(v.to_string().as_bytes()));
                        return;
                    }
                    Ok(Some(f)) => early.push(f),
                    _ => return,
                }
            }
        })
        .await;
    }
    let started = match session.sub {
        Sub::Attach => streams.attach(session.pod(), &session.container, &session.opts).await,
        _ => streams.exec(session.pod(), &session.container, &session.opts).await,
    };
    let Process { stdin, stdout, stderr, resize, mut exit } = match started {
        Ok(p) => p,
        Err(e) => {
            let e = io::Error::new(
                e.kind(),
                format!(
                    "{} in container {} of pod {}/{}: {e}",
                    session.sub.name(),
                    session.container,
                    session.ns,
                    session.name
                ),
            );
            let _ = tx.send(spdy::data(error_id, false, failure_status(&e).to_string().as_bytes())).await;
            let _ = tx.send(spdy::data(error_id, true, b"")).await;
            drop(tx);
            let _ = writer.await;
            return;
        }
    };
    let mut pumps = tokio::task::JoinSet::new();
    let (out_id, err_id) = (ids.get("stdout").copied(), ids.get("stderr").copied());
    if let (Some(o), Some(id)) = (stdout, out_id) {
        pumps.spawn(pump(o, id, tx.clone()));
    }
    if let (Some(e), Some(id)) = (stderr, err_id) {
        pumps.spawn(pump(e, id, tx.clone()));
    }
    // What the client sends while the process runs: stdin, resizes, pings.
    let (stdin_id, resize_id) = (ids.get("stdin").copied(), ids.get("resize").copied());
    let client_tx = tx.clone();
    let mut client = tokio::spawn(async move {
        let mut stdin = stdin;
        let mut pending = Vec::new();
        let mut early = early.into_iter();
        loop {
            let next = match early.next() {
                Some(f) => Ok(Some(f)),
                None => reader.next().await,
            };
            match next {
                Ok(Some(Frame::Data { id, fin, data })) if Some(id) == stdin_id => {
                    if let Some(w) = stdin.as_mut()
                        && !data.is_empty()
                        && (w.write_all(&data).await.is_err() || w.flush().await.is_err())
                    {
                        stdin = None;
                    }
                    if fin && let Some(mut w) = stdin.take() {
                        let _ = w.shutdown().await;
                    }
                }
                Ok(Some(Frame::Data { id, data, .. })) if Some(id) == resize_id => {
                    resize_from(&mut pending, &data, resize.as_deref());
                }
                Ok(Some(Frame::Ping { id })) => {
                    let _ = client_tx.send(spdy::ping(id)).await;
                }
                Ok(Some(Frame::GoAway)) | Ok(None) | Err(_) => return,
                Ok(Some(_)) => {}
            }
        }
    });
    let code = tokio::select! {
        code = &mut exit => code,
        _ = &mut client => { pumps.abort_all(); return; }
    };
    tokio::select! {
        _ = async { while pumps.join_next().await.is_some() {} } => {}
        _ = &mut client => { pumps.abort_all(); return; }
    }
    for id in [out_id, err_id].into_iter().flatten() {
        let _ = tx.send(spdy::data(id, true, b"")).await;
    }
    let status = match code {
        Ok(c) => exit_status(&session.opts.command, c),
        Err(e) => failure_status(&e),
    };
    let _ = tx.send(spdy::data(error_id, false, status.to_string().as_bytes())).await;
    let _ = tx.send(spdy::data(error_id, true, b"")).await;
    drop(tx);
    let _ = writer.await;
    client.abort();
}

/// Applies the complete resize objects in `pending` + `data`, keeping an unfinished one.
fn resize_from(
    pending: &mut Vec<u8>,
    data: &Bytes,
    resize: Option<&(dyn Fn(u16, u16) -> io::Result<()> + Send + Sync)>,
) {
    pending.extend_from_slice(data);
    let mut it = serde_json::Deserializer::from_slice(pending).into_iter::<serde_json::Value>();
    let mut used = 0;
    loop {
        match it.next() {
            Some(Ok(v)) => {
                used = it.byte_offset();
                if let (Some(size), Some(resize)) = (parse_resize(v.to_string().as_bytes()), resize)
                    && let Err(e) = resize(size.0, size.1)
                {
                    tracing::debug!(error = %e, "resizing a terminal");
                }
            }
            // Not JSON: nothing in it can be read.
            Some(Err(e)) if !e.is_eof() => {
                tracing::debug!(error = %e, "a resize stream that is not JSON objects");
                pending.clear();
                return;
            }
            _ => break,
        }
    }
    pending.drain(..used);
    if pending.len() > MAX_RESIZE_BUFFER {
        tracing::debug!("a resize stream that is not JSON objects: dropped");
        pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn resize_objects_are_applied_across_frames() {
        let seen = Mutex::new(vec![]);
        let f = |w: u16, h: u16| -> io::Result<()> {
            seen.lock().unwrap().push((w, h));
            Ok(())
        };
        let mut pending = vec![];
        resize_from(&mut pending, &Bytes::from_static(br#"{"Width":80,"Height":24}{"Wid"#), Some(&f));
        resize_from(&mut pending, &Bytes::from_static(br#"th":100,"Height":30}"#), Some(&f));
        resize_from(&mut pending, &Bytes::from_static(b"not json"), Some(&f));
        assert!(pending.is_empty());
        resize_from(&mut pending, &Bytes::from_static(br#"{"Width":1,"Height":2}"#), Some(&f));
        assert_eq!(*seen.lock().unwrap(), [(80, 24), (100, 30), (1, 2)]);
        assert!(pending.is_empty());
    }
}
