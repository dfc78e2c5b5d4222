//! Where pods reach the API: the `default/kubernetes` Endpoints and EndpointSlice name the
//! advertise address on port 6443 (`https`), kept so as kube-apiserver's endpoint reconciler
//! keeps them (written at start and every 10 s if they differ: a deleted or edited one comes
//! back); and [`forward`], which serves that address (a listener the daemon made inside the
//! lab's network) by passing its connections to the loopback listener, TLS untouched.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use weft_api::kinds;

use crate::rest::{Api, Target, WriteOpts};

/// The API's port on the advertise address (kube-apiserver's `--secure-port`).
pub const PORT: u16 = 6443;
const RECONCILE_EVERY: Duration = Duration::from_secs(10);
/// Connections forwarded at once at most; more wait in the listen backlog.
const MAX_FORWARDED: usize = 1024;

/// The Endpoints kube-apiserver writes for itself (not mirrored into a slice: it writes its own).
pub fn endpoints(ip: IpAddr) -> Value {
    json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": ip.to_string()}],
                     "ports": [{"name": "https", "port": PORT, "protocol": "TCP"}]}]})
}

/// The EndpointSlice kube-apiserver writes for itself.
pub fn endpoint_slice(ip: IpAddr) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": if ip.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": PORT, "protocol": "TCP"}]})
}

/// Whether `current` already says what `want` says (the fields the reconciler owns).
fn same(current: &Value, want: &Value, fields: &[&str]) -> bool {
    fields.iter().all(|f| current.get(*f) == want.get(*f))
        && want.pointer("/metadata/labels").and_then(Value::as_object).is_none_or(|labels| {
            labels.iter().all(|(k, v)| current.pointer("/metadata/labels").and_then(|l| l.get(k)) == Some(v))
        })
}

/// Writes `want` (through the API) unless it is there already.
async fn ensure(api: &Api, group: &str, plural: &str, want: Value, fields: &[&str]) {
    let Some(kind) = kinds::by_path(group, "v1", plural) else { return };
    let key = weft_store::Key::new(&kind.resource_key(), "default", "kubernetes");
    let result = match api.store.get(&key) {
        None => {
            let t = Target { kind, namespace: Some("default".into()), name: None, sub: None };
            api.create(&t, &serde_json::to_vec(&want).unwrap_or_default(), WriteOpts::default()).await
        }
        Some(cur) if same(&cur, &want, fields) => return,
        Some(cur) => {
            let mut v = want;
            let mut labels = cur.pointer("/metadata/labels").cloned().unwrap_or_else(|| json!({}));
            if let (Some(l), Some(w)) =
                (labels.as_object_mut(), v.pointer("/metadata/labels").and_then(Value::as_object))
            {
                l.extend(w.clone());
            }
            v["metadata"]["labels"] = labels;
            v["metadata"]["resourceVersion"] = cur.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
            let t = Target { kind, namespace: Some("default".into()), name: Some("kubernetes".into()), sub: None };
            api.update(&t, &serde_json::to_vec(&v).unwrap_or_default(), WriteOpts::default()).await
        }
    };
    if let Err(e) = result
        && e.code != 409
    {
        tracing::warn!(resource = plural, error = %e.message, "writing the kubernetes Service's endpoints");
    }
}

/// Keeps `default/kubernetes`'s Endpoints and EndpointSlice naming `advertise` (nothing to keep
/// without one). Runs until the process ends.
pub async fn reconcile(api: Arc<Api>, advertise: Option<IpAddr>) {
    let Some(ip) = advertise else { return };
    loop {
        ensure(&api, "", "endpoints", endpoints(ip), &["subsets"]).await;
        ensure(&api, "discovery.k8s.io", "endpointslices", endpoint_slice(ip), &["addressType", "endpoints", "ports"])
            .await;
        tokio::time::sleep(RECONCILE_EVERY).await;
    }
}

/// Serves `listener` (made wherever pods reach it) by passing each connection to the API's own
/// listener at `to`. Runs until the process ends.
pub async fn forward(listener: tokio::net::TcpListener, to: SocketAddr) {
    forward_with(listener, move || Box::pin(tokio::net::TcpStream::connect(to))).await
}

/// A connection to where [`forward_with`] passes what it accepts.
pub type Connecting =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<tokio::net::TcpStream>> + Send>>;

/// [`forward`], with each outbound connection made by `connect` (say, inside another network
/// namespace). At most `MAX_FORWARDED` at once; a connect taking over 5 s drops the client.
pub async fn forward_with(listener: tokio::net::TcpListener, connect: impl Fn() -> Connecting) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDED));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut inbound = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection to forward to the API");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let outbound = connect();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = inbound.set_nodelay(true);
            let Ok(Ok(mut outbound)) = tokio::time::timeout(Duration::from_secs(5), outbound).await else {
                return;
            };
            let _ = outbound.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoints_are_kube_apiservers() {
        let ip: IpAddr = "172.18.0.10".parse().unwrap();
        let e = endpoints(ip);
        assert_eq!(e["subsets"][0]["addresses"][0]["ip"], "172.18.0.10");
        assert_eq!(e["subsets"][0]["ports"][0], json!({"name": "https", "port": 6443, "protocol": "TCP"}));
        let s = endpoint_slice(ip);
        assert_eq!(s["metadata"]["labels"]["kubernetes.io/service-name"], "kubernetes");
        assert_eq!(s["addressType"], "IPv4");
    }

    #[test]
    fn sameness_looks_at_owned_fields_and_labels_only() {
        let ip: IpAddr = "172.18.0.10".parse().unwrap();
        let mut cur = endpoints(ip);
        cur["metadata"]["resourceVersion"] = json!("7");
        cur["metadata"]["labels"]["extra"] = json!("x");
        assert!(same(&cur, &endpoints(ip), &["subsets"]));
        cur["metadata"]["labels"] = json!({});
        assert!(!same(&cur, &endpoints(ip), &["subsets"]));
        assert!(!same(&endpoints("172.18.0.11".parse().unwrap()), &endpoints(ip), &["subsets"]));
    }
}
