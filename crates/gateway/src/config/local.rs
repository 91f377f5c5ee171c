//! Validation of the `local:` section: the worker pool's name, clearance, TLS material, configured
//! workers, node costs, circuit breaker and the Kubernetes Service to find more workers in, into a
//! [`PoolConfig`].
//!
//! It reads the PEM files it names and nothing else: it never connects to a worker or to Kubernetes.

use std::path::Path;

use sluice_config::{ConfigError, Locator};

use super::fields::{check_name, level, seconds};
use super::raw::{RawKubernetes, RawLocal, RawNodeCost, RawPort};
use crate::backend::local::{ClientTls, PoolConfig, WorkerAddress, worker_uri};
use crate::cost::NodeCost;
use crate::level::Level;

fn read_pem(at: &Locator<'_>, key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| at.error(key, format!("cannot read {}: {e}", path.display())))
}

pub(super) fn local_pool(at: &Locator<'_>, raw: RawLocal) -> Result<PoolConfig, ConfigError> {
    let name = raw.name.unwrap_or_else(|| "local".to_owned());
    check_name(at, "local.name", &name)?;
    let clearance = level(at, "local.clearance", raw.clearance, Level::Restricted)?;
    let tls = match raw.tls {
        None => None,
        Some(t) => {
            let identity = match (t.cert, t.key) {
                (Some(c), Some(k)) => Some((
                    read_pem(at, "local.tls.cert", &c)?,
                    read_pem(at, "local.tls.key", &k)?,
                )),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(at.error("local.tls.key", "a client certificate needs its key"));
                }
                (None, Some(_)) => {
                    return Err(at.error("local.tls.cert", "a client key needs its certificate"));
                }
            };
            let ca_pem = t.ca.map(|p| read_pem(at, "local.tls.ca", &p)).transpose()?;
            Some(ClientTls {
                ca_pem,
                identity,
                domain: t.domain,
            })
        }
    };
    let mut workers: Vec<WorkerAddress> = Vec::new();
    for (i, w) in raw.workers.unwrap_or_default().into_iter().enumerate() {
        let key = |f: &str| format!("local.workers[{i}].{f}");
        let Some(address) = w.address else {
            return Err(at.error(&format!("local.workers[{i}]"), "`address` is required"));
        };
        let uri = worker_uri(&address, tls.is_some()).ok_or_else(|| {
            at.error(
                &key("address"),
                format!("{address:?} is not host:port or an http(s):// URL"),
            )
        })?;
        let name = w.name.unwrap_or_else(|| format!("worker-{i}"));
        check_name(at, &key("name"), &name)?;
        let cost = node_cost(at, &key("cost"), &[raw.cost.as_ref(), w.cost.as_ref()])?;
        if workers.iter().any(|x| x.name == name) {
            return Err(at.error(&key("name"), format!("the worker name {name:?} is used twice")));
        }
        workers.push(WorkerAddress { name, uri, cost });
    }
    let node_cost = node_cost(at, "local.cost", &[raw.cost.as_ref()])?;
    let kubernetes = raw.kubernetes.map(|k| kubernetes(at, k)).transpose()?;
    if kubernetes.is_some() && tls.as_ref().is_some_and(|t| t.domain.is_none()) {
        return Err(at.error(
            "local.tls.domain",
            "is required with local.kubernetes: discovered workers are reached by pod IP, so name the host their certificates are for",
        ));
    }
    let connect_timeout = seconds(
        at,
        "local.connect_timeout_seconds",
        raw.connect_timeout_seconds,
        2.0,
    )?;
    let breaker = raw.breaker.unwrap_or_default();
    let breaker_failures = breaker.failures.unwrap_or(3);
    if breaker_failures == 0 {
        return Err(at.error("local.breaker.failures", "must be at least 1"));
    }
    let breaker_cooldown = seconds(
        at,
        "local.breaker.cooldown_seconds",
        breaker.cooldown_seconds,
        10.0,
    )?;
    Ok(PoolConfig {
        name,
        workers,
        tls,
        clearance,
        connect_timeout,
        breaker_failures,
        breaker_cooldown,
        kubernetes,
        node_cost,
    })
}

/// `local.kubernetes`: which Service's EndpointSlices list the workers.
fn kubernetes(at: &Locator<'_>, raw: RawKubernetes) -> Result<sluice_discovery::Target, ConfigError> {
    // DNS-1123 labels, as Kubernetes names Services and namespaces.
    let dns_label = |key: &str, v: &str| {
        let ok = !v.is_empty()
            && v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !v.starts_with('-')
            && !v.ends_with('-');
        if ok {
            Ok(())
        } else {
            Err(at.error(
                key,
                format!("{v:?} is not a Kubernetes name (lower-case letters, digits and '-', at most 63)"),
            ))
        }
    };
    let Some(service) = raw.service else {
        return Err(at.error(
            "local.kubernetes.service",
            "the headless Service in front of the workers is required",
        ));
    };
    dns_label("local.kubernetes.service", &service)?;
    if let Some(ns) = &raw.namespace {
        dns_label("local.kubernetes.namespace", ns)?;
    }
    let port = match raw.port {
        None => sluice_discovery::Port::Name("grpc".to_owned()),
        Some(RawPort::Number(n)) => match u16::try_from(n) {
            Ok(n) if n > 0 => sluice_discovery::Port::Number(n),
            _ => {
                return Err(at.error(
                    "local.kubernetes.port",
                    format!("{n} is not a port number (1 to 65535)"),
                ));
            }
        },
        Some(RawPort::Name(n)) if n.is_empty() || n.len() > 15 => {
            return Err(at.error(
                "local.kubernetes.port",
                format!("{n:?} is not a port name (1 to 15 characters) or number"),
            ));
        }
        Some(RawPort::Name(n)) => sluice_discovery::Port::Name(n),
    };
    Ok(sluice_discovery::Target {
        service,
        namespace: raw.namespace,
        port,
        kubeconfig: raw.kubeconfig,
    })
}

/// A node's cost: the defaults, then the pool's keys, then the worker's own.
fn node_cost(at: &Locator<'_>, key: &str, layers: &[Option<&RawNodeCost>]) -> Result<NodeCost, ConfigError> {
    let mut c = NodeCost::default();
    for l in layers.iter().flatten() {
        let set = |v: Option<f64>, into: &mut f64| {
            if let Some(v) = v {
                *into = v;
            }
        };
        set(l.capex_usd, &mut c.capex_usd);
        set(l.lifetime_years, &mut c.lifetime_years);
        set(l.power_watts, &mut c.power_watts);
        set(l.pue, &mut c.pue);
        set(l.usd_per_kwh, &mut c.usd_per_kwh);
        set(l.overhead_usd_per_hour, &mut c.overhead_usd_per_hour);
        if let Some(measured) = l.measured_power {
            c.measured_power = measured;
        }
    }
    let check = |field: &str, v: f64, ok: bool, want: &str| {
        if v.is_finite() && ok {
            Ok(())
        } else {
            Err(at.error(&format!("{key}.{field}"), format!("must be {want}, got {v}")))
        }
    };
    check("capex_usd", c.capex_usd, c.capex_usd >= 0.0, "0 or more")?;
    check(
        "lifetime_years",
        c.lifetime_years,
        c.lifetime_years > 0.0,
        "above 0",
    )?;
    check("power_watts", c.power_watts, c.power_watts >= 0.0, "0 or more")?;
    check("pue", c.pue, c.pue >= 1.0, "1 or more")?;
    check("usd_per_kwh", c.usd_per_kwh, c.usd_per_kwh >= 0.0, "0 or more")?;
    check(
        "overhead_usd_per_hour",
        c.overhead_usd_per_hour,
        c.overhead_usd_per_hour >= 0.0,
        "0 or more",
    )?;
    Ok(c)
}
