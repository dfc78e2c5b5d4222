//! Exec and attach over a WebSocket with Kubernetes' channel protocol (`v4.channel.k8s.io`,
//! `v5.channel.k8s.io`): every binary message starts with a channel byte. 0 is stdin, 1 stdout,
//! 2 stderr, 3 the error channel (one `metav1.Status` at the end: Success, or Failure with
//! reason NonZeroExitCode and the exit code in its causes, which kubectl turns into "command
//! terminated with exit code N" and its own exit code), 4 resize (`{"Width": W, "Height": H}`),
//! and in v5, 255 closes a channel (`[255, 0]`: the client's stdin is done).

use std::io;
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::{BoxRead, BoxWrite, PodStreams, Process, Resize, Session, Sub};

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5: `[255, channel]` closes that channel.
pub const CLOSE: u8 = 255;

/// A normal closure (1000): gorilla's clients (kubectl) take a close without a code as an error.
pub fn normal_close() -> Message {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))
}

/// A message on `channel`.
pub fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::binary(v)
}

/// The Status sent on the error channel when the process has ended, as kubelet sends it.
pub fn exit_status(command: &[String], code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {}, "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// The Status for a process that could not be started or followed.
pub fn failure_status(e: &io::Error) -> Value {
    let (reason, code) = match e.kind() {
        io::ErrorKind::NotFound => ("NotFound", 404),
        io::ErrorKind::InvalidInput => ("BadRequest", 400),
        _ => ("InternalError", 500),
    };
    json!({"metadata": {}, "status": "Failure", "message": e.to_string(), "reason": reason, "code": code})
}

/// A resize message's size, (columns, rows); `None` for anything else.
pub fn parse_resize(data: &[u8]) -> Option<(u16, u16)> {
    let v: Value = serde_json::from_slice(data).ok()?;
    let w = u16::try_from(v.get("Width")?.as_u64()?).ok()?;
    let h = u16::try_from(v.get("Height")?.as_u64()?).ok()?;
    Some((w, h))
}

async fn pump(mut from: BoxRead, channel: u8, to: mpsc::Sender<Message>) {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        // A pty's master reads EIO once the terminal's last process is gone: that is its end.
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.send(frame(channel, &buf[..n])).await.is_err() {
            return;
        }
    }
}

/// What the client sends, until it closes: stdin, resizes, v5's close of stdin.
async fn input<S: AsyncRead + AsyncWrite + Unpin>(
    early: std::collections::VecDeque<Message>,
    mut source: futures::stream::SplitStream<WebSocketStream<S>>,
    mut stdin: Option<BoxWrite>,
    resize: Option<Resize>,
    v5: bool,
) {
    let mut early = early;
    loop {
        let msg = match early.pop_front() {
            Some(m) => m,
            None => match source.next().await {
                Some(Ok(m)) => m,
                _ => break,
            },
        };
        let data = match msg {
            Message::Binary(b) => b,
            Message::Close(_) => break,
            _ => continue,
        };
        let Some((&ch, rest)) = data.split_first() else { continue };
        tracing::trace!(channel = ch, bytes = rest.len(), head = ?&rest[..rest.len().min(8)], "from the client");
        match ch {
            STDIN => {
                if let Some(w) = stdin.as_mut()
                    && (w.write_all(rest).await.is_err() || w.flush().await.is_err())
                {
                    // The process stopped reading: what it would have got goes nowhere.
                    stdin = None;
                }
            }
            RESIZE => match (parse_resize(rest), &resize) {
                (Some((w, h)), Some(resize)) => {
                    if let Err(e) = resize(w, h) {
                        tracing::debug!(error = %e, "resizing a terminal");
                    }
                }
                (None, _) => tracing::debug!(bytes = rest.len(), "a resize message that is not {{Width, Height}}"),
                _ => {}
            },
            CLOSE if v5 && rest.first() == Some(&STDIN) => {
                if let Some(mut w) = stdin.take() {
                    let _ = w.shutdown().await;
                }
            }
            _ => {}
        }
    }
}

/// Runs one exec or attach session on an upgraded WebSocket.
pub(crate) async fn run<S>(ws: WebSocketStream<S>, v5: bool, session: Session, streams: Arc<dyn PodStreams>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(32);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        let _ = sink.send(normal_close()).await;
        let _ = sink.close().await;
    });
    let (mut session, mut source) = (session, source);
    // With a terminal, kubectl's first message is its size: take it before the process starts,
    // so the process sees its size from the start (kube-rs may send none: wait only briefly).
    // Other messages that come first (stdin) are kept for the session, as the SPDY path does.
    let mut early = std::collections::VecDeque::new();
    if session.opts.tty {
        let first_size = tokio::time::timeout(super::FIRST_RESIZE_WAIT, async {
            while early.len() < 16 {
                match source.next().await {
                    Some(Ok(Message::Binary(b))) if b.first() == Some(&RESIZE) => {
                        session.opts.size = parse_resize(&b[1..]);
                        return true;
                    }
                    Some(Ok(m)) => early.push_back(m),
                    _ => return false,
                }
            }
            true
        })
        .await;
        if first_size == Ok(false) {
            return;
        }
    }
    let started = match session.sub {
        Sub::Attach => streams.attach(session.pod(), &session.container, &session.opts).await,
        _ => streams.exec(session.pod(), &session.container, &session.opts).await,
    };
    let Process { stdin, stdout, stderr, resize, mut exit } = match started {
        Ok(p) => p,
        Err(e) => {
            let status = failure_status(&io::Error::new(
                e.kind(),
                format!(
                    "{} in container {} of pod {}/{}: {e}",
                    session.sub.name(),
                    session.container,
                    session.ns,
                    session.name
                ),
            ));
            let _ = tx.send(frame(ERROR, status.to_string().as_bytes())).await;
            drop(tx);
            let _ = writer.await;
            return;
        }
    };
    // As kubelet does: an empty message on the lowest output channel says the stream is up.
    let first = if stdout.is_some() {
        STDOUT
    } else if stderr.is_some() {
        STDERR
    } else {
        ERROR
    };
    let _ = tx.send(frame(first, &[])).await;
    let mut pumps = tokio::task::JoinSet::new();
    if let Some(o) = stdout {
        pumps.spawn(pump(o, STDOUT, tx.clone()));
    }
    if let Some(e) = stderr {
        pumps.spawn(pump(e, STDERR, tx.clone()));
    }
    let mut client = tokio::spawn(input(early, source, stdin, resize, v5));
    let code = tokio::select! {
        code = &mut exit => code,
        // The client went away: dropping `exit` stops the process.
        _ = &mut client => { pumps.abort_all(); return; }
    };
    // Everything the process wrote reaches the client before its status.
    tokio::select! {
        _ = async { while pumps.join_next().await.is_some() {} } => {}
        _ = &mut client => { pumps.abort_all(); return; }
    }
    let status = match code {
        Ok(c) => exit_status(&session.opts.command, c),
        Err(e) => failure_status(&e),
    };
    let _ = tx.send(frame(ERROR, status.to_string().as_bytes())).await;
    drop(tx);
    let _ = writer.await;
    client.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_become_kubectls_statuses() {
        assert_eq!(exit_status(&[], 0)["status"], "Success");
        let s = exit_status(&["sh".into(), "-c".into(), "exit 3".into()], 3);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0], json!({"reason": "ExitCode", "message": "3"}));
    }

    #[test]
    fn resize_messages_are_parsed_or_ignored() {
        assert_eq!(parse_resize(br#"{"Width":120,"Height":40}"#), Some((120, 40)));
        for bad in [&b""[..], b"{", br#"{"Width":-1,"Height":2}"#, br#"{"Width":70000,"Height":2}"#, b"[1,2]"] {
            assert_eq!(parse_resize(bad), None);
        }
    }
}
