//! The data plane: hyper (HTTP/1.1 and HTTP/2 by ALPN) and rustls, serving the last installed
//! [`RouteTable`].

use std::net::SocketAddr;

use crate::RouteTable;

/// Where and how the proxy serves.
#[derive(Clone, Debug)]
pub struct Options {
    /// Plain HTTP listeners.
    pub http: Vec<SocketAddr>,
    /// TLS listeners.
    pub https: Vec<SocketAddr>,
    /// /healthz and Prometheus /metrics.
    pub metrics: Vec<SocketAddr>,
    /// Worker threads (0: one per core).
    pub threads: usize,
    /// A JSON access log line per request on stdout.
    pub access_log: bool,
}

/// A running proxy.
pub struct Proxy {}

impl Proxy {
    /// Binds every listener (an error names the address) and starts serving an empty table
    /// (everything 404) until [`Proxy::install`] is called.
    pub async fn start(opts: Options) -> anyhow::Result<Proxy> {
        let _ = opts;
        Ok(Proxy {})
    }

    /// Makes `table` the one new requests are routed by; requests in flight and open
    /// connections (WebSockets among them) carry on.
    pub fn install(&self, table: RouteTable) {
        let _ = table;
    }
}
