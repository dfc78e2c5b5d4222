//! The API source: reflector caches of the kinds a table is compiled from, a snapshot of them
//! after every change; and what the controller writes back (Ingress status, Events).
//!
//! [`Source`] keeps the caches (Secrets only of type `kubernetes.io/tls`, selected by the API
//! server) and hands [`Inputs`] to its caller after each burst of changes, once every cache has
//! listed. [`WriteBack`] is told what each compile served and found wrong and, on a task of its
//! own so a slow API never holds up the data plane, sets `status.loadBalancer` of the served
//! Ingresses to the published address and records Events: a Warning per new problem (not again
//! while the problem stays), a Normal `Sync` when an Ingress is first served.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass, IngressLoadBalancerIngress};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use serde_json::json;
use weft_watch::{Controller, Wake};

use crate::{Inputs, ObjectRef, Problem};

/// The Events' reporting controller and the status writes' field manager.
pub const MANAGER: &str = "weft-ingress";
/// A burst of changes makes one snapshot.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// The write-back's pass runs at least this often, so a status someone else changed is put
/// back (ingress-nginx syncs status every 60 s).
const RESYNC: Duration = Duration::from_secs(60);
/// One API call of the write-back, at most.
const CALL_LIMIT: Duration = Duration::from_secs(10);
/// Status writes in flight at once.
const CONCURRENT_WRITES: usize = 8;

/// The caches of everything a table is compiled from.
#[derive(Clone)]
pub struct Caches {
    pub ingresses: Store<Ingress>,
    pub classes: Store<IngressClass>,
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    pub secrets: Store<Secret>,
}

impl Caches {
    /// Every object cached now, sorted by namespace and name (so the same objects make the same
    /// inputs, whatever order the caches hold them in).
    pub fn snapshot(&self) -> Inputs {
        Inputs {
            ingresses: sorted(self.ingresses.state()),
            classes: sorted(self.classes.state()),
            services: sorted(self.services.state()),
            slices: sorted(self.slices.state()),
            secrets: sorted(self.secrets.state()),
        }
    }

    async fn listed(&self) {
        let _ = futures::join!(
            self.ingresses.wait_until_ready(),
            self.classes.wait_until_ready(),
            self.services.wait_until_ready(),
            self.slices.wait_until_ready(),
            self.secrets.wait_until_ready(),
        );
    }
}

fn sorted<K: kube::Resource>(mut v: Vec<Arc<K>>) -> Vec<Arc<K>> {
    v.sort_by(|a, b| {
        (a.meta().namespace.as_deref(), a.meta().name.as_deref())
            .cmp(&(b.meta().namespace.as_deref(), b.meta().name.as_deref()))
    });
    v
}

/// The API source: watches of Ingresses, IngressClasses, Services, EndpointSlices and TLS
/// Secrets in every namespace.
pub struct Source {
    pub caches: Caches,
    wake: Wake,
}

impl Source {
    /// Starts the watches (on the current runtime).
    pub fn start(client: &kube::Client) -> Source {
        let wake = Wake::new();
        // Only TLS Secrets: the API server selects them (kube-apiserver and weft's both take
        // `type` as a Secret's field label), so other Secrets are neither sent nor kept.
        let tls = watcher::Config::default().fields("type=kubernetes.io/tls");
        let caches = Caches {
            ingresses: weft_watch::cached(client, wake.clone()),
            classes: weft_watch::cached(client, wake.clone()),
            services: weft_watch::cached(client, wake.clone()),
            slices: weft_watch::cached(client, wake.clone()),
            secrets: weft_watch::cached_with(Api::all(client.clone()), tls, wake.clone()),
        };
        Source { caches, wake }
    }

    /// Calls `on_change` with a snapshot once every cache has listed, then after every burst of
    /// changes (20 ms apart at most). Never returns.
    pub async fn run(self, mut on_change: impl FnMut(Inputs) + Send) {
        self.caches.listed().await;
        tracing::info!(
            ingresses = self.caches.ingresses.len(),
            services = self.caches.services.len(),
            secrets = self.caches.secrets.len(),
            "every cache has listed"
        );
        let caches = self.caches;
        Controller::new("ingress-source")
            .wake_on(&self.wake)
            .debounce(DEBOUNCE)
            .run(async || {
                on_change(caches.snapshot());
                Ok(())
            })
            .await
    }
}

/// Where the address written to served Ingresses' `status.loadBalancer.ingress` comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Publish {
    /// Nothing is written (neither flag given).
    Nothing,
    /// `--publish-status-address`: these addresses as they are.
    Addresses(Vec<IngressLoadBalancerIngress>),
    /// `--publish-service`: that Service's addresses, as ingress-nginx takes them.
    Service(ObjectRef),
}

impl Publish {
    /// `--publish-status-address` (comma-separated IPs or hostnames) if given, else
    /// `--publish-service` (`namespace/name`), as ingress-nginx prefers them.
    pub fn from_flags(service: Option<&str>, addresses: Option<&str>) -> anyhow::Result<Publish> {
        if let Some(list) = addresses.filter(|a| !a.trim().is_empty()) {
            let mut out = vec![];
            for a in list.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                out.push(if a.parse::<std::net::IpAddr>().is_ok() {
                    IngressLoadBalancerIngress { ip: Some(a.into()), ..Default::default() }
                } else if is_hostname(a) {
                    IngressLoadBalancerIngress { hostname: Some(a.into()), ..Default::default() }
                } else {
                    anyhow::bail!(
                        "--publish-status-address: {a:?} is neither an IP address nor a DNS name: give addresses such as 192.0.2.10,lb.example.com"
                    );
                });
            }
            return Ok(Publish::Addresses(sorted_addresses(out)));
        }
        match service.map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(Publish::Nothing),
            Some(s) => match s.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                    Ok(Publish::Service(ObjectRef { namespace: ns.into(), name: name.into() }))
                }
                _ => anyhow::bail!(
                    "--publish-service {s:?} is not namespace/name: give the controller's Service, such as kube-system/weft-ingress"
                ),
            },
        }
    }
}

/// A DNS name as `status.loadBalancer.ingress[].hostname` takes it (RFC 1123 labels).
fn is_hostname(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// The addresses ingress-nginx publishes for a Service (`statusAddressFromService`): a
/// LoadBalancer's status addresses and external IPs, a NodePort's external IPs else its
/// ClusterIP, a ClusterIP's ClusterIP, an ExternalName's name.
pub fn service_addresses(svc: &Service) -> Vec<IngressLoadBalancerIngress> {
    let spec = svc.spec.clone().unwrap_or_default();
    let ip = |a: &str| IngressLoadBalancerIngress { ip: Some(a.to_string()), ..Default::default() };
    let external = || spec.external_ips.iter().flatten().map(|a| ip(a)).collect::<Vec<_>>();
    let cluster_ip = || spec.cluster_ip.iter().filter(|c| !c.is_empty() && *c != "None").map(|c| ip(c)).collect();
    let out = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ExternalName" => spec
            .external_name
            .iter()
            .map(|n| IngressLoadBalancerIngress { hostname: Some(n.clone()), ..Default::default() })
            .collect(),
        "NodePort" if spec.external_ips.as_ref().is_some_and(|e| !e.is_empty()) => external(),
        "LoadBalancer" => {
            let lb = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.as_ref());
            let mut out: Vec<_> = lb
                .into_iter()
                .flatten()
                .filter_map(|i| match (i.ip.as_deref(), i.hostname.as_deref()) {
                    (Some(a), _) if !a.is_empty() => Some(ip(a)),
                    (_, Some(h)) if !h.is_empty() => {
                        Some(IngressLoadBalancerIngress { hostname: Some(h.into()), ..Default::default() })
                    }
                    _ => None,
                })
                .collect();
            out.extend(external());
            out
        }
        _ => cluster_ip(),
    };
    sorted_addresses(out)
}

/// Sorted by IP, then hostname, duplicates dropped: the same addresses always compare equal.
fn sorted_addresses(mut v: Vec<IngressLoadBalancerIngress>) -> Vec<IngressLoadBalancerIngress> {
    v.sort_by(|a, b| (&a.ip, &a.hostname).cmp(&(&b.ip, &b.hostname)));
    v.dedup_by(|a, b| a.ip == b.ip && a.hostname == b.hostname);
    v
}

/// What one compile served and found wrong.
#[derive(Clone, Debug, Default)]
struct Report {
    served: Vec<ObjectRef>,
    problems: Vec<Problem>,
}

/// The write-back: status and Events from what each compile reports.
pub struct WriteBack {
    latest: Arc<Mutex<Option<Report>>>,
    wake: Wake,
}

/// What the write-back has done, so it does it once.
#[derive(Default)]
struct Done {
    /// Ingresses (by uid) whose status this process has set.
    statused: BTreeSet<String>,
    /// The problems last reported per Ingress uid.
    problems: HashMap<String, BTreeSet<(&'static str, String)>>,
    /// Ingresses (by uid) that got their `Sync` Event.
    synced: BTreeSet<String>,
}

impl WriteBack {
    /// Starts the write-back's task (on the current runtime). `ingresses` is the source's cache
    /// (the objects whose status is compared and whose uid Events name). With `election`, the
    /// task runs only while this replica holds that Lease: of several replicas, one writes
    /// status and Events (a new leader starts from nothing, so it checks every Ingress again).
    pub fn start(
        client: kube::Client,
        ingresses: Store<Ingress>,
        publish: Publish,
        election: Option<weft_leader::Config>,
    ) -> WriteBack {
        let wake = Wake::new();
        let latest: Arc<Mutex<Option<Report>>> = Arc::default();
        let publish_svc = match &publish {
            Publish::Service(r) => {
                let cfg = watcher::Config::default().fields(&format!("metadata.name={}", r.name));
                Some(weft_watch::cached_with(
                    Api::<Service>::namespaced(client.clone(), &r.namespace),
                    cfg,
                    wake.clone(),
                ))
            }
            _ => None,
        };
        if publish == Publish::Nothing {
            tracing::info!(
                "no --publish-service or --publish-status-address: the status of Ingresses is left as it is"
            );
        }
        let reporter = Reporter { controller: MANAGER.into(), instance: instance() };
        let (task_wake, task_latest, task_client) = (wake.clone(), latest.clone(), client.clone());
        let term = move || {
            let mut task = Task {
                client: task_client.clone(),
                reporter: reporter.clone(),
                ingresses: ingresses.clone(),
                latest: task_latest.clone(),
                publish: publish.clone(),
                publish_svc: publish_svc.clone(),
                done: Done::default(),
                warned_empty: false,
            };
            let wake = task_wake.clone();
            async move {
                Controller::new("ingress-status")
                    .wake_on(&wake)
                    .debounce(Duration::from_millis(100))
                    .resync(RESYNC)
                    .run(async move || task.pass().await)
                    .await
            }
        };
        match election {
            None => drop(tokio::spawn(term())),
            Some(cfg) => drop(tokio::spawn(async move {
                match weft_leader::Elector::new(client, cfg) {
                    Ok(e) => e.run(term).await,
                    Err(e) => tracing::error!(error = %e, "the status write-back's election: nothing is written"),
                }
            })),
        }
        WriteBack { latest, wake }
    }

    /// Tells the write-back what a compile served and found wrong (only the latest report
    /// counts; earlier ones not yet written are skipped).
    pub fn report(&self, served: &[ObjectRef], problems: &[Problem]) {
        let r = Report { served: served.to_vec(), problems: problems.to_vec() };
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        self.wake.wake();
    }
}

/// The write-back's task and what it keeps between passes.
/// This replica's name: `$POD_NAME`, else the host's name.
pub fn instance() -> Option<String> {
    std::env::var("POD_NAME").ok().filter(|p| !p.is_empty()).or_else(|| nix_hostname().filter(|h| !h.is_empty()))
}

struct Task {
    client: kube::Client,
    reporter: Reporter,
    ingresses: Store<Ingress>,
    latest: Arc<Mutex<Option<Report>>>,
    publish: Publish,
    publish_svc: Option<Store<Service>>,
    done: Done,
    warned_empty: bool,
}

impl Task {
    /// The addresses to publish now (None: nothing to write).
    fn addresses(&mut self) -> Option<Vec<IngressLoadBalancerIngress>> {
        match (&self.publish, &self.publish_svc) {
            (Publish::Addresses(a), _) => Some(a.clone()),
            (Publish::Service(r), Some(cache)) => {
                let svc = cache.state().into_iter().find(|s| s.metadata.name.as_deref() == Some(&r.name));
                let a = svc.map(|s| service_addresses(&s)).unwrap_or_default();
                if a.is_empty() && !self.warned_empty {
                    self.warned_empty = true;
                    tracing::warn!(service = %r, "--publish-service has no address yet (no such Service, or its load balancer is pending): Ingress status waits for one");
                }
                Some(a).filter(|a| !a.is_empty())
            }
            _ => None,
        }
    }

    async fn pass(&mut self) -> anyhow::Result<()> {
        let Some(report) = self.latest.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return Ok(());
        };
        let by_ref: BTreeMap<ObjectRef, Arc<Ingress>> =
            self.ingresses.state().into_iter().filter_map(|i| Some((object_ref(&i)?, i))).collect();
        let written = match self.addresses() {
            Some(a) => write_status(&self.client, &by_ref, &report.served, &a, &mut self.done).await,
            None => Ok(()),
        };
        // Events even when a status write failed (the pass is retried for the status only:
        // what was recorded is remembered).
        record_events(&self.client, &self.reporter, &by_ref, &report, &mut self.done).await;
        written
    }
}

fn nix_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string())
}

fn object_ref(i: &Ingress) -> Option<ObjectRef> {
    Some(ObjectRef { namespace: i.metadata.namespace.clone()?, name: i.metadata.name.clone()? })
}

fn current_addresses(i: &Ingress) -> Vec<IngressLoadBalancerIngress> {
    i.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.clone()).unwrap_or_default()
}

/// Whether this controller wrote `i`'s status (in this process, or before: its status
/// subresource names our field manager).
fn wrote_status(i: &Ingress, done: &Done) -> bool {
    i.metadata.uid.as_ref().is_some_and(|u| done.statused.contains(u))
        || i.metadata
            .managed_fields
            .iter()
            .flatten()
            .any(|m| m.manager.as_deref() == Some(MANAGER) && m.subresource.as_deref() == Some("status"))
}

/// What the status of each Ingress should be: the addresses for a served one; none for one we
/// no longer serve whose status is still our addresses and was written by us (another
/// controller's addresses are never touched).
fn status_changes(
    ingresses: &BTreeMap<ObjectRef, Arc<Ingress>>,
    served: &[ObjectRef],
    addresses: &[IngressLoadBalancerIngress],
    done: &Done,
) -> Vec<(ObjectRef, Vec<IngressLoadBalancerIngress>)> {
    let served: BTreeSet<&ObjectRef> = served.iter().collect();
    let mut out = vec![];
    for (r, i) in ingresses {
        let current = sorted_addresses(current_addresses(i));
        if served.contains(r) {
            if current != addresses {
                out.push((r.clone(), addresses.to_vec()));
            }
        } else if !current.is_empty() && current == addresses && wrote_status(i, done) {
            out.push((r.clone(), vec![]));
        }
    }
    out
}

async fn write_status(
    client: &kube::Client,
    ingresses: &BTreeMap<ObjectRef, Arc<Ingress>>,
    served: &[ObjectRef],
    addresses: &[IngressLoadBalancerIngress],
    done: &mut Done,
) -> anyhow::Result<()> {
    let changes = status_changes(ingresses, served, addresses, done);
    let mut results = Vec::with_capacity(changes.len());
    for chunk in changes.chunks(CONCURRENT_WRITES) {
        let calls = chunk.iter().cloned().map(|(r, want)| patch_status(client.clone(), r, want));
        results.extend(futures::future::join_all(calls).await);
    }
    let mut failed = None;
    for (r, cleared, res) in results {
        match res {
            Ok(Ok(i)) => {
                tracing::info!(ingress = %r, cleared, "status.loadBalancer written");
                if let Some(uid) = i.metadata.uid {
                    done.statused.insert(uid);
                }
            }
            // Deleted meanwhile: nothing to write.
            Ok(Err(kube::Error::Api(s))) if s.code == 404 => {}
            Ok(Err(kube::Error::Api(s))) if s.code == 403 => {
                failed = Some(anyhow::anyhow!(
                    "writing the status of Ingress {r}: {}: grant this controller's ServiceAccount update and patch on ingresses/status (deploy/ingress.yaml's ClusterRole)",
                    s.message
                ));
            }
            Ok(Err(e)) => failed = Some(anyhow::anyhow!("writing the status of Ingress {r}: {e}")),
            Err(_) => failed = Some(anyhow::anyhow!("writing the status of Ingress {r}: no answer in {CALL_LIMIT:?}")),
        }
    }
    failed.map_or(Ok(()), Err)
}

/// Sets (or, for an empty `want`, removes) `status.loadBalancer.ingress` of Ingress `r`.
async fn patch_status(
    client: kube::Client,
    r: ObjectRef,
    want: Vec<IngressLoadBalancerIngress>,
) -> (ObjectRef, bool, Result<kube::Result<Ingress>, tokio::time::error::Elapsed>) {
    let api: Api<Ingress> = Api::namespaced(client, &r.namespace);
    // A merge patch: `ingress: null` removes the list (loadBalancer stays, empty).
    let body = if want.is_empty() {
        json!({"status": {"loadBalancer": {"ingress": null}}})
    } else {
        json!({"status": {"loadBalancer": {"ingress": want}}})
    };
    let pp = PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() };
    let res = tokio::time::timeout(CALL_LIMIT, api.patch_status(&r.name, &pp, &Patch::Merge(&body))).await;
    (r, want.is_empty(), res)
}

/// The Events due now: a Warning per problem an Ingress did not have at the last report, a
/// Normal `Sync` for an Ingress served for the first time. Forgets Ingresses that are gone.
fn events_due(
    ingresses: &BTreeMap<ObjectRef, Arc<Ingress>>,
    report: &Report,
    done: &mut Done,
) -> Vec<(Arc<Ingress>, EventType, &'static str, String)> {
    let mut now: HashMap<String, BTreeSet<(&'static str, String)>> = HashMap::new();
    let mut uids = HashMap::new();
    for p in &report.problems {
        let Some(i) = ingresses.get(&p.ingress) else { continue };
        let Some(uid) = i.metadata.uid.clone() else { continue };
        uids.insert(uid.clone(), i.clone());
        now.entry(uid).or_default().insert((p.reason, p.message.clone()));
    }
    let mut out = vec![];
    for r in &report.served {
        let Some(i) = ingresses.get(r) else { continue };
        let Some(uid) = i.metadata.uid.clone() else { continue };
        if done.synced.insert(uid) {
            out.push((i.clone(), EventType::Normal, "Sync", "Scheduled for sync".to_string()));
        }
    }
    for (uid, set) in &now {
        let before = done.problems.get(uid);
        for (reason, message) in set {
            if before.is_none_or(|b| !b.contains(&(*reason, message.clone()))) {
                out.push((uids[uid].clone(), EventType::Warning, *reason, message.clone()));
            }
        }
    }
    let live: BTreeSet<&str> = ingresses.values().filter_map(|i| i.metadata.uid.as_deref()).collect();
    done.synced.retain(|u| live.contains(u.as_str()));
    done.statused.retain(|u| live.contains(u.as_str()));
    done.problems = now;
    out
}

async fn record_events(
    client: &kube::Client,
    reporter: &Reporter,
    ingresses: &BTreeMap<ObjectRef, Arc<Ingress>>,
    report: &Report,
    done: &mut Done,
) {
    for (i, type_, reason, note) in events_due(ingresses, report, done) {
        let regarding = ObjectReference {
            api_version: Some("networking.k8s.io/v1".into()),
            kind: Some("Ingress".into()),
            name: i.metadata.name.clone(),
            namespace: i.metadata.namespace.clone(),
            uid: i.metadata.uid.clone(),
            resource_version: i.metadata.resource_version.clone(),
            ..Default::default()
        };
        let ev = Event {
            type_,
            reason: reason.into(),
            // events.k8s.io caps a note at 1 kB.
            note: Some(truncate(&note, 1024)),
            action: if type_ == EventType::Normal { "Sync".into() } else { "Compile".into() },
            secondary: None,
        };
        // A fresh recorder per Event: kube's would fold two problems of the same reason into
        // one Event's series (its key leaves out the note), and we send each once anyway.
        let recorder = Recorder::new(client.clone(), reporter.clone());
        match tokio::time::timeout(CALL_LIMIT, recorder.publish(&ev, &regarding)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(ingress = ?regarding.name, reason, error = %e, "recording an Event"),
            Err(_) => tracing::warn!(ingress = ?regarding.name, reason, "recording an Event: timed out"),
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceSpec, ServiceStatus};
    use k8s_openapi::api::networking::v1::{IngressLoadBalancerStatus, IngressStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};

    use super::*;

    fn r(ns: &str, name: &str) -> ObjectRef {
        ObjectRef { namespace: ns.into(), name: name.into() }
    }

    fn ip(a: &str) -> IngressLoadBalancerIngress {
        IngressLoadBalancerIngress { ip: Some(a.into()), ..Default::default() }
    }

    fn ingress(name: &str, status: &[&str], ours: bool) -> Arc<Ingress> {
        Arc::new(Ingress {
            metadata: ObjectMeta {
                namespace: Some("web".into()),
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                managed_fields: ours.then(|| {
                    vec![ManagedFieldsEntry {
                        manager: Some(MANAGER.into()),
                        subresource: Some("status".into()),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            status: Some(IngressStatus {
                load_balancer: Some(IngressLoadBalancerStatus {
                    ingress: Some(status.iter().map(|a| ip(a)).collect()),
                }),
            }),
            ..Default::default()
        })
    }

    fn by_ref(v: Vec<Arc<Ingress>>) -> BTreeMap<ObjectRef, Arc<Ingress>> {
        v.into_iter().map(|i| (object_ref(&i).unwrap(), i)).collect()
    }

    #[test]
    fn status_is_written_when_it_differs_and_cleared_only_where_we_wrote_our_address() {
        let ours = vec![ip("172.18.255.200")];
        let ing = by_ref(vec![
            ingress("served-ok", &["172.18.255.200"], true),
            ingress("served-new", &[], false),
            ingress("served-other", &["10.0.0.1"], false),
            ingress("dropped-ours", &["172.18.255.200"], true),
            ingress("dropped-other-controller", &["10.0.0.9"], true),
            ingress("dropped-never-ours", &["172.18.255.200"], false),
        ]);
        let served = [r("web", "served-ok"), r("web", "served-new"), r("web", "served-other")];
        let got = status_changes(&ing, &served, &ours, &Done::default());
        let want = vec![
            (r("web", "dropped-ours"), vec![]),
            (r("web", "served-new"), ours.clone()),
            (r("web", "served-other"), ours.clone()),
        ];
        assert_eq!(got, want);
        // Written in this process counts as ours too.
        let done = Done { statused: ["uid-dropped-never-ours".to_string()].into(), ..Default::default() };
        let got = status_changes(&ing, &served, &ours, &done);
        assert!(got.contains(&(r("web", "dropped-never-ours"), vec![])), "{got:?}");
    }

    #[test]
    fn events_go_out_once_per_new_problem_and_once_per_first_serve() {
        let ing = by_ref(vec![ingress("a", &[], false), ingress("b", &[], false)]);
        let p =
            |name: &str, reason: &'static str, m: &str| Problem { ingress: r("web", name), reason, message: m.into() };
        let mut done = Done::default();
        let report = Report {
            served: vec![r("web", "a"), r("web", "b")],
            problems: vec![
                p("a", "UnsupportedAnnotation", "configuration-snippet"),
                p("a", "UnsupportedAnnotation", "server-snippet"),
            ],
        };
        let brief = |v: Vec<(Arc<Ingress>, EventType, &'static str, String)>| {
            let mut v: Vec<_> = v.into_iter().map(|(i, t, r, m)| (i.metadata.name.clone().unwrap(), t, r, m)).collect();
            v.sort_by(|a, b| (&a.0, a.2, &a.3).cmp(&(&b.0, b.2, &b.3)));
            v
        };
        let first = brief(events_due(&ing, &report, &mut done));
        let n = |s: &str| s.to_string();
        assert_eq!(
            first,
            vec![
                (n("a"), EventType::Normal, "Sync", n("Scheduled for sync")),
                (n("a"), EventType::Warning, "UnsupportedAnnotation", n("configuration-snippet")),
                (n("a"), EventType::Warning, "UnsupportedAnnotation", n("server-snippet")),
                (n("b"), EventType::Normal, "Sync", n("Scheduled for sync")),
            ]
        );
        // The same report again: nothing.
        assert!(events_due(&ing, &report, &mut done).is_empty());
        // One problem fixed: nothing; a new one: only it.
        let fixed = Report { served: report.served.clone(), problems: vec![report.problems[0].clone()] };
        assert!(events_due(&ing, &fixed, &mut done).is_empty());
        let more = Report {
            served: report.served.clone(),
            problems: vec![report.problems[0].clone(), p("b", "ServiceNotFound", "no Service web/x")],
        };
        assert_eq!(
            brief(events_due(&ing, &more, &mut done)),
            vec![(n("b"), EventType::Warning, "ServiceNotFound", n("no Service web/x"))]
        );
        // A problem that comes back after it went is new again.
        assert_eq!(brief(events_due(&ing, &report, &mut done)).len(), 1);
    }

    #[test]
    fn published_addresses_come_from_the_flags_or_the_service_as_ingress_nginx_takes_them() {
        assert_eq!(Publish::from_flags(None, None).unwrap(), Publish::Nothing);
        assert_eq!(
            Publish::from_flags(Some("kube-system/weft-ingress"), None).unwrap(),
            Publish::Service(r("kube-system", "weft-ingress"))
        );
        let e = Publish::from_flags(Some("weft-ingress"), None).unwrap_err().to_string();
        assert!(e.contains("--publish-service") && e.contains("namespace/name"), "{e}");
        // The status address wins over the Service.
        let a = Publish::from_flags(Some("kube-system/x"), Some("lb.example.com, 192.0.2.1")).unwrap();
        let host = IngressLoadBalancerIngress { hostname: Some("lb.example.com".into()), ..Default::default() };
        assert_eq!(a, Publish::Addresses(vec![host, ip("192.0.2.1")]));
        let e = Publish::from_flags(None, Some("not an address")).unwrap_err().to_string();
        assert!(e.contains("--publish-status-address") && e.contains("not an address"), "{e}");

        let svc = |type_: &str, lb: &[&str], external: &[&str]| Service {
            spec: Some(ServiceSpec {
                type_: Some(type_.into()),
                cluster_ip: Some("10.96.0.50".into()),
                external_ips: Some(external.iter().map(|s| s.to_string()).collect()),
                external_name: Some("backend.example.com".into()),
                ..Default::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(
                        lb.iter()
                            .map(|a| LoadBalancerIngress { ip: Some(a.to_string()), ..Default::default() })
                            .collect(),
                    ),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(service_addresses(&svc("LoadBalancer", &["172.18.255.200"], &[])), vec![ip("172.18.255.200")]);
        assert_eq!(service_addresses(&svc("LoadBalancer", &[], &[])), vec![]);
        assert_eq!(
            service_addresses(&svc("LoadBalancer", &["172.18.255.200"], &["192.0.2.7"])),
            vec![ip("172.18.255.200"), ip("192.0.2.7")]
        );
        assert_eq!(service_addresses(&svc("ClusterIP", &[], &[])), vec![ip("10.96.0.50")]);
        assert_eq!(service_addresses(&svc("NodePort", &[], &[])), vec![ip("10.96.0.50")]);
        assert_eq!(service_addresses(&svc("NodePort", &[], &["192.0.2.7"])), vec![ip("192.0.2.7")]);
        let name = IngressLoadBalancerIngress { hostname: Some("backend.example.com".into()), ..Default::default() };
        assert_eq!(service_addresses(&svc("ExternalName", &[], &[])), vec![name]);
    }

    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        let s = "é".repeat(600);
        let t = truncate(&s, 1024);
        assert!(t.len() <= 1024 && s.starts_with(&t));
        assert_eq!(truncate("short", 1024), "short");
    }
}
