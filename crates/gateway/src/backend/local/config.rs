//! The pool's settings and how a worker is reached: [`PoolConfig`], [`WorkerAddress`], [`ClientTls`],
//! the URI a worker's address becomes ([`worker_uri`]) and the tonic [`Endpoint`] (timeouts, keep-alive,
//! TLS) built from them.
//!
//! It only describes how to reach a worker: it never opens a connection, never starts a task, never
//! follows a worker's state and never decides which worker gets a request.

use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::level::Level;

/// PEM material for TLS to the workers.
#[derive(Clone)]
pub struct ClientTls {
    /// CA bundle that signs the workers' certificates.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and key, for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Name to expect in the workers' certificates, when it is not the host in their address.
    pub domain: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca_pem.is_some())
            .field("mutual", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

/// One worker's address and name.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerAddress {
    pub name: String,
    /// `http://host:port` or `https://host:port`.
    pub uri: String,
    /// What the node costs by the hour.
    pub cost: crate::cost::NodeCost,
}

/// The pool's settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub name: String,
    pub workers: Vec<WorkerAddress>,
    pub tls: Option<ClientTls>,
    pub clearance: Level,
    pub connect_timeout: Duration,
    /// Failures in a row that eject a worker.
    pub breaker_failures: u32,
    /// How long an ejected worker rests.
    pub breaker_cooldown: Duration,
    /// Where to find more workers: the EndpointSlices of a Kubernetes Service.
    pub kubernetes: Option<sluice_discovery::Target>,
    /// What the node of a worker found there costs by the hour.
    pub node_cost: crate::cost::NodeCost,
}

impl PoolConfig {
    /// The pool has workers, or a place to find them.
    pub fn has_members(&self) -> bool {
        !self.workers.is_empty() || self.kubernetes.is_some()
    }

    /// What worker `name`'s node costs: its own figure when it is configured, else the pool's.
    pub fn node_cost_of(&self, name: &str) -> crate::cost::NodeCost {
        self.workers
            .iter()
            .find(|w| w.name == name)
            .map_or(self.node_cost, |w| w.cost)
    }
}

pub(super) fn endpoint(w: &WorkerAddress, config: &PoolConfig) -> Result<Endpoint, tonic::transport::Error> {
    let mut endpoint = Endpoint::from_shared(w.uri.clone())?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    if let Some(tls) = &config.tls {
        let mut t = ClientTlsConfig::new();
        if let Some(ca) = &tls.ca_pem {
            t = t.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &tls.domain {
            t = t.domain_name(domain.clone());
        }
        endpoint = endpoint.tls_config(t)?;
    }
    Ok(endpoint)
}

/// `host:port` or a URL, as the URI tonic connects to (`https` when TLS is configured).
pub fn worker_uri(address: &str, tls: bool) -> Option<String> {
    let address = address.trim();
    let uri = if address.starts_with("http://") || address.starts_with("https://") {
        address.to_owned()
    } else {
        format!("{}://{address}", if tls { "https" } else { "http" })
    };
    let rest = uri.split_once("://")?.1;
    let (host, port) = rest.trim_end_matches('/').rsplit_once(':')?;
    (!host.is_empty() && port.parse::<u16>().is_ok()).then_some(uri)
}
