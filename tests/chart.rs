//! The Helm chart (`charts/sluice`) and the container files (`deploy/docker`).
//!
//! Helm's own engine (PyPI `helm-python-sdk`, driven by `tests/chart/render.py`) lints and renders the chart with
//! several sets of values; every manifest is checked against Kubernetes 1.30's schemas in strict mode (PyPI
//! `kubernetes-validate`; the ServiceMonitors, a CRD, are checked here by hand); then each object is held to what
//! it must say: RBAC that can only read EndpointSlices, workers with no egress at all, a gateway whose egress
//! holds the clouds' addresses only when it is not air-gapped, probes, grace periods, GPUs. The rendered
//! configurations are checked by the `sluice` binary itself (`sluice policy check`, `sluice worker --check`).
//! The Dockerfiles cannot be built here (no Docker daemon, no GPU): what they name is checked against the
//! workspace instead.
//!
//! Needs `python3`; the two packages are installed with pip when missing (CI installs them first).

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used, reason = "tests")]

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

const RELEASE: &str = "demo";
const NAMESPACE: &str = "llm";
/// Object names with release `demo`: RELEASE-sluice-*.
const GATEWAY: &str = "demo-sluice-gateway";
const WORKER: &str = "demo-sluice-worker";
const WORKERS_SERVICE: &str = "demo-sluice-workers";
const WORKER_HEALTH_SERVICE: &str = "sluice.worker.v1.Worker";
/// The clouds' CIDRs in the chart's default values.
const DEFAULT_CLOUD_CIDRS: &[&str] = &["162.158.0.0/15", "172.64.0.0/13"];
const API_SERVER_CIDRS: &[&str] = &["10.0.0.10/32", "10.0.0.11/32"];

fn repo() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .canonicalize()
        .expect("repository root")
}

fn chart_dir() -> PathBuf {
    repo().join("charts/sluice")
}

/// One rendered object.
#[derive(Debug, Clone)]
struct Manifest {
    kind: String,
    name: String,
    doc: Value,
    /// "valid", "custom resource", or the schema error.
    schema: String,
    /// A ConfigMap's `*.yaml` entries, parsed.
    files: Value,
}

/// What Helm said about one set of values.
#[derive(Debug)]
struct Rendered {
    lint: Value,
    error: Option<String>,
    notes: String,
    manifests: Vec<Manifest>,
}

/// Lints and renders the chart with `values` as release `demo` in namespace `llm`.
fn render(values: Value) -> Rendered {
    run_render(&json!({"values": values, "name": RELEASE, "namespace": NAMESPACE}))
}

fn run_render(case: &Value) -> Rendered {
    common::ensure_python_packages(common::CHART_PYTHON_PACKAGES);
    let script = repo().join("tests/chart/render.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(chart_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(case.to_string().as_bytes())
        .expect("write the case");
    let out = child.wait_with_output().expect("wait for render.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "render.py failed for {case}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("render.py printed no JSON ({e}): {stdout}"));
    let manifests = report["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| Manifest {
            kind: m["kind"].as_str().expect("kind").to_owned(),
            name: m["name"].as_str().expect("name").to_owned(),
            doc: m["doc"].clone(),
            schema: m["schema"].as_str().expect("schema").to_owned(),
            files: m["files"].clone(),
        })
        .collect();
    Rendered {
        lint: report["lint"].clone(),
        error: report["error"].as_str().map(str::to_owned),
        notes: report["notes"].as_str().unwrap_or_default().to_owned(),
        manifests,
    }
}

impl Rendered {
    /// Asserts the render succeeded, lint found no error, and every manifest passed Kubernetes' schemas (the
    /// custom resources excepted, which must be ServiceMonitors).
    fn valid(self) -> Self {
        assert_eq!(self.error, None, "the chart did not render");
        assert_eq!(self.lint["errors"], json!([]), "helm lint: {}", self.lint);
        for m in &self.manifests {
            match m.schema.as_str() {
                "valid" => {}
                "custom resource" => assert_eq!(m.kind, "ServiceMonitor", "{m:?}"),
                other => panic!(
                    "{} {} does not validate against Kubernetes 1.30: {other}",
                    m.kind, m.name
                ),
            }
        }
        self
    }

    fn find(&self, kind: &str, name: &str) -> Option<&Manifest> {
        self.manifests.iter().find(|m| m.kind == kind && m.name == name)
    }

    fn get(&self, kind: &str, name: &str) -> &Manifest {
        self.find(kind, name).unwrap_or_else(|| {
            panic!(
                "no {kind} {name}; rendered: {:?}",
                self.manifests
                    .iter()
                    .map(|m| format!("{} {}", m.kind, m.name))
                    .collect::<Vec<_>>()
            )
        })
    }

    fn kinds(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .manifests
            .iter()
            .map(|m| (m.kind.clone(), m.name.clone()))
            .collect();
        v.sort();
        v
    }

    /// The gateway's configuration as the ConfigMap holds it: parsed, and as text.
    fn gateway_config(&self) -> (&Value, String) {
        let cm = self.get("ConfigMap", GATEWAY);
        let text = cm.doc["data"]["gateway.yaml"]
            .as_str()
            .expect("gateway.yaml in the ConfigMap")
            .to_owned();
        (&cm.files["gateway.yaml"], text)
    }

    fn worker_config(&self) -> (&Value, String) {
        let cm = self.get("ConfigMap", WORKER);
        let text = cm.doc["data"]["worker.yaml"]
            .as_str()
            .expect("worker.yaml in the ConfigMap")
            .to_owned();
        (&cm.files["worker.yaml"], text)
    }

    fn pod_spec(&self, deployment: &str) -> &Value {
        &self.get("Deployment", deployment).doc["spec"]["template"]["spec"]
    }

    fn container(&self, deployment: &str) -> &Value {
        let containers = self.pod_spec(deployment)["containers"]
            .as_array()
            .expect("containers");
        assert_eq!(containers.len(), 1, "one container in {deployment}");
        &containers[0]
    }

    fn network_policy(&self, name: &str) -> &Value {
        &self.get("NetworkPolicy", name).doc["spec"]
    }
}

/// The `sluice` binary's verdict on a configuration file.
fn sluice(args: &[&str]) -> (bool, String) {
    let out = Command::new(common::sluice_bin())
        .args(args)
        .output()
        .expect("run sluice");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `sluice policy check` on the rendered gateway.yaml must pass (exit 0; the variables the file names for keys
/// need not be set).
fn assert_policy_check_passes(rendered: &Rendered) {
    let (_, text) = rendered.gateway_config();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("gateway.yaml");
    std::fs::write(&file, &text).expect("write gateway.yaml");
    let (ok, output) = sluice(&["policy", "check", file.to_str().expect("utf8")]);
    assert!(
        ok,
        "sluice policy check refused the chart's gateway.yaml:\n{output}\n--- gateway.yaml:\n{text}"
    );
}

/// `sluice worker --check` on the rendered worker.yaml, its model path pointed at a file that exists here.
fn assert_worker_check_passes(rendered: &Rendered) {
    let (config, text) = rendered.worker_config();
    let model = config["model"].as_str().expect("model path");
    let dir = tempfile::tempdir().expect("temp dir");
    let local_model = dir.path().join("model.gguf");
    std::fs::write(&local_model, b"").expect("write model");
    let text = text.replace(
        &format!("model: {model}"),
        &format!("model: {}", local_model.display()),
    );
    assert!(text.contains(&local_model.display().to_string()));
    let file = dir.path().join("worker.yaml");
    std::fs::write(&file, &text).expect("write worker.yaml");
    let (ok, output) = sluice(&["worker", "--config", file.to_str().expect("utf8"), "--check"]);
    assert!(
        ok,
        "sluice worker --check refused the chart's worker.yaml:\n{output}\n--- worker.yaml:\n{text}"
    );
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("not a string: {s}"))
                .to_owned()
        })
        .collect()
}

/// `labels` holds every `selector` label with the same value.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().expect("selector labels");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Gateway and worker pods are told apart by their selectors.
fn assert_selectors(r: &Rendered) {
    let gw = &r.get("Deployment", GATEWAY).doc["spec"];
    let wk = &r.get("Deployment", WORKER).doc["spec"];
    let gw_selector = &gw["selector"]["matchLabels"];
    let wk_selector = &wk["selector"]["matchLabels"];
    assert_eq!(gw_selector["app.kubernetes.io/component"], "gateway");
    assert_eq!(wk_selector["app.kubernetes.io/component"], "worker");
    assert_eq!(gw_selector["app.kubernetes.io/instance"], RELEASE);
    assert!(selects(gw_selector, &gw["template"]["metadata"]["labels"]));
    assert!(selects(wk_selector, &wk["template"]["metadata"]["labels"]));
    assert!(!selects(gw_selector, &wk["template"]["metadata"]["labels"]));
    assert!(!selects(wk_selector, &gw["template"]["metadata"]["labels"]));
}

fn gateway_pod_labels(r: &Rendered) -> &Value {
    &r.get("Deployment", GATEWAY).doc["spec"]["template"]["metadata"]["labels"]
}

fn worker_pod_labels(r: &Rendered) -> &Value {
    &r.get("Deployment", WORKER).doc["spec"]["template"]["metadata"]["labels"]
}

/// What one egress rule of the gateway's NetworkPolicy allows.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Egress {
    /// Pods selected by these labels (in the policy's namespace), on these ports.
    Pods(String, Vec<(String, i64)>),
    /// Pods of a namespace, on these ports.
    NamespacePods(String, String, Vec<(String, i64)>),
    /// CIDRs, on these ports.
    Cidrs(Vec<String>, Vec<(String, i64)>),
}

fn ports(rule: &Value) -> Vec<(String, i64)> {
    let mut v: Vec<_> = rule["ports"]
        .as_array()
        .unwrap_or_else(|| panic!("a rule without ports allows every port: {rule}"))
        .iter()
        .map(|p| {
            (
                p["protocol"].as_str().expect("protocol").to_owned(),
                p["port"].as_i64().expect("numeric port"),
            )
        })
        .collect();
    v.sort();
    v
}

fn egress_rules(policy: &Value) -> Vec<Egress> {
    let mut out: Vec<Egress> = policy["egress"]
        .as_array()
        .expect("egress rules")
        .iter()
        .map(|rule| {
            let to = rule["to"]
                .as_array()
                .unwrap_or_else(|| panic!("an egress rule without `to` allows every address: {rule}"));
            let ports = ports(rule);
            if to.iter().all(|p| p.get("ipBlock").is_some()) {
                let mut cidrs: Vec<String> = to
                    .iter()
                    .map(|p| {
                        assert!(p["ipBlock"].get("except").is_none());
                        assert_eq!(p.as_object().expect("peer").len(), 1, "{p}");
                        p["ipBlock"]["cidr"].as_str().expect("cidr").to_owned()
                    })
                    .collect();
                cidrs.sort();
                return Egress::Cidrs(cidrs, ports);
            }
            assert_eq!(to.len(), 1, "one peer per pod rule: {rule}");
            let peer = &to[0];
            match (peer.get("namespaceSelector"), peer.get("podSelector")) {
                (None, Some(pods)) => Egress::Pods(pods["matchLabels"].to_string(), ports),
                (Some(ns), Some(pods)) => Egress::NamespacePods(
                    ns["matchLabels"].to_string(),
                    pods["matchLabels"].to_string(),
                    ports,
                ),
                _ => panic!("unexpected egress peer: {peer}"),
            }
        })
        .collect();
    out.sort();
    out
}

fn tcp(port: i64) -> (String, i64) {
    ("TCP".to_owned(), port)
}

fn udp(port: i64) -> (String, i64) {
    ("UDP".to_owned(), port)
}

/// The egress rules the gateway has in every case: the workers' gRPC port and kube-system's DNS.
fn base_gateway_egress(r: &Rendered) -> Vec<Egress> {
    let worker_selector = &r.get("Deployment", WORKER).doc["spec"]["selector"]["matchLabels"];
    vec![
        Egress::Pods(worker_selector.to_string(), vec![tcp(50051)]),
        Egress::NamespacePods(
            json!({"kubernetes.io/metadata.name": "kube-system"}).to_string(),
            json!({"k8s-app": "kube-dns"}).to_string(),
            vec![tcp(53), udp(53)],
        ),
    ]
}

/// Workers: ingress only from gateway pods on the gRPC port (plus `metrics_from` on the metrics port), no egress.
fn assert_worker_network_policy(r: &Rendered, metrics_from: Option<Value>) {
    let np = r.network_policy(WORKER);
    let worker_selector = &r.get("Deployment", WORKER).doc["spec"]["selector"]["matchLabels"];
    let gateway_selector = &r.get("Deployment", GATEWAY).doc["spec"]["selector"]["matchLabels"];
    assert_eq!(&np["podSelector"]["matchLabels"], worker_selector);
    assert_eq!(np["policyTypes"], json!(["Ingress", "Egress"]));
    // Egress in policyTypes with no rule: nothing may leave a worker.
    assert!(
        np.get("egress")
            .is_none_or(|e| e.is_null() || e.as_array().is_some_and(Vec::is_empty)),
        "workers must have no egress rule: {}",
        np["egress"]
    );
    let mut want = vec![json!({
        "from": [{"podSelector": {"matchLabels": gateway_selector}}],
        "ports": [{"port": 50051, "protocol": "TCP"}],
    })];
    if let Some(peers) = metrics_from {
        want.push(json!({"from": peers, "ports": [{"port": 9464, "protocol": "TCP"}]}));
    }
    assert_eq!(np["ingress"], json!(want));
    // The peers of the gRPC rule select the gateway pods, and only them.
    assert!(selects(gateway_selector, gateway_pod_labels(r)));
    assert!(!selects(gateway_selector, worker_pod_labels(r)));
}

/// Role and RoleBinding: the gateway's account may get, list and watch EndpointSlices, and nothing else.
fn assert_rbac(r: &Rendered) {
    let role = r.get("Role", GATEWAY);
    assert_eq!(role.doc["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        role.doc["rules"],
        json!([{
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        }])
    );
    assert!(r.find("ClusterRole", GATEWAY).is_none());
    let sa = r.pod_spec(GATEWAY)["serviceAccountName"]
        .as_str()
        .expect("gateway serviceAccountName")
        .to_owned();
    assert_eq!(sa, GATEWAY);
    assert_eq!(
        r.get("ServiceAccount", &sa).doc["automountServiceAccountToken"],
        true
    );
    assert_eq!(r.pod_spec(GATEWAY)["automountServiceAccountToken"], true);
    let binding = r.get("RoleBinding", GATEWAY);
    assert_eq!(
        binding.doc["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": GATEWAY})
    );
    assert_eq!(
        binding.doc["subjects"],
        json!([{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}])
    );
    // Workers run under an account of their own, with no token.
    let worker_sa = r.pod_spec(WORKER)["serviceAccountName"]
        .as_str()
        .expect("worker serviceAccountName");
    assert_ne!(worker_sa, sa);
    assert_eq!(r.pod_spec(WORKER)["automountServiceAccountToken"], false);
    assert_eq!(
        r.get("ServiceAccount", worker_sa).doc["automountServiceAccountToken"],
        false
    );
}

/// Non-root, read-only root filesystem, no capabilities, for both containers.
fn assert_locked_down(r: &Rendered) {
    for deployment in [GATEWAY, WORKER] {
        let pod = r.pod_spec(deployment);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{deployment}");
        assert_eq!(pod["securityContext"]["runAsUser"], 10001, "{deployment}");
        let c = &r.container(deployment)["securityContext"];
        assert_eq!(c["runAsNonRoot"], true, "{deployment}");
        assert_eq!(c["readOnlyRootFilesystem"], true, "{deployment}");
        assert_eq!(c["allowPrivilegeEscalation"], false, "{deployment}");
        assert_eq!(c["capabilities"], json!({"drop": ["ALL"]}), "{deployment}");
    }
}

/// The gateway: `sluice gateway --config /etc/sluice/gateway.yaml` from the ConfigMap, HTTP probes on the public
/// port, a grace period above the drain, the configuration's checksum on the pods.
fn assert_gateway_pods(r: &Rendered) {
    let c = r.container(GATEWAY);
    assert_eq!(c["command"], json!(["sluice"]));
    assert_eq!(
        strings(&c["args"])[..3],
        ["gateway", "--config", "/etc/sluice/gateway.yaml"]
    );
    assert_eq!(
        c["ports"],
        json!([
            {"name": "http", "containerPort": 8080, "protocol": "TCP"},
            {"name": "admin", "containerPort": 9090, "protocol": "TCP"},
        ])
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "http"})
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "http"})
    );
    assert!(
        c.get("resources")
            .is_some_and(|r| r["requests"]["cpu"].is_string())
    );
    let mounts = c["volumeMounts"].as_array().expect("mounts");
    let config_mount = mounts
        .iter()
        .find(|m| m["mountPath"] == "/etc/sluice")
        .expect("/etc/sluice mounted");
    let pod = r.pod_spec(GATEWAY);
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == config_mount["name"])
        .expect("the config volume");
    assert_eq!(volume["configMap"]["name"], GATEWAY);

    let (config, _) = r.gateway_config();
    let drain = config["drain_grace_seconds"]
        .as_f64()
        .expect("drain_grace_seconds");
    let grace = pod["terminationGracePeriodSeconds"]
        .as_f64()
        .expect("grace period");
    assert!(
        grace > drain,
        "gateway: grace {grace} s must be above the drain {drain} s"
    );

    let checksum =
        r.get("Deployment", GATEWAY).doc["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            .as_str()
            .expect("checksum/config annotation")
            .to_owned();
    assert_eq!(checksum.len(), 64);
    assert!(checksum.bytes().all(|b| b.is_ascii_hexdigit()));
}

/// The workers: `sluice worker --config /etc/sluice/worker.yaml`, gRPC probes on the health service names the
/// worker reports, a grace period above its drain, the model volume mounted read-only.
fn assert_worker_pods(r: &Rendered) {
    let c = r.container(WORKER);
    assert_eq!(c["command"], json!(["sluice"]));
    assert_eq!(
        c["args"],
        json!(["worker", "--config", "/etc/sluice/worker.yaml"])
    );
    assert_eq!(
        c["ports"],
        json!([
            {"name": "grpc", "containerPort": 50051, "protocol": "TCP"},
            {"name": "metrics", "containerPort": 9464, "protocol": "TCP"},
        ])
    );
    assert_eq!(
        c["readinessProbe"]["grpc"],
        json!({"port": 50051, "service": WORKER_HEALTH_SERVICE})
    );
    assert_eq!(
        c["startupProbe"]["grpc"],
        json!({"port": 50051, "service": WORKER_HEALTH_SERVICE})
    );
    assert_eq!(c["livenessProbe"]["grpc"]["port"], 50051);
    let startup_window = c["startupProbe"]["periodSeconds"].as_i64().unwrap()
        * c["startupProbe"]["failureThreshold"].as_i64().unwrap();
    assert!(
        startup_window >= 300,
        "the startup probe allows only {startup_window} s to load the model"
    );

    let (config, _) = r.worker_config();
    assert_eq!(config["listen"], "0.0.0.0:50051");
    assert_eq!(config["metrics_listen"], "0.0.0.0:9464");
    let drain = config["drain_grace_seconds"]
        .as_i64()
        .expect("drain_grace_seconds");
    let pod = r.pod_spec(WORKER);
    let grace = pod["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("grace period");
    assert!(
        grace > drain,
        "workers: grace {grace} s must be above the drain {drain} s"
    );
    // Liveness asks for "", NOT_SERVING while draining too: it must not kill a draining worker.
    let liveness_window = c["livenessProbe"]["periodSeconds"].as_i64().unwrap()
        * c["livenessProbe"]["failureThreshold"].as_i64().unwrap();
    assert!(
        liveness_window > drain,
        "liveness ({liveness_window} s) would cut a drain of {drain} s"
    );

    // The model: an explicit path inside a read-only mount of the model volume.
    let model = config["model"].as_str().expect("model path");
    let mount = c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["name"] == "model")
        .expect("model volume mounted");
    assert_eq!(mount["readOnly"], true);
    assert!(model.starts_with(&format!("{}/", mount["mountPath"].as_str().unwrap())));
    assert!(Path::new(model).extension().is_some_and(|e| e == "gguf"));
    let config_volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "config")
        .expect("config volume");
    assert_eq!(config_volume["configMap"]["name"], WORKER);
}

/// The headless Service: no cluster IP, a port named grpc, ready pods only, selecting the worker pods.
fn assert_headless_service(r: &Rendered) {
    let svc = &r.get("Service", WORKERS_SERVICE).doc["spec"];
    assert_eq!(svc["clusterIP"], "None");
    assert_eq!(svc["publishNotReadyAddresses"], false);
    let grpc = svc["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "grpc")
        .expect("a port named grpc");
    assert_eq!(grpc["port"], 50051);
    assert_eq!(grpc["targetPort"], "grpc");
    assert!(selects(&svc["selector"], worker_pod_labels(r)));
    assert!(!selects(&svc["selector"], gateway_pod_labels(r)));
    // The gateway's Service selects the gateway pods.
    let gw = &r.get("Service", GATEWAY).doc["spec"];
    assert!(selects(&gw["selector"], gateway_pod_labels(r)));
    assert!(!selects(&gw["selector"], worker_pod_labels(r)));
    let names: Vec<_> = gw["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].clone())
        .collect();
    assert_eq!(names, [json!("http"), json!("admin")]);
}

/// The pool of local workers is found through the headless Service, in the release's namespace.
fn assert_discovery_config(r: &Rendered) {
    let (config, _) = r.gateway_config();
    assert_eq!(config["listen"], "0.0.0.0:8080");
    assert_eq!(config["admin_listen"], "0.0.0.0:9090");
    assert_eq!(
        config["local"]["kubernetes"],
        json!({"service": WORKERS_SERVICE, "namespace": NAMESPACE, "port": "grpc"})
    );
    assert_eq!(config["local"]["workers"], json!([]));
    assert_eq!(config["local"]["clearance"], "restricted");
    // The Service the configuration names exists, with the port the configuration names.
    let svc = r.get(
        "Service",
        config["local"]["kubernetes"]["service"].as_str().unwrap(),
    );
    assert!(
        svc.doc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == config["local"]["kubernetes"]["port"])
    );
}

/// The autoscaler scales the gateway Deployment (which then sets no replica count), the budget covers the
/// gateway pods only.
fn assert_hpa_and_pdb(r: &Rendered) {
    let hpa = &r.get("HorizontalPodAutoscaler", GATEWAY).doc["spec"];
    assert_eq!(
        hpa["scaleTargetRef"],
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": GATEWAY})
    );
    assert_eq!(hpa["metrics"][0]["resource"]["name"], "cpu");
    assert!(hpa["minReplicas"].as_i64().unwrap() >= 1);
    assert!(r.get("Deployment", GATEWAY).doc["spec"].get("replicas").is_none());
    let pdb = &r.get("PodDisruptionBudget", GATEWAY).doc["spec"];
    assert!(selects(&pdb["selector"]["matchLabels"], gateway_pod_labels(r)));
    assert!(!selects(&pdb["selector"]["matchLabels"], worker_pod_labels(r)));
    assert_eq!(pdb["minAvailable"], 1);
}

#[test]
fn lint_passes_with_default_values() {
    let r = render(json!({}));
    assert_eq!(r.lint["errors"], json!([]), "{}", r.lint);
    let serious: Vec<_> = r.lint["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["severity"].as_i64() != Some(1))
        .collect();
    assert!(serious.is_empty(), "helm lint warnings or errors: {serious:?}");
    assert_eq!(r.lint["total_charts_linted"], 1);
}

#[test]
fn default_values_render_a_valid_locked_down_install() {
    let r = render(json!({})).valid();
    let kinds: Vec<(String, String)> = r.kinds();
    let want: Vec<(String, String)> = [
        ("ConfigMap", GATEWAY),
        ("ConfigMap", WORKER),
        ("Deployment", GATEWAY),
        ("Deployment", WORKER),
        ("HorizontalPodAutoscaler", GATEWAY),
        ("NetworkPolicy", GATEWAY),
        ("NetworkPolicy", WORKER),
        ("PersistentVolumeClaim", "demo-sluice-worker-model"),
        ("PodDisruptionBudget", GATEWAY),
        ("Role", GATEWAY),
        ("RoleBinding", GATEWAY),
        ("Secret", GATEWAY),
        ("Service", GATEWAY),
        ("Service", WORKERS_SERVICE),
        ("ServiceAccount", GATEWAY),
        ("ServiceAccount", WORKER),
    ]
    .iter()
    .map(|(k, n)| ((*k).to_owned(), (*n).to_owned()))
    .collect();
    assert_eq!(kinds, want);
    for m in &r.manifests {
        assert_eq!(m.doc["metadata"]["namespace"], NAMESPACE, "{} {}", m.kind, m.name);
        assert_eq!(m.doc["metadata"]["labels"]["app.kubernetes.io/name"], "sluice");
        assert_eq!(m.doc["metadata"]["labels"]["app.kubernetes.io/instance"], RELEASE);
    }

    assert_selectors(&r);
    assert_rbac(&r);
    assert_locked_down(&r);
    assert_gateway_pods(&r);
    assert_worker_pods(&r);
    assert_headless_service(&r);
    assert_discovery_config(&r);
    assert_hpa_and_pdb(&r);
    assert_worker_network_policy(&r, None);

    // The gateway: clients from anywhere on the public port, nobody on the admin port; out to the workers,
    // DNS and the default cloud's addresses on 443. No API server rule until its addresses are given.
    let np = r.network_policy(GATEWAY);
    assert_eq!(np["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        np["podSelector"]["matchLabels"],
        r.get("Deployment", GATEWAY).doc["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(
        np["ingress"],
        json!([{"ports": [{"port": 8080, "protocol": "TCP"}]}])
    );
    let mut want = base_gateway_egress(&r);
    want.push(Egress::Cidrs(
        DEFAULT_CLOUD_CIDRS.iter().map(|c| (*c).to_owned()).collect(),
        vec![tcp(443)],
    ));
    want.sort();
    assert_eq!(egress_rules(np), want);

    // The configuration: not air-gapped, the default cloud, the key read from the Secret the pods load.
    let (config, _) = r.gateway_config();
    assert_eq!(config["air_gapped"], false);
    assert_eq!(config["clouds"][0]["name"], "openai");
    assert_eq!(config["clouds"][0]["api_key_env"], "OPENAI_API_KEY");
    assert!(
        config["clouds"][0].get("cidrs").is_none(),
        "chart-only keys stay out of gateway.yaml"
    );
    assert!(config["clouds"][0].get("apiKey").is_none());
    assert_eq!(
        config["api_keys"],
        json!([{"tenant": "platform", "key_env": "SLUICE_KEY_PLATFORM"}])
    );
    let secret = r.get("Secret", GATEWAY);
    let data = secret.doc["data"].as_object().expect("secret data");
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["SLUICE_ADMIN_TOKEN", "SLUICE_KEY_PLATFORM"]
    );
    // The admin listener requires a token, generated at install and read from the Secret.
    assert_eq!(config["admin_token_env"], "SLUICE_ADMIN_TOKEN");
    assert!(
        r.notes.contains("jsonpath='{.data.SLUICE_ADMIN_TOKEN}'"),
        "{}",
        r.notes
    );
    assert_eq!(
        r.container(GATEWAY)["envFrom"],
        json!([{"secretRef": {"name": GATEWAY}}])
    );
    // A CPU worker: no GPU asked for.
    let (worker, _) = r.worker_config();
    assert_eq!(worker["device"], "cpu");
    assert_eq!(worker["model"], "/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(worker["model_id"], "smollm2-135m-instruct");
    assert!(
        r.container(WORKER)["resources"]["limits"]
            .get("nvidia.com/gpu")
            .is_none()
    );
    assert_eq!(r.container(WORKER)["image"], "sluice:0.1.0");
    let model_volume = r.pod_spec(WORKER)["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "model")
        .expect("model volume")
        .clone();
    assert_eq!(
        model_volume["persistentVolumeClaim"],
        json!({"claimName": "demo-sluice-worker-model", "readOnly": true})
    );

    // NOTES.txt: how to reach the gateway and what to check.
    for line in [
        "kubectl -n llm port-forward svc/demo-sluice-gateway 8080:8080",
        "kubectl -n llm port-forward svc/demo-sluice-gateway 9090:9090",
        "http://127.0.0.1:8080/v1",
        "http://127.0.0.1:8080/readyz",
        "http://127.0.0.1:9090/admin/backends",
        "kubectl -n llm get endpointslices -l kubernetes.io/service-name=demo-sluice-workers",
        "kubectl -n llm get secret demo-sluice-gateway -o jsonpath='{.data.SLUICE_KEY_PLATFORM}'",
        "WARNING: networkPolicy.gateway.apiServer.cidrs is empty",
        "WARNING: cloud openai reads its key from OPENAI_API_KEY",
    ] {
        assert!(r.notes.contains(line), "NOTES.txt lacks {line:?}:\n{}", r.notes);
    }
}

fn air_gapped_values() -> Value {
    json!({
        "airGapped": true,
        "clouds": [],
        "networkPolicy": {"gateway": {"apiServer": {"cidrs": API_SERVER_CIDRS}}},
    })
}

#[test]
fn air_gapped_has_no_cloud_in_config_or_network_policy() {
    let r = render(air_gapped_values()).valid();
    let (config, text) = r.gateway_config();
    assert_eq!(config["air_gapped"], true);
    assert!(
        config.get("clouds").is_none(),
        "clouds in an air-gapped gateway.yaml:\n{text}"
    );
    assert!(!text.contains("clouds"), "{text}");
    assert_discovery_config(&r);
    assert_worker_network_policy(&r, None);
    assert_rbac(&r);

    // Out only to the workers, DNS and the API server: no other address.
    let np = r.network_policy(GATEWAY);
    assert_eq!(np["policyTypes"], json!(["Ingress", "Egress"]));
    let mut want = base_gateway_egress(&r);
    want.push(Egress::Cidrs(
        API_SERVER_CIDRS.iter().map(|c| (*c).to_owned()).collect(),
        vec![tcp(443), tcp(6443)],
    ));
    want.sort();
    assert_eq!(egress_rules(np), want);
    let secret = r.get("Secret", GATEWAY);
    assert_eq!(
        secret.doc["data"].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["SLUICE_ADMIN_TOKEN", "SLUICE_KEY_PLATFORM"]
    );
    assert!(r.notes.contains("air-gapped (no cloud backend)"), "{}", r.notes);
    assert!(!r.notes.contains("apiServer.cidrs is empty"), "{}", r.notes);
    assert!(!r.notes.contains("OPENAI_API_KEY"), "{}", r.notes);
}

/// The outage drill and fallbacks to owned models reach the gateway's file, with each cloud's breaker and
/// probe, and the file passes `sluice policy check`.
#[test]
fn the_outage_drill_and_fallbacks_reach_the_gateway() {
    let r = render(json!({
        "offline": true,
        "gateway": {"policy": {"fallbacks": [
            {"model": "gpt-4o-mini", "to": "smollm2-135m-instruct", "on": ["cloud_unavailable", "cloud_rate_limited"]}
        ]}},
    }))
    .valid();
    let (config, text) = r.gateway_config();
    assert_eq!(config["offline"], true, "{text}");
    assert_eq!(
        config["policy"]["fallbacks"][0]["to"], "smollm2-135m-instruct",
        "{text}"
    );
    assert_eq!(
        config["clouds"][0]["breaker"],
        json!({"failures": 3, "cooldown_seconds": 30})
    );
    assert_eq!(config["clouds"][0]["probe"]["path"], "/models");
    assert_policy_check_passes(&r);
    // Off by default.
    let r = render(json!({})).valid();
    assert!(r.gateway_config().0.get("offline").is_none());
}

/// The personal-data model is on by default, from the files the image carries (no fetch, no egress);
/// `gateway.ner.enabled: false` leaves the section out, and its settings reach the gateway's file.
#[test]
fn the_personal_data_model_comes_from_the_image_and_can_be_turned_off() {
    let r = render(air_gapped_values()).valid();
    let (config, text) = r.gateway_config();
    assert_eq!(
        config["ner"]["weights"], "/usr/share/sluice/models/rampart-1.4.0.f32.safetensors",
        "{text}"
    );
    assert_eq!(
        config["ner"]["tokenizer"],
        "/usr/share/sluice/models/rampart-1.4.0.tokenizer.json"
    );
    assert!(config["ner"].get("enabled").is_none(), "{text}");
    let dockerfile = std::fs::read_to_string(repo().join("deploy/docker/gateway.Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("sluice models pull --ner"),
        "the image converts the model"
    );
    assert!(
        dockerfile.contains("/usr/share/sluice/models/"),
        "and carries it where the chart looks"
    );

    let mut values = air_gapped_values();
    values["gateway"]["ner"] = json!({"enabled": true, "threads": 3, "timeout_ms": 800, "prefilter": false});
    let r = render(values).valid();
    let (config, _) = r.gateway_config();
    assert_eq!(
        (
            config["ner"]["threads"].clone(),
            config["ner"]["timeout_ms"].clone()
        ),
        (json!(3), json!(800))
    );
    assert_eq!(config["ner"]["prefilter"], false);

    let mut values = air_gapped_values();
    values["gateway"]["ner"] = json!({"enabled": false});
    let r = render(values).valid();
    let (config, text) = r.gateway_config();
    assert!(config.get("ner").is_none(), "{text}");
}

#[test]
fn gpu_workers_ask_for_gpus_on_chosen_nodes() {
    let tolerations = json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]);
    let node_selector = json!({"nvidia.com/gpu.present": "true"});
    let r = render(json!({
        "workers": {
            "replicas": 3,
            "gpu": {"enabled": true, "count": 2},
            "nodeSelector": node_selector,
            "tolerations": tolerations,
            "model": {
                "file": "llama.gguf",
                "volume": {"type": "hostPath", "hostPath": {"path": "/srv/models"}},
            },
        },
    }))
    .valid();
    assert_worker_pods(&r);
    assert_locked_down(&r);
    let c = r.container(WORKER);
    let gpus = &c["resources"]["limits"]["nvidia.com/gpu"];
    assert!(
        gpus == &json!(2) || gpus == &json!("2"),
        "nvidia.com/gpu limit: {gpus}"
    );
    // The chart's other resources stay.
    assert_eq!(c["resources"]["requests"]["cpu"], "2");
    assert_eq!(c["resources"]["limits"]["memory"], "4Gi");
    assert_eq!(c["image"], "sluice-worker-cuda:0.1.0");
    let pod = r.pod_spec(WORKER);
    assert_eq!(pod["nodeSelector"], node_selector);
    assert_eq!(pod["tolerations"], tolerations);
    assert_eq!(r.get("Deployment", WORKER).doc["spec"]["replicas"], 3);
    let (worker, _) = r.worker_config();
    assert_eq!(worker["device"], "cuda:0");
    assert_eq!(worker["model"], "/models/llama.gguf");
    let model_volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "model")
        .expect("model volume");
    assert_eq!(
        model_volume["hostPath"],
        json!({"path": "/srv/models", "type": "Directory"})
    );
    assert!(
        r.find("PersistentVolumeClaim", "demo-sluice-worker-model")
            .is_none()
    );
    // The gateway stays on CPU and anywhere.
    assert!(
        r.container(GATEWAY)["resources"]["limits"]
            .get("nvidia.com/gpu")
            .is_none()
    );
    assert!(r.pod_spec(GATEWAY).get("nodeSelector").is_none());
    assert!(r.notes.contains("on each node, under /srv/models"), "{}", r.notes);
}

#[test]
fn service_monitors_secrets_audit_and_metrics_peers() {
    let prometheus =
        json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]);
    let r = render(json!({
        "serviceMonitor": {"enabled": true, "labels": {"release": "prometheus"}},
        "gateway": {"existingSecret": "my-keys", "audit": {"enabled": true}, "autoscaling": {"enabled": false}},
        "networkPolicy": {
            "gateway": {"adminFrom": prometheus, "publicFrom": [{"podSelector": {"matchLabels": {"app": "ingress"}}}]},
            "workers": {"metricsFrom": prometheus},
        },
    }))
    .valid();

    // ServiceMonitors (a CRD, so checked here): each selects its Service by labels and scrapes a named port.
    for (name, service, port) in [(GATEWAY, GATEWAY, "admin"), (WORKER, WORKERS_SERVICE, "metrics")] {
        let sm = r.get("ServiceMonitor", name);
        assert_eq!(sm.doc["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(sm.doc["metadata"]["labels"]["release"], "prometheus");
        let spec = sm.doc["spec"].as_object().expect("spec");
        assert_eq!(
            spec.keys().map(String::as_str).collect::<BTreeSet<&str>>(),
            BTreeSet::from(["endpoints", "namespaceSelector", "selector"])
        );
        assert_eq!(
            sm.doc["spec"]["namespaceSelector"],
            json!({"matchNames": [NAMESPACE]})
        );
        let svc = r.get("Service", service);
        assert!(selects(
            &sm.doc["spec"]["selector"]["matchLabels"],
            &svc.doc["metadata"]["labels"]
        ));
        let other = if service == GATEWAY {
            WORKERS_SERVICE
        } else {
            GATEWAY
        };
        assert!(!selects(
            &sm.doc["spec"]["selector"]["matchLabels"],
            &r.get("Service", other).doc["metadata"]["labels"]
        ));
        assert_eq!(
            sm.doc["spec"]["endpoints"],
            json!([{"port": port, "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}])
        );
        assert!(
            svc.doc["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == port)
        );
    }

    // existingSecret: the chart makes no Secret and the pods read the named one.
    assert!(r.manifests.iter().all(|m| m.kind != "Secret"));
    assert_eq!(
        r.container(GATEWAY)["envFrom"],
        json!([{"secretRef": {"name": "my-keys"}}])
    );
    assert!(
        r.notes.contains("The keys are in the Secret my-keys."),
        "{}",
        r.notes
    );

    // Audit: one chain per pod, in a writable volume.
    let (config, _) = r.gateway_config();
    assert_eq!(config["audit"]["path"], "/var/lib/sluice/audit/audit.jsonl");
    let args = strings(&r.container(GATEWAY)["args"]);
    assert_eq!(
        args,
        [
            "gateway",
            "--config",
            "/etc/sluice/gateway.yaml",
            "--audit-log",
            "/var/lib/sluice/audit/$(POD_NAME).jsonl"
        ]
    );
    assert!(
        r.container(GATEWAY)["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == "/var/lib/sluice/audit")
    );

    // Without autoscaling, the Deployment sets the count and there is no autoscaler.
    assert_eq!(r.get("Deployment", GATEWAY).doc["spec"]["replicas"], 2);
    assert!(r.find("HorizontalPodAutoscaler", GATEWAY).is_none());

    // Prometheus may reach the admin and metrics ports; the gRPC port still admits the gateway only.
    assert_worker_network_policy(&r, Some(prometheus.clone()));
    assert_eq!(
        r.network_policy(GATEWAY)["ingress"],
        json!([
            {"ports": [{"port": 8080, "protocol": "TCP"}], "from": [{"podSelector": {"matchLabels": {"app": "ingress"}}}]},
            {"from": prometheus, "ports": [{"port": 9090, "protocol": "TCP"}]},
        ])
    );
}

#[test]
fn configuration_changes_roll_the_pods() {
    let checksum = |r: &Rendered, deployment: &str| {
        r.get("Deployment", deployment).doc["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            .as_str()
            .expect("checksum")
            .to_owned()
    };
    let a = render(json!({})).valid();
    let b = render(json!({})).valid();
    let c = render(json!({"gateway": {"limits": {"max_in_flight": 64}}})).valid();
    let d = render(json!({"workers": {"slots": 8}})).valid();
    assert_eq!(checksum(&a, GATEWAY), checksum(&b, GATEWAY));
    assert_ne!(checksum(&a, GATEWAY), checksum(&c, GATEWAY));
    assert_eq!(c.gateway_config().0["limits"]["max_in_flight"], 64);
    assert_eq!(checksum(&a, WORKER), checksum(&c, WORKER));
    assert_ne!(checksum(&a, WORKER), checksum(&d, WORKER));
    assert_eq!(d.worker_config().0["slots"], 8);
}

#[test]
fn schema_rejects_wrong_values_naming_the_key() {
    let cases = [
        (
            json!({"gateway": {"local": {"clearance": "secret"}}}),
            "at '/gateway/local/clearance': value must be one of 'public', 'internal', 'confidential', 'restricted'",
        ),
        (
            json!({"clouds": [{"name": "x", "base_url": "https://x.example/v1", "clearance": "secret",
                               "models": [{"id": "m", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1}]}]}),
            "at '/clouds/0/clearance': value must be one of",
        ),
        (
            json!({"workers": {"replicas": -1}}),
            "at '/workers/replicas': minimum: got -1, want 0",
        ),
        (
            json!({"gateway": {"replicas": 0}}),
            "at '/gateway/replicas': minimum: got 0, want 1",
        ),
        (
            json!({"gateway": {"replica": 3}}),
            "at '/gateway': additional properties 'replica' not allowed",
        ),
        (
            json!({"colud": []}),
            "at '': additional properties 'colud' not allowed",
        ),
        (
            json!({"gateway": {"sensitivity": {"levels": {"emial": "restricted"}}}}),
            "invalid propertyName 'emial'",
        ),
        (
            json!({"workers": {"gpu": {"count": 0}}}),
            "at '/workers/gpu/count': minimum: got 0, want 1",
        ),
        (
            json!({"workers": {"slots": "four"}}),
            "at '/workers/slots': got string, want integer",
        ),
        (
            json!({"workers": {"model": {"file": ""}}}),
            "at '/workers/model/file'",
        ),
        (
            json!({"networkPolicy": {"gateway": {"apiServer": {"cidrs": ["kubernetes.default"]}}}}),
            "at '/networkPolicy/gateway/apiServer/cidrs/0'",
        ),
        (
            json!({"gateway": {"sensitivity": {"levels": {"email": "top-secret"}}}}),
            "at '/gateway/sensitivity/levels/email': value must be one of",
        ),
    ];
    for (values, message) in cases {
        let r = render(values.clone());
        let error = r
            .error
            .as_deref()
            .unwrap_or_else(|| panic!("{values} rendered, but the schema should refuse it"));
        assert!(
            error.contains("values don't meet the specifications of the schema"),
            "{values}: {error}"
        );
        assert!(
            error.contains(message),
            "{values}: the error does not say {message:?}:\n{error}"
        );
        let lint_errors = r.lint["errors"].as_array().expect("lint errors");
        assert!(
            lint_errors
                .iter()
                .any(|e| e.as_str().is_some_and(|e| e.contains(message))),
            "{values}: helm lint does not report {message:?}: {}",
            r.lint
        );
        assert!(r.manifests.is_empty());
    }
}

#[test]
fn chart_refuses_contradictory_values_with_its_own_message() {
    let cases = [
        (
            json!({"airGapped": true}),
            "airGapped is true, but 1 cloud backend(s) are configured under clouds (first: \"openai\"): an air-gapped gateway refuses to start with any cloud backend. Set clouds: [] or airGapped: false.",
        ),
        (
            json!({"gateway": {"drainGraceSeconds": 60}}),
            "gateway.terminationGracePeriodSeconds (45) must be above gateway.drainGraceSeconds (60)",
        ),
        (
            json!({"workers": {"drainGraceSeconds": 45}}),
            "workers.terminationGracePeriodSeconds (45) must be above workers.drainGraceSeconds (45)",
        ),
        (
            json!({"workers": {"model": {"volume": {"type": "hostPath"}}}}),
            "workers.model.volume.type is hostPath, but workers.model.volume.hostPath.path is empty",
        ),
        (
            json!({"gateway": {"apiKeys": [{"tenant": "a", "env": "A", "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}]}}),
            "gateway.apiKeys[0] (tenant \"a\"): give env or sha256, not both",
        ),
        (
            json!({"gateway": {"apiKeys": []}}),
            "gateway.apiKeys is empty: add at least one key, or set gateway.allowUnauthenticated: true",
        ),
        (
            json!({"gateway": {"limits": {"default": {"requests_per_minute": 60}}}}),
            "gateway.limits sets tenant limits, kept in memory, but up to 10 gateway pods may run (gateway.autoscaling.maxReplicas): each pod would allow the whole limit.",
        ),
        (
            json!({"gateway": {"autoscaling": {"enabled": false}, "replicas": 3, "limits": {"tenants": {"platform": {"budget": {"usd": 5}}}}}}),
            "but up to 3 gateway pods may run (gateway.replicas)",
        ),
        (
            json!({"tracing": {"enabled": true}}),
            "tracing.enabled is true, but tracing.otlpEndpoint is empty",
        ),
        (
            json!({"tracing": {"enabled": true, "otlpEndpoint": "http://otel:4317"}}),
            "tracing.networkPolicyPeers is empty: the pods could not reach the collector",
        ),
        (
            json!({"gateway": {"redis": {"enabled": true}}}),
            "gateway.redis.enabled is true, but gateway.redis.url is empty",
        ),
        (
            json!({"gateway": {"redis": {"enabled": true, "url": "redis://redis:6379/0"}}}),
            "gateway.redis.networkPolicyPeers is empty: the gateway could not reach Redis",
        ),
    ];
    for (values, message) in cases {
        let r = render(values.clone());
        let error = r
            .error
            .unwrap_or_else(|| panic!("{values} rendered, but the chart should refuse it"));
        assert!(
            error.contains(message),
            "{values}: the error does not say {message:?}:\n{error}"
        );
        assert!(r.manifests.is_empty());
    }
}

#[test]
fn air_gapped_example_values_render_a_valid_install() {
    let file = repo().join("deploy/examples/air-gapped-values.yaml");
    let r = run_render(&json!({
        "values_file": file,
        "name": RELEASE,
        "namespace": NAMESPACE,
    }))
    .valid();
    let (config, _) = r.gateway_config();
    assert_eq!(config["air_gapped"], true);
    assert!(config.get("clouds").is_none());
    assert_discovery_config(&r);
    assert_worker_pods(&r);
    assert_rbac(&r);
    assert_locked_down(&r);
    let gpus = &r.container(WORKER)["resources"]["limits"]["nvidia.com/gpu"];
    assert!(gpus == &json!(1) || gpus == &json!("1"), "{gpus}");
    assert_eq!(r.worker_config().0["device"], "cuda:0");
    // The model and the keys come from objects made outside the chart.
    let pod = r.pod_spec(WORKER);
    let model_volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "model")
        .expect("model volume");
    assert_eq!(
        model_volume["persistentVolumeClaim"]["claimName"],
        "sluice-models"
    );
    assert!(
        r.manifests
            .iter()
            .all(|m| m.kind != "PersistentVolumeClaim" && m.kind != "Secret")
    );
    assert_eq!(
        r.container(GATEWAY)["envFrom"],
        json!([{"secretRef": {"name": "sluice-keys"}}])
    );
    // Egress: workers, DNS and the API server's addresses only.
    let egress = egress_rules(r.network_policy(GATEWAY));
    let cidrs: Vec<&Egress> = egress.iter().filter(|e| matches!(e, Egress::Cidrs(..))).collect();
    assert_eq!(
        cidrs,
        [&Egress::Cidrs(
            vec![
                "10.0.0.10/32".into(),
                "10.0.0.11/32".into(),
                "10.0.0.12/32".into()
            ],
            vec![tcp(443), tcp(6443)]
        )]
    );
    assert_eq!(egress.len(), 3);
    assert_worker_network_policy(
        &r,
        Some(json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}])),
    );
    assert_policy_check_passes(&r);
}

#[test]
fn rendered_configurations_pass_sluice_checks() {
    let default = render(json!({})).valid();
    assert_worker_check_passes(&default);
    let air_gapped = render(air_gapped_values()).valid();
    assert_worker_check_passes(&air_gapped);
    assert_policy_check_passes(&default);
    assert_policy_check_passes(&air_gapped);
}

/// Tenant limits shared by the gateway pods in Redis: the URL in the chart's Secret, the configuration naming
/// it, egress to Redis only, and a configuration `sluice policy check` accepts. One pod may keep them in memory.
#[test]
fn tenant_limits_are_kept_in_redis_with_egress_to_it() {
    let peer = json!({"ipBlock": {"cidr": "10.20.0.5/32"}});
    let r = render(json!({
        "gateway": {
            "limits": {
                "default": {"requests_per_minute": 600, "tokens_per_minute": 200000},
                "tenants": {"platform": {"budget": {"usd": 25, "period": "month", "time_zone": "+01:00"}}},
                "fail": "local",
            },
            "redis": {"enabled": true, "url": "redis://:s3cret@10.20.0.5:6379/0", "tls": true, "keyPrefix": "prod-eu", "networkPolicyPeers": [peer]},
        },
    }))
    .valid();
    let (config, _) = r.gateway_config();
    assert_eq!(
        config["limits"]["redis"],
        json!({"url_env": "SLUICE_REDIS_URL", "tls": true, "key_prefix": "prod-eu", "timeout_ms": 250})
    );
    assert_eq!(config["limits"]["fail"], "local");
    assert_eq!(config["limits"]["tenants"]["platform"]["budget"]["usd"], 25);
    let data = r.get("Secret", GATEWAY).doc["data"].clone();
    // base64 of redis://:s3cret@10.20.0.5:6379/0
    assert_eq!(
        data["SLUICE_REDIS_URL"],
        "cmVkaXM6Ly86czNjcmV0QDEwLjIwLjAuNTo2Mzc5LzA="
    );
    let mut want = base_gateway_egress(&r);
    want.push(Egress::Cidrs(vec!["10.20.0.5/32".to_owned()], vec![tcp(6379)]));
    want.push(Egress::Cidrs(
        DEFAULT_CLOUD_CIDRS.iter().map(|c| (*c).to_owned()).collect(),
        vec![tcp(443)],
    ));
    want.sort();
    assert_eq!(egress_rules(r.network_policy(GATEWAY)), want);
    assert_policy_check_passes(&r);

    // One pod: memory is exact.
    let one = render(json!({"gateway": {"autoscaling": {"enabled": false}, "replicas": 1, "limits": {"default": {"requests_per_minute": 60}}}}))
        .valid();
    assert!(one.gateway_config().0["limits"].get("redis").is_none());
    assert_policy_check_passes(&one);
}

#[test]
fn traces_go_to_the_collector_from_both_daemons() {
    let peer = json!({"ipBlock": {"cidr": "10.30.0.7/32"}});
    let r = render(json!({
        "tracing": {"enabled": true, "otlpEndpoint": "http://10.30.0.7:4317", "sampleRatio": 0.25, "networkPolicyPeers": [peer]},
    }))
    .valid();
    let want = json!({"otlp_endpoint": "http://10.30.0.7:4317", "sample_ratio": 0.25, "queue_spans": 4096, "export_timeout_ms": 2000});
    assert_eq!(r.gateway_config().0["tracing"], want);
    assert_eq!(r.worker_config().0["tracing"], want);
    let mut gateway = base_gateway_egress(&r);
    gateway.push(Egress::Cidrs(vec!["10.30.0.7/32".to_owned()], vec![tcp(4317)]));
    gateway.push(Egress::Cidrs(
        DEFAULT_CLOUD_CIDRS.iter().map(|c| (*c).to_owned()).collect(),
        vec![tcp(443)],
    ));
    gateway.sort();
    assert_eq!(egress_rules(r.network_policy(GATEWAY)), gateway);
    let worker = egress_rules(r.network_policy(WORKER));
    assert!(
        worker.contains(&Egress::Cidrs(vec!["10.30.0.7/32".to_owned()], vec![tcp(4317)])),
        "{worker:?}"
    );
    assert_policy_check_passes(&r);
    assert_worker_check_passes(&r);

    // Off by default: no section, and workers reach nothing.
    let off = render(json!({})).valid();
    assert!(off.gateway_config().0.get("tracing").is_none());
    assert!(off.worker_config().0.get("tracing").is_none());
    assert!(egress_rules(off.network_policy(WORKER)).is_empty());
}

#[test]
fn every_values_key_is_documented() {
    let text = std::fs::read_to_string(chart_dir().join("values.yaml")).expect("values.yaml");
    let mut previous = "";
    let mut undocumented = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let item = trimmed.strip_prefix("- ").unwrap_or(trimmed);
        let is_key = item.split_once(':').is_some_and(|(key, _)| {
            !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
        });
        if is_key && !trimmed.starts_with('#') && !line.contains(" # ") && !previous.starts_with('#') {
            undocumented.push(format!("{}: {line}", i + 1));
        }
        previous = trimmed;
    }
    assert!(
        undocumented.is_empty(),
        "keys without a comment:\n{}",
        undocumented.join("\n")
    );
}

/// The instructions of a Dockerfile, continuation lines joined, comments dropped.
fn dockerfile(name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("deploy/docker").join(name)).expect("Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(t);
            out.push(std::mem::take(&mut current));
        }
    }
    out
}

/// The value of `ARG NAME=VALUE`.
fn arg(instructions: &[String], name: &str) -> String {
    instructions
        .iter()
        .find_map(|i| i.strip_prefix(&format!("ARG {name}=")))
        .unwrap_or_else(|| panic!("no ARG {name}"))
        .to_owned()
}

/// Checks shared by both images: the sources copied exist and are not ignored, the build names a real package,
/// binary and features, the final stage runs `sluice` as the chart's user.
fn check_image(name: &str, features: &[&str], cmd: &str) -> Vec<String> {
    let instructions = dockerfile(name);
    let root = repo();
    let ignored: Vec<String> = std::fs::read_to_string(root.join(".dockerignore"))
        .expect(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches("**/").trim_end_matches('/').to_owned())
        .collect();
    let mut copied = Vec::new();
    for i in instructions.iter().filter(|i| i.starts_with("COPY ")) {
        let words: Vec<&str> = i.split_whitespace().skip(1).collect();
        if words.iter().any(|w| w.starts_with("--from=")) {
            continue;
        }
        for source in &words[..words.len() - 1] {
            assert!(
                root.join(source).exists(),
                "{name}: COPY {source}: no such path in the repository"
            );
            assert!(
                !ignored.iter().any(|p| p == source),
                "{name}: {source} is in .dockerignore"
            );
            copied.push((*source).to_owned());
        }
    }
    for needed in ["Cargo.toml", "Cargo.lock", ".cargo", "crates", "proto"] {
        assert!(
            copied.iter().any(|c| c == needed),
            "{name} does not copy {needed}"
        );
    }
    // The build: the package and binary that exist, the features the package declares.
    let manifest = std::fs::read_to_string(root.join("crates/cli/Cargo.toml")).expect("cli manifest");
    assert!(manifest.contains("name = \"sluice-cli\""));
    assert!(manifest.contains("[[bin]]\nname = \"sluice\""));
    let build = instructions
        .iter()
        .find(|i| i.contains("cargo build"))
        .unwrap_or_else(|| panic!("{name}: no cargo build"));
    assert!(
        build.contains("cargo build --release --locked -p sluice-cli --bin sluice"),
        "{name}: {build}"
    );
    let features_section = manifest
        .split("[features]")
        .nth(1)
        .expect("[features]")
        .split("\n[")
        .next()
        .unwrap();
    for feature in features {
        assert!(
            build.contains(&format!("--features {feature}")),
            "{name}: {build}"
        );
        assert!(
            features_section.contains(&format!("\n{feature} = [")),
            "sluice-cli has no feature {feature}"
        );
    }
    if features.is_empty() {
        assert!(!build.contains("--features"), "{name}: {build}");
    }
    // The final stage: the chart's non-root user, and `sluice` with the command the chart also gives.
    let last_from = instructions
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .expect("FROM");
    let final_stage = &instructions[last_from..];
    assert!(
        final_stage.iter().any(|i| i == "USER 10001:10001"),
        "{name}: USER"
    );
    assert!(
        final_stage
            .iter()
            .any(|i| i.contains("useradd --system --uid 10001"))
    );
    assert!(
        final_stage
            .iter()
            .any(|i| i.contains("COPY --from=builder /usr/local/bin/sluice /usr/local/bin/sluice"))
    );
    assert!(final_stage.iter().any(|i| i.contains("ca-certificates")));
    assert_eq!(
        final_stage
            .iter()
            .filter(|i| i.starts_with("ENTRYPOINT"))
            .collect::<Vec<_>>(),
        [&"ENTRYPOINT [\"sluice\"]".to_owned()]
    );
    assert_eq!(final_stage.last().map(String::as_str), Some(cmd));
    instructions
}

/// `1.95` or `1.95.0` as (1, 95).
fn minor_version(v: &str) -> (u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().expect("version number"));
    (parts.next().unwrap(), parts.next().unwrap())
}

#[test]
fn gateway_dockerfile_builds_the_binary_the_chart_runs() {
    let i = check_image(
        "gateway.Dockerfile",
        &[],
        "CMD [\"gateway\", \"--config\", \"/etc/sluice/gateway.yaml\"]",
    );
    // Rust 1.89 or newer (edition 2024, kube 5), on bookworm; a slim bookworm runtime.
    let rust = arg(&i, "RUST_VERSION");
    assert!(minor_version(&rust) >= (1, 89), "Rust {rust} is older than 1.89");
    let froms: Vec<&String> = i.iter().filter(|x| x.starts_with("FROM ")).collect();
    assert_eq!(
        froms,
        [
            "FROM rust:${RUST_VERSION}-bookworm AS builder",
            "FROM debian:bookworm-slim"
        ]
    );
    let workspace = std::fs::read_to_string(repo().join("Cargo.toml")).expect("Cargo.toml");
    let wanted = workspace
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("rust-version");
    assert!(
        minor_version(&rust) >= minor_version(wanted),
        "Rust {rust} < {wanted}"
    );
    // The chart's default images are these.
    let values = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    assert!(values.contains("# The image built from deploy/docker/gateway.Dockerfile"));
}

#[test]
fn cuda_dockerfile_builds_the_cuda_feature() {
    let i = check_image(
        "worker-cuda.Dockerfile",
        &["cuda"],
        "CMD [\"worker\", \"--config\", \"/etc/sluice/worker.yaml\"]",
    );
    let cuda = arg(&i, "CUDA_VERSION");
    assert!(cuda.starts_with("12."), "CUDA {cuda}");
    let froms: Vec<&String> = i.iter().filter(|x| x.starts_with("FROM ")).collect();
    assert_eq!(
        froms,
        [
            "FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS builder",
            "FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION}"
        ]
    );
    let rust = arg(&i, "RUST_VERSION");
    assert!(minor_version(&rust) >= (1, 89), "Rust {rust} is older than 1.89");
    assert!(
        i.iter().any(|x| x
            .contains("sh -s -- -y --no-modify-path --profile minimal --default-toolchain ${RUST_VERSION}")),
        "rustup installs the toolchain"
    );
    // No GPU at build time: the kernels' compute capability is given.
    assert!(arg(&i, "CUDA_COMPUTE_CAP").parse::<u32>().is_ok());
    assert!(
        i.iter()
            .any(|x| x.contains("CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}"))
    );
    let values = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    assert!(values.contains("# The image built from deploy/docker/worker-cuda.Dockerfile"));
}
