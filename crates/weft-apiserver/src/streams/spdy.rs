//! The part of SPDY/3.1 that kubectl's port-forward uses, server side, written by hand: kubectl
//! (client-go over moby/spdystream) speaks SPDY/3.1 for port-forward, tunneled in a WebSocket or
//! over a plain upgrade, and no maintained Rust crate implements SPDY (browsers dropped it for
//! HTTP/2 in 2016). Frames in: SYN_STREAM (headers: zlib with SPDY's preset dictionary, through
//! flate2), DATA, RST_STREAM, PING, GOAWAY; SETTINGS, WINDOW_UPDATE and HEADERS are read and
//! ignored (spdystream does no flow control). Frames out: SYN_REPLY, DATA, PING. Our header
//! blocks are zlib "stored" (uncompressed) blocks, which any inflater reads and which need no
//! dictionary. Every length read is checked against a bound before anything is allocated.

use std::io;
use std::sync::OnceLock;

use bytes::Bytes;
use flate2::{Decompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

/// The write half of a SPDY connection: frames queued on the sender are written in order and
/// flushed once the queue is empty (frames that came together leave together); when every
/// sender is gone the connection is shut down. A write error ends the task.
pub(crate) fn frame_writer<W>(w: W) -> (mpsc::Sender<Vec<u8>>, tokio::task::JoinHandle<()>)
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        let mut w = BufWriter::with_capacity(64 << 10, w);
        while let Some(f) = rx.recv().await {
            if w.write_all(&f).await.is_err() {
                return;
            }
            if rx.is_empty() && w.flush().await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    });
    (tx, writer)
}

pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
pub const FLAG_FIN: u8 = 1;

/// Control frames (headers) are small; data frames are what a client sends at once.
const MAX_CONTROL: usize = 64 << 10;
pub(crate) const MAX_DATA: usize = 1 << 20;
/// A header block inflates to at most this much.
const MAX_HEADERS: usize = 64 << 10;

/// SPDY/3's header-compression dictionary (draft 3, section 2.6.10.1): these words, each after
/// its length as 4 bytes big-endian, then the rest as one run of text.
fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505\
            203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized\
            403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable\
            Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT\
            chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,\
            text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";
        let mut d = vec![];
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        id: u32,
        fin: bool,
        headers: Vec<(String, String)>,
    },
    Data {
        id: u32,
        fin: bool,
        data: Bytes,
    },
    Rst {
        id: u32,
    },
    Ping {
        id: u32,
    },
    GoAway,
    /// SETTINGS, WINDOW_UPDATE, HEADERS, SYN_REPLY from a client: nothing to do.
    Ignored,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads a connection's frames; one inflater for the whole connection, as SPDY says.
pub struct Reader<R> {
    r: R,
    inflate: Decompress,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(r: R) -> Self {
        Reader { r, inflate: Decompress::new(true) }
    }

    /// The next frame; `None` at a clean end of the connection.
    pub async fn next(&mut self) -> io::Result<Option<Frame>> {
        let mut head = [0u8; 8];
        match self.r.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        let control = head[0] & 0x80 != 0;
        if len > if control { MAX_CONTROL } else { MAX_DATA } {
            return Err(bad(format!("a SPDY frame of {len} bytes is larger than this server takes")));
        }
        let mut body = vec![0u8; len];
        self.r.read_exact(&mut body).await?;
        if !control {
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
            return Ok(Some(Frame::Data { id, fin: flags & FLAG_FIN != 0, data: body.into() }));
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != 3 {
            return Err(bad(format!("SPDY version {version} is not served: this server speaks SPDY/3.1")));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let word = |at: usize| -> io::Result<u32> {
            body.get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| bad("a SPDY control frame shorter than its fields"))
        };
        Ok(Some(match kind {
            SYN_STREAM => {
                let id = word(0)? & 0x7fff_ffff;
                let block = body.get(10..).ok_or_else(|| bad("a SYN_STREAM shorter than its fields"))?;
                let headers = parse_headers(&self.inflate_block(block)?)?;
                Frame::SynStream { id, fin: flags & FLAG_FIN != 0, headers }
            }
            RST_STREAM => Frame::Rst { id: word(0)? & 0x7fff_ffff },
            PING => Frame::Ping { id: word(0)? },
            GOAWAY => Frame::GoAway,
            _ => Frame::Ignored,
        }))
    }

    /// Inflates one header block: a piece of the connection's one zlib stream, which the
    /// client compressed with SPDY's dictionary.
    fn inflate_block(&mut self, block: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(1024);
        let mut at = 0;
        for _ in 0..64 {
            let before = self.inflate.total_in();
            let res = self.inflate.decompress_vec(&block[at..], &mut out, FlushDecompress::Sync);
            at += (self.inflate.total_in() - before) as usize;
            match res {
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate.set_dictionary(dictionary()).map_err(|e| bad(format!("SPDY's dictionary: {e}")))?;
                }
                Err(e) => return Err(bad(format!("a SPDY header block does not inflate: {e}"))),
                Ok(_) if at >= block.len() && out.len() < out.capacity() => return Ok(out),
                Ok(_) => {}
            }
            if out.len() >= MAX_HEADERS {
                return Err(bad("a SPDY header block inflates to more than 64 KiB"));
            }
            if out.len() == out.capacity() {
                out.reserve(out.len().min(MAX_HEADERS - out.len()).max(1024));
            }
        }
        Err(bad("a SPDY header block that does not end"))
    }
}

/// A header block: a count, then length-prefixed names and values (values may hold several,
/// NUL-separated). Names are lower case on the wire.
pub fn parse_headers(b: &[u8]) -> io::Result<Vec<(String, String)>> {
    let n = b.get(..4).ok_or_else(|| bad("a SPDY header block cut short"))?;
    let n = u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize;
    if n > 256 {
        return Err(bad(format!("a SPDY header block with {n} headers")));
    }
    let mut out = Vec::with_capacity(n);
    let mut at = 4usize;
    for _ in 0..n {
        let mut s = || -> io::Result<String> {
            let len = b.get(at..at + 4).map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]) as usize);
            let len = len.ok_or_else(|| bad("a SPDY header block cut short"))?;
            let v = b.get(at + 4..at + 4 + len).ok_or_else(|| bad("a SPDY header longer than its block"))?;
            at += 4 + len;
            Ok(String::from_utf8_lossy(v).into_owned())
        };
        let name = s()?;
        let value = s()?;
        out.push((name.to_ascii_lowercase(), value));
    }
    Ok(out)
}

/// The value of header `name` (lower case).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.split('\0').next().unwrap_or(""))
}

fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&(0x8003u16).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(body);
    f
}

/// A SYN_REPLY with no headers. The first header block of a connection starts the zlib stream
/// (its two-byte header, no dictionary); each block is then a stored block of the count 0 and
/// an empty stored block (a sync flush).
pub fn syn_reply(id: u32, first: bool) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    if first {
        body.extend_from_slice(&[0x78, 0x01]);
    }
    let payload = 0u32.to_be_bytes();
    let len = payload.len() as u16;
    body.push(0x00); // BFINAL 0, BTYPE 00: stored
    body.extend_from_slice(&len.to_le_bytes());
    body.extend_from_slice(&(!len).to_le_bytes());
    body.extend_from_slice(&payload);
    // An empty stored block, as a sync flush ends with: Go's inflater hands over what it has
    // only at such a block (after a non-empty one it reads on into the next frame and fails).
    body.extend_from_slice(&[0x00, 0x00, 0x00, 0xff, 0xff]);
    control(SYN_REPLY, 0, &body)
}

pub fn data(id: u32, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
    f.push(if fin { FLAG_FIN } else { 0 });
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

pub fn ping(id: u32) -> Vec<u8> {
    control(PING, 0, &id.to_be_bytes())
}

/// RST_STREAM with status REFUSED_STREAM (3).
pub fn refuse(id: u32) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    body.extend_from_slice(&3u32.to_be_bytes());
    control(RST_STREAM, 0, &body)
}

#[cfg(test)]
mod tests {
    use flate2::{Compress, Compression, FlushCompress};

    use super::*;

    /// A header block as spdystream writes one: zlib with the dictionary, sync-flushed.
    fn client_block(c: &mut Compress, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
        for (k, v) in headers {
            for s in [k, v] {
                raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
                raw.extend_from_slice(s.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        c.compress_vec(&raw, &mut out, FlushCompress::Sync).unwrap();
        out
    }

    fn syn_stream(c: &mut Compress, id: u32, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        body.extend_from_slice(&client_block(c, headers));
        control(SYN_STREAM, 0, &body)
    }

    #[tokio::test]
    async fn reads_syn_streams_with_dictionary_compressed_headers_and_data() {
        let mut c = Compress::new(Compression::best(), true);
        c.set_dictionary(dictionary()).unwrap();
        let mut wire = syn_stream(&mut c, 1, &[("streamtype", "error"), ("port", "8080"), ("requestid", "0")]);
        wire.extend(syn_stream(&mut c, 3, &[("streamtype", "data"), ("port", "8080"), ("requestid", "0")]));
        wire.extend(data(3, false, b"GET / HTTP/1.0\r\n\r\n"));
        wire.extend(data(3, true, b""));
        wire.extend(ping(1));
        wire.extend(control(9, 0, &[0, 0, 0, 3, 0, 0, 1, 0])); // WINDOW_UPDATE
        let mut r = Reader::new(&wire[..]);
        let Some(Frame::SynStream { id: 1, headers, .. }) = r.next().await.unwrap() else { panic!() };
        assert_eq!(header(&headers, "streamtype"), Some("error"));
        let Some(Frame::SynStream { id: 3, headers, .. }) = r.next().await.unwrap() else { panic!() };
        assert_eq!((header(&headers, "streamtype"), header(&headers, "port")), (Some("data"), Some("8080")));
        assert_eq!(
            r.next().await.unwrap(),
            Some(Frame::Data { id: 3, fin: false, data: Bytes::from_static(b"GET / HTTP/1.0\r\n\r\n") })
        );
        assert_eq!(r.next().await.unwrap(), Some(Frame::Data { id: 3, fin: true, data: Bytes::new() }));
        assert_eq!(r.next().await.unwrap(), Some(Frame::Ping { id: 1 }));
        assert_eq!(r.next().await.unwrap(), Some(Frame::Ignored));
        assert_eq!(r.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn hostile_frames_are_errors_not_panics() {
        let cases: Vec<Vec<u8>> = vec![
            control(SYN_STREAM, 0, &[0, 0, 0, 1]),                            // too short
            control(SYN_STREAM, 0, &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3]), // not zlib
            vec![0x80, 0x03, 0, 1, 0, 0xff, 0xff, 0xff],                      // 16 MiB control frame
            vec![0x80, 0x02, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1],                   // SPDY/2
            control(RST_STREAM, 0, &[0]),
        ];
        for wire in cases {
            assert!(Reader::new(&wire[..]).next().await.is_err(), "{wire:?}");
        }
        assert!(parse_headers(&[0, 0, 0, 1, 0, 0, 0, 9, b'a']).is_err());
        assert!(parse_headers(&[0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn our_header_blocks_inflate_as_one_stream() {
        // What the client's inflater sees: the blocks of every SYN_REPLY, one after another.
        let mut stream = vec![];
        for (i, id) in [1u32, 3, 5].iter().enumerate() {
            let f = syn_reply(*id, i == 0);
            stream.extend_from_slice(&f[12..]);
        }
        let mut d = Decompress::new(true);
        let mut out = Vec::with_capacity(64);
        d.decompress_vec(&stream, &mut out, FlushDecompress::Sync).unwrap();
        assert_eq!(out, [0u8; 12]);
    }
}
