//! A stand-in for the Kubernetes API server's EndpointSlice endpoints, speaking the real protocol over
//! real HTTP, so that kube-rs (and so the gateway) can be tested without a cluster:
//!
//! - `GET /apis/discovery.k8s.io/v1/namespaces/NS/endpointslices?labelSelector=...` lists the slices
//!   (an `EndpointSliceList` with the current `resourceVersion`);
//! - the same with `watch=true&resourceVersion=RV` streams newline-delimited watch events: first every
//!   change after `RV` from the history, then live ones; an `RV` older than the compaction point gets an
//!   `ERROR` event with a 410 `Expired` Status, as the real server sends;
//! - label selectors of the `key=value[,key=value]` form filter both.
//!
//! The test drives it: [`MockApiServer::apply`] / [`MockApiServer::delete`] change the world (each change
//! gets the next resource version), [`MockApiServer::expire`] compacts the history and sends 410 to open
//! watches, [`MockApiServer::drop_watches`] cuts their connections, [`MockApiServer::fail_lists`] makes
//! the next lists answer 500. [`MockApiServer::requests`] tells what the client asked.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// An endpoint of a slice the test builds with [`slice`].
#[derive(Debug, Clone)]
pub struct MockEndpoint {
    pub ip: String,
    pub pod: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl MockEndpoint {
    /// A ready endpoint of pod `pod` at `ip`.
    pub fn ready(pod: &str, ip: &str) -> Self {
        Self {
            ip: ip.to_owned(),
            pod: pod.to_owned(),
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    /// Running but failing its readiness probe.
    pub fn not_serving(mut self) -> Self {
        self.ready = false;
        self.serving = false;
        self
    }

    /// Shutting down (still serving what it has, as during a drain).
    pub fn terminating(mut self) -> Self {
        self.ready = false;
        self.terminating = true;
        self
    }
}

/// An EndpointSlice of Service `service` in `namespace`, as the EndpointSlice controller writes it: the
/// service-name label, IPv4 addresses, a pod `targetRef` per endpoint and one TCP port named `port_name`.
pub fn slice(
    namespace: &str,
    name: &str,
    service: &str,
    port_name: &str,
    port: u16,
    endpoints: &[MockEndpoint],
) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                super::SERVICE_NAME_LABEL: service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service, "uid": format!("uid-{service}")}],
        },
        "addressType": "IPv4",
        "endpoints": endpoints.iter().map(|e| json!({
            "addresses": [e.ip],
            "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating},
            "targetRef": {"kind": "Pod", "namespace": namespace, "name": e.pod, "uid": format!("uid-{}", e.pod)},
            "nodeName": "node-1",
        })).collect::<Vec<_>>(),
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
    })
}

/// What the client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    List {
        namespace: String,
        selector: String,
    },
    Watch {
        namespace: String,
        resource_version: String,
    },
}

enum Frame {
    Event(Value),
    Close,
}

struct Watch {
    namespace: String,
    selector: Vec<(String, String)>,
    tx: mpsc::UnboundedSender<Frame>,
}

#[derive(Default)]
struct World {
    resource_version: u64,
    objects: BTreeMap<(String, String), Value>,
    /// Every change: resource version, type, object.
    history: Vec<(u64, &'static str, Value)>,
    /// Watches from a resource version below this get 410.
    compacted: u64,
    watches: Vec<Watch>,
    failing_lists: u32,
    requests: Vec<(std::time::Instant, Request)>,
}

impl World {
    fn change(&mut self, kind: &'static str, mut object: Value) {
        self.resource_version += 1;
        let rv = self.resource_version;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = key_of(&object);
        let before = if kind == "DELETED" {
            self.objects.remove(&key)
        } else {
            self.objects.insert(key.clone(), object.clone())
        };
        self.watches.retain(|w| {
            if w.namespace != key.0 {
                return !w.tx.is_closed();
            }
            // An object that stops matching a watch's selector is DELETED for that watch, as the real
            // server does; one that starts matching is ADDED.
            let was = before.as_ref().is_some_and(|b| matches(&w.selector, b));
            let is = matches(&w.selector, &object);
            let kind = match (was, is) {
                (_, true) if kind == "MODIFIED" && !was => "ADDED",
                (_, true) => kind,
                (true, false) => "DELETED",
                (false, false) => return !w.tx.is_closed(),
            };
            w.tx.send(Frame::Event(json!({"type": kind, "object": object})))
                .is_ok()
        });
        self.history.push((rv, kind, object));
    }
}

fn key_of(object: &Value) -> (String, String) {
    let m = &object["metadata"];
    (
        m["namespace"].as_str().unwrap_or_default().to_owned(),
        m["name"].as_str().unwrap_or_default().to_owned(),
    )
}

fn matches(selector: &[(String, String)], object: &Value) -> bool {
    selector
        .iter()
        .all(|(k, v)| object["metadata"]["labels"][k].as_str() == Some(v))
}

/// The running stand-in; stops when dropped.
pub struct MockApiServer {
    world: Arc<Mutex<World>>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for MockApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockApiServer").field("addr", &self.addr).finish()
    }
}

impl Drop for MockApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockApiServer {
    /// Listens on a free port of 127.0.0.1. Must run inside a Tokio runtime.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let world = Arc::new(Mutex::new(World::default()));
        let router = axum::Router::new()
            .route(
                "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
                axum::routing::get(endpoint_slices),
            )
            .fallback(|| async {
                status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "the mock serves EndpointSlices only",
                )
            })
            .with_state(world.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self { world, addr, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig that points at this server with a bearer token, in `namespace`.
    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) -> std::io::Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: mock\nclusters:\n- name: mock\n  cluster:\n    server: {}\ncontexts:\n- name: mock\n  context:\n    cluster: mock\n    user: gateway\n    namespace: {namespace}\nusers:\n- name: gateway\n  user:\n    token: mock-token\n",
            self.url()
        );
        std::fs::write(path, text)
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Creates or replaces an object (ADDED or MODIFIED to watchers).
    pub fn apply(&self, object: Value) {
        let mut w = self.world();
        let kind = if w.objects.contains_key(&key_of(&object)) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        w.change(kind, object);
    }

    /// Deletes an object (DELETED to watchers); false when there was none.
    pub fn delete(&self, namespace: &str, name: &str) -> bool {
        let mut w = self.world();
        match w.objects.get(&(namespace.to_owned(), name.to_owned())).cloned() {
            Some(object) => {
                w.change("DELETED", object);
                true
            }
            None => false,
        }
    }

    /// Compacts the history up to now: open watches get a 410 `Expired` error and end, and so does any
    /// watch from an older resource version, so the client must list again.
    pub fn expire(&self) {
        let mut w = self.world();
        w.compacted = w.resource_version;
        for watch in w.watches.drain(..) {
            let _ = watch.tx.send(Frame::Event(gone()));
            let _ = watch.tx.send(Frame::Close);
        }
    }

    /// Cuts every open watch's connection without a word, as a restarting API server or a proxy does.
    pub fn drop_watches(&self) {
        for watch in self.world().watches.drain(..) {
            let _ = watch.tx.send(Frame::Close);
        }
    }

    /// The next `n` lists answer 500.
    pub fn fail_lists(&self, n: u32) {
        self.world().failing_lists = n;
    }

    /// Watches open now.
    pub fn open_watches(&self) -> usize {
        let mut w = self.world();
        w.watches.retain(|x| !x.tx.is_closed());
        w.watches.len()
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.world().requests.iter().map(|(_, r)| r.clone()).collect()
    }

    /// Every request so far with the time it arrived.
    pub fn requests_timed(&self) -> Vec<(std::time::Instant, Request)> {
        self.world().requests.clone()
    }
}

fn gone() -> Value {
    json!({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version", "reason": "Expired", "code": 410,
    }})
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code.as_u16()})
        .to_string(),
    )
        .into_response()
}

async fn endpoint_slices(
    State(world): State<Arc<Mutex<World>>>,
    UrlPath(namespace): UrlPath<String>,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let param = |name: &str| params.get(name).map(String::as_str);
    let selector_text = param("labelSelector").unwrap_or_default().to_owned();
    let selector: Vec<(String, String)> = selector_text
        .split(',')
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let mut w = world.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if param("watch").is_some_and(|v| v == "true" || v == "1") {
        let from = param("resourceVersion").unwrap_or("0").to_owned();
        w.requests.push((
            std::time::Instant::now(),
            Request::Watch {
                namespace: namespace.clone(),
                resource_version: from.clone(),
            },
        ));
        let (tx, rx) = mpsc::unbounded_channel();
        let from_rv: u64 = from.parse().unwrap_or(0);
        if from_rv < w.compacted {
            let _ = tx.send(Frame::Event(gone()));
            let _ = tx.send(Frame::Close);
        } else {
            for (rv, kind, object) in &w.history {
                if *rv > from_rv && key_of(object).0 == namespace && matches(&selector, object) {
                    let _ = tx.send(Frame::Event(json!({"type": kind, "object": object})));
                }
            }
            w.watches.push(Watch {
                namespace,
                selector,
                tx,
            });
        }
        drop(w);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Some(Frame::Event(e)) => Some((Ok::<_, std::io::Error>(format!("{e}\n")), rx)),
                Some(Frame::Close) | None => None,
            }
        });
        return (
            [(header::CONTENT_TYPE, "application/json")],
            Body::from_stream(frames.boxed()),
        )
            .into_response();
    }
    w.requests.push((
        std::time::Instant::now(),
        Request::List {
            namespace: namespace.clone(),
            selector: selector_text,
        },
    ));
    if w.failing_lists > 0 {
        w.failing_lists -= 1;
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "etcdserver: request timed out",
        );
    }
    let items: Vec<&Value> = w
        .objects
        .iter()
        .filter(|((ns, _), o)| *ns == namespace && matches(&selector, o))
        .map(|(_, o)| o)
        .collect();
    let body = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSliceList",
        "metadata": {"resourceVersion": w.resource_version.to_string()},
        "items": items,
    });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
