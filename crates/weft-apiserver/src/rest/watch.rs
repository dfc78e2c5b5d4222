//! Watches: initial events, resuming from a revision, bookmarks, 410 Gone, as JSON lines; with
//! `Accept: ...;as=Table` (`kubectl get -w`), each event's object is a Table of one row, as
//! kube-apiserver sends it: column definitions in the first event only, the row's object as
//! `includeObject` asks (`Metadata` by default, `Object`, `None`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use weft_api::kinds::Kind;
use weft_api::table;
use weft_store::StoreError;

use super::{Api, Query, Target, kind_selectors, outgoing, rv_of, wants_table};
use crate::status::ApiError;

/// What a Table row carries of its object (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IncludeObject {
    None,
    Metadata,
    Object,
}

/// How a watch's objects are sent: as stored (in the version asked for), or as Tables.
struct Render {
    kind: &'static Kind,
    table: Option<IncludeObject>,
    /// The first Table carried the column definitions; later ones leave them out.
    headers_sent: bool,
}

impl Render {
    fn new(kind: &'static Kind, accept: &str, q: &Query) -> Result<Render, ApiError> {
        let table = match wants_table(accept) {
            false => None,
            true => Some(match q.get("includeObject").map(|s| s.as_str()) {
                None | Some("") | Some("Metadata") => IncludeObject::Metadata,
                Some("Object") => IncludeObject::Object,
                Some("None") => IncludeObject::None,
                Some(other) => {
                    return Err(ApiError::bad_request(format!("unrecognized includeObject value: {other:?}")));
                }
            }),
        };
        Ok(Render { kind, table, headers_sent: false })
    }

    fn object(&mut self, o: &Value) -> Value {
        let Some(include) = self.table else { return outgoing(self.kind, o) };
        let mut t = table::table(
            self.kind,
            std::slice::from_ref(&Arc::new(o.clone())),
            rv_of(o).unwrap_or(0),
            jiff::Timestamp::now(),
        );
        for row in t["rows"].as_array_mut().into_iter().flatten() {
            row["object"] = match include {
                IncludeObject::Object => outgoing(self.kind, o),
                IncludeObject::None => Value::Null,
                IncludeObject::Metadata => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                                  "metadata": o.get("metadata").cloned().unwrap_or(json!({}))}),
            };
        }
        if self.headers_sent {
            t["columnDefinitions"] = Value::Null;
        }
        self.headers_sent = true;
        t
    }
}

impl Api {
    /// Starts a watch; the events arrive as JSON lines on the returned channel, their objects
    /// as Tables when `accept` asks for them.
    pub fn watch(self: &Arc<Self>, t: &Target, q: &Query, accept: &str) -> Result<mpsc::Receiver<Bytes>, ApiError> {
        let (ls, fs) = kind_selectors(t.kind, q)?;
        let mut render = Render::new(t.kind, accept, q)?;
        let rv = q.get("resourceVersion").map(|s| s.as_str()).unwrap_or("");
        let send_initial = q.get("sendInitialEvents").is_some_and(|v| v == "true");
        let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true" || v == "1");
        let timeout =
            q.get("timeoutSeconds").and_then(|s| s.parse::<u64>().ok()).unwrap_or(1800 + rand::random_range(0..1800));
        let kind = t.kind;
        let resource = kind.resource_key();
        let ns = t.namespace.clone().filter(|_| kind.namespaced);
        let (tx, rx) = mpsc::channel::<Bytes>(1024);
        let line = |ty: &str, obj: &Value| {
            let mut b = serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap_or_default();
            b.push(b'\n');
            Bytes::from(b)
        };
        let mut initial = vec![];
        let from = if rv.is_empty() || rv == "0" || send_initial {
            let (items, rev) = self.store.list(&resource, ns.as_deref());
            for o in items.iter().filter(|o| ls.matches(o) && fs.matches(o)) {
                initial.push(line("ADDED", &render.object(o)));
            }
            if send_initial {
                let bm = json!({"kind": kind.kind, "apiVersion": kind.api_version(),
                    "metadata": {"resourceVersion": rev.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
                initial.push(line("BOOKMARK", &bm));
            }
            rev
        } else {
            rv.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?
        };
        let watch = match self.store.watch(from) {
            Ok(w) => w,
            Err(StoreError::Gone { requested, oldest }) => {
                let st = ApiError::from_store(StoreError::Gone { requested, oldest }, kind.plural, "").to_status();
                let _ = tx.try_send(line("ERROR", &st));
                return Ok(rx);
            }
            // A revision in the future: kube-apiserver's 504 (events until then would be skipped).
            Err(e) => return Err(ApiError::from_store(e, kind.plural, "")),
        };
        tokio::spawn(async move {
            for l in initial {
                if tx.send(l).await.is_err() {
                    return;
                }
            }
            let matches = |e: &weft_store::Event| {
                e.key.resource == resource
                    && ns.as_deref().is_none_or(|n| n == e.key.namespace)
                    && ls.matches(&e.object)
                    && fs.matches(&e.object)
            };
            let mut last = from;
            for e in watch.backlog {
                last = e.rev;
                if matches(&e) && tx.send(line(e.kind.as_str(), &render.object(&e.object))).await.is_err() {
                    return;
                }
            }
            last = last.max(watch.rev);
            let mut live = watch.live;
            let deadline = tokio::time::sleep(Duration::from_secs(timeout));
            tokio::pin!(deadline);
            let mut tick = tokio::time::interval(Duration::from_secs(if bookmarks { 10 } else { 3600 }));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = &mut deadline => return,
                    _ = tick.tick(), if bookmarks => {
                        let bm = json!({"kind": kind.kind, "apiVersion": kind.api_version(),
                                        "metadata": {"resourceVersion": last.to_string()}});
                        if tx.send(line("BOOKMARK", &bm)).await.is_err() { return; }
                    }
                    ev = live.recv() => match ev {
                        Ok(e) => {
                            if e.rev <= last { continue; }
                            last = e.rev;
                            if matches(&e) && tx.send(line(e.kind.as_str(), &render.object(&e.object))).await.is_err() {
                                return;
                            }
                        }
                        // A watcher that fell behind is closed; it resumes from its last revision.
                        Err(_) => return,
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(rx)
    }
}
