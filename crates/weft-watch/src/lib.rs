//! The one way weft's control loops see the API: a reflector cache of a kind, kept by a watch,
//! that wakes a shared [`Wake`] on every change (added, modified or deleted), so a loop can be
//! level-triggered over several caches at once; the one shape of a control loop
//! ([`Controller`]); and the client the daemons of cluster mode make from a kubeconfig or the
//! in-cluster service account.
//!
//! A watch that fails (an RBAC 403, a lost API server) is retried with kube's backoff and
//! logged, at most once a minute per watch, so a misconfiguration is visible without a flood.

mod controller;
mod errors;

use std::sync::Arc;

pub use controller::{Controller, Wake};
use errors::WatchErrors;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, reflector, watcher};

/// A client from a kubeconfig; else, in a pod, its service account; else kube's defaults
/// ($KUBECONFIG, `~/.kube/config`, in-cluster).
pub async fn client(kubeconfig: Option<std::path::PathBuf>) -> anyhow::Result<kube::Client> {
    use anyhow::Context;
    Ok(match kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(&p).with_context(|| format!("reading {}", p.display()))?;
            kube::Client::try_from(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?)?
        }
        // In a pod, its own ServiceAccount first: kube's default order reads `~/.kube/config`
        // before the in-cluster configuration, and a lab's pods share the host's files, where
        // that may be some other cluster's admin credentials.
        None if in_a_pod() => kube::Client::try_from(
            kube::Config::incluster().context("reading the in-cluster service account of this pod")?,
        )?,
        None => kube::Client::try_default().await.context("no kubeconfig and no in-cluster service account")?,
    })
}

/// Whether this process runs in a pod with a ServiceAccount token mounted (what client-go's
/// `InClusterConfig` looks for).
pub fn in_a_pod() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        && std::env::var_os("KUBERNETES_SERVICE_PORT").is_some()
        && std::path::Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token").exists()
}

/// Starts watching every object of `K` (all namespaces) into a cache; `wake` fires on changes.
pub fn cached<K>(client: &kube::Client, wake: Wake) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    cached_with(Api::all(client.clone()), watcher::Config::default(), wake)
}

/// As [`cached`], for a given API and watch configuration (a namespace, a field selector).
pub fn cached_with<K>(api: Api<K>, cfg: watcher::Config, wake: Wake) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    tokio::spawn(async move {
        let mut errors = WatchErrors::new(K::kind(&()).into_owned());
        let mut s = watcher(api, cfg).default_backoff().reflect(writer).touched_objects().boxed();
        while let Some(ev) = s.next().await {
            match ev {
                Ok(_) => {
                    errors.recovered();
                    wake.wake();
                }
                Err(e) => {
                    errors.failed(&e);
                }
            }
        }
    });
    reader
}

/// The events of a watch of `api` (kube's backoff between retries); failures are logged (see
/// the crate docs), not returned.
pub fn events<K>(api: Api<K>, cfg: watcher::Config) -> futures::stream::BoxStream<'static, watcher::Event<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let mut errors = WatchErrors::new(K::kind(&()).into_owned());
    watcher(api, cfg)
        .default_backoff()
        .filter_map(move |ev| {
            let ev = match ev {
                Ok(ev) => {
                    errors.recovered();
                    Some(ev)
                }
                Err(e) => {
                    errors.failed(&e);
                    None
                }
            };
            std::future::ready(ev)
        })
        .boxed()
}

/// How the events of a watch of `K` change an owner's own state (one that keeps its own index
/// or a compact model instead of a cache of whole objects), for [`fold`].
pub trait Fold<K>: Send + 'static {
    /// Where a (re)list is gathered before it replaces what the state holds of `K`.
    type Fresh: Default + Send;
    fn gather(fresh: &mut Self::Fresh, o: K);
    /// A (re)list is complete: it replaces what the state held of `K`.
    fn relisted(&mut self, fresh: Self::Fresh);
    fn applied(&mut self, o: K);
    fn deleted(&mut self, o: K);
}

/// Feeds every event of a watch of `api` into `state`. A (re)list is gathered apart (without the
/// lock) and handed over whole, so the state never shows half a list; `wake` fires after each
/// change, not for each object of a list.
pub fn fold<K, S>(api: Api<K>, state: Arc<std::sync::Mutex<S>>, wake: Wake)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    S: Fold<K>,
{
    tokio::spawn(async move {
        let mut stream = events(api, watcher::Config::default());
        let mut fresh: Option<S::Fresh> = None;
        while let Some(ev) = stream.next().await {
            let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
            match ev {
                watcher::Event::Init => {
                    fresh = Some(S::Fresh::default());
                    continue;
                }
                watcher::Event::InitApply(o) => {
                    if let Some(f) = fresh.as_mut() {
                        S::gather(f, o);
                    }
                    continue;
                }
                watcher::Event::InitDone => lock().relisted(fresh.take().unwrap_or_default()),
                watcher::Event::Apply(o) => lock().applied(o),
                watcher::Event::Delete(o) => lock().deleted(o),
            }
            wake.wake();
        }
    });
}
