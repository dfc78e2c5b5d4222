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

/// Runs one watch into one map of the snapshot.
fn watch_into<K, V>(
    api: Api<K>,
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
    slot: usize,
    convert: fn(&K) -> Option<(Key, V)>,
    key_of: fn(&K) -> Option<Key>,
    map: fn(&mut Snapshot) -> &mut HashMap<Key, V>,
) where
    K: kube::Resource<DynamicType = ()> + Clone + Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    V: Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
        let mut fresh: Option<HashMap<Key, V>> = None;
        while let Some(ev) = stream.next().await {
            let Ok(ev) = ev else { continue };
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            match ev {
                Event::Init => fresh = Some(HashMap::new()),
                Event::InitApply(o) => {
                    if let (Some(f), Some((k, v))) = (fresh.as_mut(), convert(&o)) {
                        f.insert(k, v);
                    }
                }
                Event::InitDone => {
                    *map(&mut st.snap) = fresh.take().unwrap_or_default();
                    st.synced[slot] = true;
                }
                Event::Apply(o) => match (convert(&o), key_of(&o)) {
                    (Some((k, v)), _) => {
                        map(&mut st.snap).insert(k, v);
                    }
                    (None, Some(k)) => {
                        map(&mut st.snap).remove(&k);
                    }
                    _ => {}
                },
                Event::Delete(o) => {
                    if let Some(k) = key_of(&o) {
                        map(&mut st.snap).remove(&k);
                    }
                }
            }
            drop(st);
            notify.notify_one();
        }
    });
}

/// Watches the cluster and keeps `zone` current. Never returns.
pub async fn run(client: kube::Client, cfg: ZoneConfig, zone: Arc<ArcSwap<Zone>>, metrics: Arc<Metrics>) {
    let state = Arc::new(Mutex::new(State::default()));
    let notify = Arc::new(Notify::new());
    let (s, n) = (state.clone(), notify.clone());
    watch_into::<Service, _>(Api::all(client.clone()), s, n, 0, model::service, key_of, |s| &mut s.services);
    let (s, n) = (state.clone(), notify.clone());
    watch_into::<EndpointSlice, _>(Api::all(client.clone()), s, n, 1, model::slice, key_of, |s| &mut s.slices);
    let (s, n) = (state.clone(), notify.clone());
    watch_into::<Pod, _>(Api::all(client.clone()), s, n, 2, model::pod, key_of, |s| &mut s.pods);
    let (s, n) = (state.clone(), notify.clone());
    watch_into::<Namespace, _>(
        Api::all(client.clone()),
        s,
        n,
        3,
        |o| Some((key_of(o)?, ())),
        key_of,
        |s| &mut s.namespaces,
    );
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
