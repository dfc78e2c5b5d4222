//! Keeps a [`Snapshot`] of the cluster from watches of Services, EndpointSlices, Pods and
//! Namespaces (each event turned into the compact model at once), and rebuilds the zone index
//! after every change. The first index is published only when every watch has listed
//! everything, so a starting server never answers NXDOMAIN for names that exist.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::forward::Forwarder;
use crate::metrics::Metrics;
use crate::model::{self, Key, Snapshot, key_of};
use crate::zone::{Zone, ZoneConfig};

/// The ConfigMap (in kube-system) and key that can set the upstream servers.
pub const CONFIG: &str = "weft-config";
pub const UPSTREAMS_KEY: &str = "dnsUpstreams";

#[derive(Default)]
struct State {
    snap: Snapshot,
    synced: [bool; 4],
}

/// A kind the DNS watches, and how its events change its part of the snapshot.
trait Watched: kube::Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static {
    type Part: Default + Send + 'static;
    fn part(s: &mut Snapshot) -> &mut Self::Part;
    fn apply(part: &mut Self::Part, o: &Self);
    fn delete(part: &mut Self::Part, o: &Self);
}

/// An object converted into a keyed map (one that does not convert, such as a Service without
/// a ClusterIP yet, is removed).
fn apply_keyed<K: kube::Resource, V>(m: &mut HashMap<Key, V>, o: &K, convert: fn(&K) -> Option<(Key, V)>) {
    match convert(o) {
        Some((k, v)) => {
            m.insert(k, v);
        }
        None => {
            if let Some(k) = key_of(o) {
                m.remove(&k);
            }
        }
    }
}

fn delete_keyed<K: kube::Resource, V>(m: &mut HashMap<Key, V>, o: &K) {
    if let Some(k) = key_of(o) {
        m.remove(&k);
    }
}

impl Watched for Service {
    type Part = HashMap<Key, model::Service>;
    fn part(s: &mut Snapshot) -> &mut Self::Part {
        &mut s.services
    }
    fn apply(part: &mut Self::Part, o: &Self) {
        apply_keyed(part, o, model::service)
    }
    fn delete(part: &mut Self::Part, o: &Self) {
        delete_keyed(part, o)
    }
}

impl Watched for EndpointSlice {
    type Part = HashMap<Key, model::Slice>;
    fn part(s: &mut Snapshot) -> &mut Self::Part {
        &mut s.slices
    }
    fn apply(part: &mut Self::Part, o: &Self) {
        apply_keyed(part, o, model::slice)
    }
    fn delete(part: &mut Self::Part, o: &Self) {
        delete_keyed(part, o)
    }
}

impl Watched for Namespace {
    type Part = HashMap<Key, ()>;
    fn part(s: &mut Snapshot) -> &mut Self::Part {
        &mut s.namespaces
    }
    fn apply(part: &mut Self::Part, o: &Self) {
        apply_keyed(part, o, |o| Some((key_of(o)?, ())))
    }
    fn delete(part: &mut Self::Part, o: &Self) {
        delete_keyed(part, o)
    }
}

impl Watched for Pod {
    type Part = model::Pods;
    fn part(s: &mut Snapshot) -> &mut Self::Part {
        &mut s.pods
    }
    fn apply(part: &mut Self::Part, o: &Self) {
        match model::pod(o) {
            Some(p) => part.put(&p),
            None => {
                if let Some(uid) = model::pod_uid(o) {
                    part.remove(&uid)
                }
            }
        }
    }
    fn delete(part: &mut Self::Part, o: &Self) {
        if let Some(uid) = model::pod_uid(o) {
            part.remove(&uid)
        }
    }
}

/// Runs one watch into its part of the snapshot. A (re)list is gathered apart and swapped in
/// whole when it is complete, so the zone never sees half a list.
fn watch_into<K: Watched>(api: Api<K>, state: Arc<Mutex<State>>, notify: Arc<Notify>, slot: usize) {
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
        let mut fresh: Option<K::Part> = None;
        while let Some(ev) = stream.next().await {
            let Ok(ev) = ev else { continue };
            match ev {
                Event::Init => fresh = Some(K::Part::default()),
                Event::InitApply(o) => {
                    if let Some(f) = fresh.as_mut() {
                        K::apply(f, &o);
                    }
                    // Nothing for the zone yet.
                    continue;
                }
                Event::InitDone => {
                    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                    *K::part(&mut st.snap) = fresh.take().unwrap_or_default();
                    st.synced[slot] = true;
                }
                Event::Apply(o) => K::apply(K::part(&mut state.lock().unwrap_or_else(|e| e.into_inner()).snap), &o),
                Event::Delete(o) => K::delete(K::part(&mut state.lock().unwrap_or_else(|e| e.into_inner()).snap), &o),
            }
            notify.notify_one();
        }
    });
}

/// Watches the cluster and keeps `zone` current. Never returns.
pub async fn run(client: kube::Client, cfg: ZoneConfig, zone: Arc<ArcSwap<Zone>>, metrics: Arc<Metrics>) {
    let state = Arc::new(Mutex::new(State::default()));
    let notify = Arc::new(Notify::new());
    watch_into::<Service>(Api::all(client.clone()), state.clone(), notify.clone(), 0);
    watch_into::<EndpointSlice>(Api::all(client.clone()), state.clone(), notify.clone(), 1);
    watch_into::<Pod>(Api::all(client.clone()), state.clone(), notify.clone(), 2);
    watch_into::<Namespace>(Api::all(client.clone()), state.clone(), notify.clone(), 3);
    loop {
        notify.notified().await;
        let st = state.lock().unwrap_or_else(|e| e.into_inner());
        if !st.synced.iter().all(|s| *s) {
            continue;
        }
        let serial =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as u32).unwrap_or(1);
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
    }
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
    let api: Api<ConfigMap> = Api::namespaced(client, "kube-system");
    let cfg = watcher::Config::default().fields(&format!("metadata.name={CONFIG}"));
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    let mut seen = false;
    while let Some(ev) = stream.next().await {
        let Ok(ev) = ev else { continue };
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
