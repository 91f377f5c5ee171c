//! Finds the gateway's workers through the EndpointSlices of a Kubernetes Service.
//!
//! A headless Service in front of the worker pods gets EndpointSlices from Kubernetes, one endpoint per
//! pod with its address and three conditions: `serving`, `terminating` and `ready` (serving and not
//! terminating). [`Discovery::run`] follows them with kube-runtime's watcher and a reflector store, and
//! hands the whole set to a [`Members`] sink every time it changes:
//!
//! - a new ready endpoint joins the pool; one that is not serving or is terminating stays a member
//!   (its requests in flight finish) but takes no new requests; a deleted one leaves;
//! - watch errors retry with exponential backoff (0.8 s doubling to 30 s, plus up to a quarter of
//!   jitter), reset once the watch delivers again; an expired resource version (410 Gone) re-lists,
//!   reading the latest state (a quorum read, not the API server's cache);
//! - while a re-list is under way the last complete set stands: the reflector swaps the new list in
//!   only once it is whole, so a transient API error never empties the pool.
//!
//! This crate is the only part of Sluice that knows Kubernetes; the gateway sees [`Endpoint`]s.

use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector};

/// The first retry's delay after a watch error, doubled after each error in a row up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(800);
/// The longest delay between retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
use kube::{Api, Client, Config};

#[cfg(feature = "mock-api-server")]
pub mod mock;

/// The label Kubernetes puts on every EndpointSlice of a Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Which Service's endpoints to follow, and how to reach the API server.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The headless Service in front of the workers.
    pub service: String,
    /// Its namespace; `None`: the namespace of the credentials (in a pod, the pod's own).
    pub namespace: Option<String>,
    /// The workers' gRPC port.
    pub port: Port,
    /// A kubeconfig file (for development outside a cluster); `None`: in-cluster credentials, else
    /// `$KUBECONFIG` or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
}

/// The workers' port: a name the EndpointSlices list (as the Service names it), or a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Port {
    Name(String),
    Number(u16),
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(n) => write!(f, "{n:?}"),
            Self::Number(n) => write!(f, "{n}"),
        }
    }
}

/// What Kubernetes says about an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndpointState {
    /// Serving and not terminating: may take new requests.
    Ready,
    /// Its readiness probe fails (loading, overloaded, draining): no new requests.
    NotServing,
    /// Its pod is shutting down: no new requests; those in flight finish.
    Terminating,
}

impl EndpointState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::NotServing => "not serving",
            Self::Terminating => "terminating",
        }
    }
}

/// One worker as the EndpointSlices list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The pod's name (from `targetRef`), else its hostname, else its address; unique in a set.
    pub name: String,
    /// An IP address (or a host name, for FQDN slices).
    pub host: String,
    pub port: u16,
    pub state: EndpointState,
}

impl Endpoint {
    /// `host:port`, with brackets around an IPv6 address.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Where the endpoints go: the gateway's worker pool.
pub trait Members: Send + Sync + 'static {
    /// The complete current set, sorted by name; called when it changes.
    fn set(&self, endpoints: Vec<Endpoint>);
    /// The watch failed and will be retried; the last set stands.
    fn watch_failed(&self, error: &str);
}

/// A problem reaching the Kubernetes API at start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no Kubernetes credentials: not running in a pod ({in_cluster}) and no usable kubeconfig ({kubeconfig}); set local.kubernetes.kubeconfig for development outside a cluster"
    )]
    NoCredentials { in_cluster: String, kubeconfig: String },
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// A connection to the API server and what to follow there.
pub struct Discovery {
    client: Client,
    namespace: String,
    service: String,
    port: Port,
    cluster_url: String,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("namespace", &self.namespace)
            .field("service", &self.service)
            .field("port", &self.port)
            .field("cluster_url", &self.cluster_url)
            .finish()
    }
}

impl Discovery {
    /// Loads the credentials and builds the client; contacts nothing yet.
    pub async fn connect(target: &Target) -> Result<Self, Error> {
        let config = match &target.kubeconfig {
            Some(path) => {
                let read = |source| Error::Kubeconfig {
                    path: path.clone(),
                    source,
                };
                let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(read)?;
                Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                    .await
                    .map_err(read)?
            }
            None => match Config::incluster() {
                Ok(c) => c,
                Err(in_cluster) => Config::from_kubeconfig(&kube::config::KubeConfigOptions::default())
                    .await
                    .map_err(|kubeconfig| Error::NoCredentials {
                        in_cluster: in_cluster.to_string(),
                        kubeconfig: kubeconfig.to_string(),
                    })?,
            },
        };
        let namespace = target
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let cluster_url = config.cluster_url.to_string();
        let client = Client::try_from(config).map_err(Error::Client)?;
        Ok(Self {
            client,
            namespace,
            service: target.service.clone(),
            port: target.port.clone(),
            cluster_url,
        })
    }

    /// What is followed, in words: for logs and errors.
    pub fn describe(&self) -> String {
        format!(
            "EndpointSlices of Service {}/{} (port {}) at {}",
            self.namespace, self.service, self.port, self.cluster_url
        )
    }

    /// Follows the Service's EndpointSlices for as long as it is polled, handing every change of the
    /// endpoint set to `members`. Errors are reported to `members` and retried with backoff; it never
    /// returns.
    pub async fn run(self, members: Arc<dyn Members>) {
        let api: Api<EndpointSlice> = Api::namespaced(self.client, &self.namespace);
        let config = watcher::Config::default()
            .labels(&format!("{SERVICE_NAME_LABEL}={}", self.service))
            // After a 410 the list must not go back in time: read the latest state, not a cache. There are
            // only a few slices per Service, so the quorum read is cheap.
            .list_semantic(watcher::ListSemantic::MostRecent);
        let (store, writer) = reflector::store();
        // The backoff is ours, not the stream's: kube's `default_backoff` resets on every `Ok` item, and
        // the watcher yields `Init` before each list attempt without touching the network, so a failing
        // list would be retried every 0.8 s for ever.
        let mut events = pin!(watcher::watcher(api, config).reflect(writer));
        let mut backoff = Backoff::default();
        let mut last: Option<Vec<Endpoint>> = None;
        let mut failing = false;
        while let Some(event) = events.next().await {
            match event {
                // A (re-)list under way: the store still holds the last complete set.
                Ok(Event::Init | Event::InitApply(_)) => {}
                Ok(Event::InitDone | Event::Apply(_) | Event::Delete(_)) => {
                    backoff.reset();
                    if failing {
                        tracing::info!(service = %self.service, "EndpointSlice watch recovered");
                        failing = false;
                    }
                    let slices = store.state();
                    let now = endpoints_of(slices.iter().map(Arc::as_ref), &self.port);
                    if last.as_ref() != Some(&now) {
                        tracing::info!(
                            service = %self.service,
                            endpoints = ?now.iter().map(|e| format!("{} {} {}", e.name, e.authority(), e.state.as_str())).collect::<Vec<_>>(),
                            "worker endpoints changed"
                        );
                        members.set(now.clone());
                        last = Some(now);
                    }
                }
                Err(e) => {
                    let error = e.to_string();
                    let delay = backoff.next_delay();
                    tracing::warn!(service = %self.service, %error, retry_in = ?delay, "EndpointSlice watch failed");
                    failing = true;
                    members.watch_failed(&error);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// Exponential backoff with a little jitter, so that gateway replicas do not retry in step.
#[derive(Debug, Default)]
struct Backoff {
    errors: u32,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let base = MIN_BACKOFF
            .saturating_mul(1 << self.errors.min(16))
            .min(MAX_BACKOFF);
        self.errors = self.errors.saturating_add(1);
        // Up to a quarter more, from the clock's nanoseconds: enough to spread replicas out, and the
        // delays still grow strictly while under the cap.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
    }

    fn reset(&mut self) {
        self.errors = 0;
    }
}

/// The endpoints the slices list on `port`, sorted by name: one per pod (a dual-stack pod listed in an
/// IPv4 and an IPv6 slice is one worker, reached over IPv4), one per address for endpoints without a
/// pod. An address listed twice (as while a slice is being replaced) keeps its readiest state; a slice
/// without the port contributes nothing.
pub fn endpoints_of<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>, port: &Port) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = Vec::new();
    for slice in slices {
        let number = match port {
            Port::Number(n) => Some(*n),
            Port::Name(name) => slice.ports.iter().flatten().find_map(|p| {
                (p.name.as_deref().unwrap_or("") == name)
                    .then_some(p.port)
                    .flatten()
                    .and_then(|n| u16::try_from(n).ok())
            }),
        };
        let Some(number) = number else {
            continue;
        };
        for e in &slice.endpoints {
            let c = e.conditions.as_ref();
            let ready = c.and_then(|c| c.ready);
            let serving = c.and_then(|c| c.serving).or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            // An unknown condition counts as true (the API's own rule for `ready` and `serving`).
            let state = if terminating {
                EndpointState::Terminating
            } else if ready == Some(false) || serving == Some(false) {
                EndpointState::NotServing
            } else {
                EndpointState::Ready
            };
            let pod = e.target_ref.as_ref().and_then(|r| r.name.clone());
            for host in &e.addresses {
                let name = pod
                    .clone()
                    .or_else(|| e.hostname.clone())
                    .unwrap_or_else(|| host.clone());
                match out.iter_mut().find(|x| x.host == *host && x.port == number) {
                    Some(x) => x.state = x.state.min(state),
                    None => out.push(Endpoint {
                        name,
                        host: host.clone(),
                        port: number,
                        state,
                    }),
                }
            }
        }
    }
    // One worker per name: the readiest address, IPv4 before IPv6, then the lowest.
    out.sort_by(|a, b| {
        (&a.name, a.state, a.host.contains(':'), &a.host).cmp(&(
            &b.name,
            b.state,
            b.host.contains(':'),
            &b.host,
        ))
    });
    out.dedup_by(|later, first| later.name == first.name);
    out
}

#[cfg(test)]
mod tests;
