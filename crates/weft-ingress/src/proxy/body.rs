//! The bodies the proxy moves: requests to an endpoint (with the `proxy-body-size` limit
//! counted as they stream) and responses to the client (a fixed body of our own, or an
//! endpoint's, whose connection goes back to the pool when it has been read to the end).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::upstream::PoolReturn;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way to an endpoint.
pub(crate) enum ReqBody {
    Empty,
    /// The client's body; `tripped` is set when more than `max` bytes came, so the proxy
    /// answers 413 rather than 502 when the send fails because of it.
    Stream {
        inner: Incoming,
        seen: u64,
        max: u64,
        tripped: Arc<AtomicBool>,
    },
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Stream { inner, seen, max, tripped } => match ready!(Pin::new(inner).poll_frame(cx)) {
                Some(Ok(f)) => {
                    if let Some(d) = f.data_ref() {
                        *seen += d.len() as u64;
                        if *seen > *max {
                            tripped.store(true, Ordering::Relaxed);
                            return Poll::Ready(Some(Err("request body larger than proxy-body-size".into())));
                        }
                    }
                    Poll::Ready(Some(Ok(f)))
                }
                Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                None => Poll::Ready(None),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Stream { inner, .. } => inner.size_hint(),
        }
    }
}

/// A response body on its way to the client.
pub enum RespBody {
    Full(Option<Bytes>),
    Upstream(UpBody),
}

impl RespBody {
    pub(crate) fn empty() -> RespBody {
        RespBody::Full(None)
    }
    pub(crate) fn text(s: &'static str) -> RespBody {
        RespBody::Full(Some(Bytes::from_static(s.as_bytes())))
    }
}

/// An endpoint's response body; `ret` puts its HTTP/1 connection back in the worker's pool
/// once the body has been read to its end (a body dropped earlier closes the connection).
/// `done` records the request (metrics, access log) when the body has been sent or dropped,
/// with the bytes that went and the time to the last of them, as nginx's `$bytes_sent` and
/// `$request_time`.
pub struct UpBody {
    pub(crate) inner: Incoming,
    pub(crate) ret: Option<PoolReturn>,
    pub(crate) done: Option<Box<super::handler::Finish>>,
}

impl UpBody {
    fn give_back(&mut self) {
        if let Some(r) = self.ret.take() {
            r.put();
        }
    }
}

impl Drop for UpBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.give_back();
        }
        if let Some(d) = self.done.take() {
            (*d).record();
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RespBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Upstream(u) => {
                let r = ready!(Pin::new(&mut u.inner).poll_frame(cx));
                if let (Some(Ok(f)), Some(d)) = (&r, &mut u.done) {
                    d.bytes += f.data_ref().map_or(0, |b| b.len() as u64);
                }
                if r.is_none() || (matches!(r, Some(Ok(_))) && u.inner.is_end_stream()) {
                    u.give_back();
                }
                Poll::Ready(r)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Full(b) => b.is_none(),
            RespBody::Upstream(u) => u.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RespBody::Upstream(u) => u.inner.size_hint(),
        }
    }
}
