//! Keeps a [`Snapshot`] of the cluster from watches of Services, EndpointSlices, Pods and
//! Namespaces (each event turned into the compact model at once), and rebuilds the zone index
//! after every change. The first index is published only when every watch has listed
//! everything, so a starting server never answers NXDOMAIN for names that exist.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::watcher::{self, Event};
use weft_watch::{Controller, Fold, Wake, fold};

use crate::forward::Forwarder;
use crate::metrics::Metrics;
use crate::model::{self, Key, Snapshot, key_of};
use crate::zone::{Zone, ZoneConfig};

/// The ConfigMap (in kube-system) and key that can set the upstream servers.
pub use weft_k8s::config::{DNS_UPSTREAMS as UPSTREAMS_KEY, NAME as CONFIG};

#[derive(Default)]
struct State {
    snap: Snapshot,
    synced: [bool; 4],
    /// What DNS answers changed since the last build: events that change nothing DNS reads (a
    /// pod's status conditions, an annotation) do not rebuild the index, which at 100 000 pods
    /// costs tens of milliseconds each time.
    changed: bool,
}

/// An object converted into a keyed map (one that does not convert, such as a Service without
/// a ClusterIP yet, is removed). Whether the map changed.
fn apply_keyed<K: kube::Resource, V: PartialEq>(
    m: &mut HashMap<Key, V>,
    o: &K,
    convert: fn(&K) -> Option<(Key, V)>,
) -> bool {
    match convert(o) {
        Some((k, v)) => match m.get(&k) {
            Some(old) if *old == v => false,
            _ => {
                m.insert(k, v);
                true
            }
        },
        None => key_of(o).is_some_and(|k| m.remove(&k).is_some()),
    }
}

/// A kind the snapshot keeps by `namespace/name`: what of it is kept, its field, its slot in
/// `synced`, and how an object converts.
macro_rules! keyed {
    ($kind:ty, $model:ty, $field:ident, $slot:expr, $convert:expr) => {
        impl Fold<$kind> for State {
            type Fresh = HashMap<Key, $model>;
            fn gather(fresh: &mut Self::Fresh, o: $kind) {
                apply_keyed(fresh, &o, $convert);
            }
            fn relisted(&mut self, fresh: Self::Fresh) {
                self.snap.$field = fresh;
                self.synced[$slot] = true;
                self.changed = true;
            }
            fn applied(&mut self, o: $kind) {
                self.changed |= apply_keyed(&mut self.snap.$field, &o, $convert);
            }
            fn deleted(&mut self, o: $kind) {
                if let Some(k) = key_of(&o) {
                    self.changed |= self.snap.$field.remove(&k).is_some();
                }
            }
        }
    };
}

keyed!(Service, model::Service, services, 0, model::service);
keyed!(EndpointSlice, model::Slice, slices, 1, model::slice);
keyed!(Namespace, (), namespaces, 3, |o: &Namespace| Some((key_of(o)?, ())));

impl Fold<Pod> for State {
    type Fresh = model::Pods;
    fn gather(fresh: &mut Self::Fresh, o: Pod) {
        apply_pod(fresh, &o);
    }
    fn relisted(&mut self, fresh: Self::Fresh) {
        self.snap.pods = fresh;
        self.synced[2] = true;
        self.changed = true;
    }
    fn applied(&mut self, o: Pod) {
        self.changed |= apply_pod(&mut self.snap.pods, &o);
    }
    fn deleted(&mut self, o: Pod) {
        if let Some(uid) = model::pod_uid(&o) {
            self.changed |= self.snap.pods.remove(&uid);
        }
    }
}

/// A pod with an address is put; one without (any more) is removed. Whether DNS changed.
fn apply_pod(pods: &mut model::Pods, o: &Pod) -> bool {
    match model::pod(o) {
        Some(p) => pods.put(&p),
        None => model::pod_uid(o).is_some_and(|uid| pods.remove(&uid)),
    }
}

/// Watches the cluster and keeps `zone` current. Never returns.
pub async fn run(client: kube::Client, cfg: ZoneConfig, zone: Arc<ArcSwap<Zone>>, metrics: Arc<Metrics>) {
    let state = Arc::new(Mutex::new(State::default()));
    let wake = Wake::new();
    fold::<Service, _>(Api::all(client.clone()), state.clone(), wake.clone());
    fold::<EndpointSlice, _>(Api::all(client.clone()), state.clone(), wake.clone());
    fold::<Pod, _>(Api::all(client.clone()), state.clone(), wake.clone());
    fold::<Namespace, _>(Api::all(client.clone()), state.clone(), wake.clone());
    // Every change DNS reads rebuilds at once (no debounce, no resync: the index only changes
    // with events).
    Controller::new("dns-zone")
        .wake_on(&wake)
        .run(async move || {
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            if !st.synced.iter().all(|s| *s) || !std::mem::take(&mut st.changed) {
                return Ok(());
            }
            let serial = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as u32)
                .unwrap_or(1);
            let t = std::time::Instant::now();
            let z = Zone::build(&st.snap, &cfg, serial);
            drop(st);
            metrics.zone_names.set(z.len() as i64);
            metrics.zone_builds.inc();
            tracing::debug!(names = z.len(), took = ?t.elapsed(), "zone rebuilt");
            let old = zone.swap(Arc::new(z));
            drop(old);
            metrics.ready.store(true, Ordering::Relaxed);
            release_freed_memory();
            Ok(())
        })
        .await
}

/// Gives memory freed by the last list and index build back to the system. glibc keeps freed
/// heap pages for reuse, so after the initial list of a large cluster (whole API objects,
/// dropped once converted) the process would otherwise stay at its high-water mark.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Keeps the forwarder's upstreams: `dnsUpstreams` of kube-system/weft-config when it is set,
/// else `default` (the node's resolv.conf). Never returns.
pub async fn upstreams_from_config(client: kube::Client, fwd: Arc<Forwarder>, default: Vec<std::net::SocketAddr>) {
    let api: Api<ConfigMap> = Api::namespaced(client, weft_k8s::config::NAMESPACE);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={CONFIG}"));
    let mut stream = weft_watch::events(api, cfg);
    let mut seen = false;
    while let Some(ev) = stream.next().await {
        let cm = match ev {
            Event::Init => {
                seen = false;
                continue;
            }
            Event::InitApply(cm) | Event::Apply(cm) => {
                seen = true;
                Some(cm)
            }
            Event::InitDone if seen => continue,
            Event::InitDone | Event::Delete(_) => None,
        };
        let text = cm.and_then(|c| c.data).and_then(|d| d.get(UPSTREAMS_KEY).cloned());
        match text.map(|t| crate::forward::parse_upstreams(&t)) {
            None => fwd.set_upstreams(default.clone()),
            Some(Ok(list)) => fwd.set_upstreams(list),
            Some(Err(e)) => {
                tracing::error!("kube-system/{CONFIG}: data.{UPSTREAMS_KEY}: {e}; keeping the upstreams in use")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ip: &str, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "0b8c3c0e-7f5a-4d2f-9c1e-1a2b3c4d5e6f"},
            "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]}
        }))
        .unwrap()
    }

    fn svc(ip: &str, annotation: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "annotations": {"a": annotation}},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap()
    }

    #[test]
    fn only_changes_dns_reads_ask_for_a_rebuild() {
        let mut st = State::default();
        Fold::<Pod>::relisted(&mut st, model::Pods::default());
        assert!(std::mem::take(&mut st.changed), "a relist rebuilds");
        st.applied(pod("10.244.0.5", "Pending"));
        assert!(std::mem::take(&mut st.changed), "a new pod address");
        st.applied(pod("10.244.0.5", "Running"));
        assert!(!st.changed, "a status change that keeps the address");
        st.applied(pod("10.244.0.6", "Running"));
        assert!(std::mem::take(&mut st.changed), "a new address");
        Fold::<Pod>::deleted(&mut st, pod("10.244.0.6", "Running"));
        assert!(std::mem::take(&mut st.changed));
        Fold::<Pod>::deleted(&mut st, pod("10.244.0.6", "Running"));
        assert!(!st.changed, "deleting what is not there");

        st.applied(svc("10.96.0.5", "x"));
        assert!(std::mem::take(&mut st.changed));
        st.applied(svc("10.96.0.5", "y"));
        assert!(!st.changed, "an annotation DNS does not read");
        st.applied(svc("10.96.0.7", "y"));
        assert!(std::mem::take(&mut st.changed), "a new ClusterIP");
    }
}
