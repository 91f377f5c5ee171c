//! kube-rs's watcher against a stand-in API server that plays real watch sequences: the initial list,
//! additions, a modification to not ready, deletion, 410 Gone, a dropped connection and failing lists.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used, reason = "tests")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_discovery::mock::{MockApiServer, MockEndpoint, Request, slice};
use sluice_discovery::{Discovery, Endpoint, EndpointState, Members, Port, Target};

const NS: &str = "sluice";
const SERVICE: &str = "sluice-workers";

/// Records every set the discovery hands over, and every failure.
#[derive(Default)]
struct Recorder {
    sets: Mutex<Vec<Vec<Endpoint>>>,
    failures: Mutex<Vec<String>>,
}

impl Members for Recorder {
    fn set(&self, endpoints: Vec<Endpoint>) {
        self.sets.lock().expect("lock").push(endpoints);
    }
    fn watch_failed(&self, error: &str) {
        self.failures.lock().expect("lock").push(error.to_owned());
    }
}

impl Recorder {
    fn sets(&self) -> Vec<Vec<Endpoint>> {
        self.sets.lock().expect("lock").clone()
    }
    fn failures(&self) -> Vec<String> {
        self.failures.lock().expect("lock").clone()
    }
    /// Waits until the latest set, as (name, state) pairs, is `want`.
    async fn wait_for(&self, want: &[(&str, EndpointState)]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let last: Vec<(String, EndpointState)> = self
                .sets()
                .last()
                .map(|s| s.iter().map(|e| (e.name.clone(), e.state)).collect())
                .unwrap_or_default();
            let want: Vec<(String, EndpointState)> =
                want.iter().map(|(n, s)| ((*n).to_owned(), *s)).collect();
            if last == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited 20 s for {want:?}; sets so far: {:?}; failures: {:?}",
                self.sets(),
                self.failures()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn workers(endpoints: &[MockEndpoint]) -> serde_json::Value {
    slice(NS, "sluice-workers-abcde", SERVICE, "grpc", 50051, endpoints)
}

async fn start(mock: &MockApiServer, dir: &std::path::Path) -> Arc<Recorder> {
    let kubeconfig = dir.join("kubeconfig");
    mock.write_kubeconfig(&kubeconfig, NS).expect("kubeconfig");
    let target = Target {
        service: SERVICE.to_owned(),
        // The namespace comes from the kubeconfig's context.
        namespace: None,
        port: Port::Name("grpc".to_owned()),
        kubeconfig: Some(kubeconfig),
    };
    let discovery = Discovery::connect(&target).await.expect("connect");
    assert!(
        discovery.describe().contains("sluice/sluice-workers"),
        "{}",
        discovery.describe()
    );
    let recorder = Arc::new(Recorder::default());
    tokio::spawn(discovery.run(recorder.clone()));
    recorder
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sluice-discovery-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

use EndpointState::{NotServing, Ready, Terminating};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_service_through_list_add_modify_and_delete() {
    let mock = MockApiServer::start().await.expect("mock");
    mock.apply(workers(&[MockEndpoint::ready("w-1", "10.0.0.1")]));
    // Another Service's slice in the same namespace, and this Service's name in another namespace.
    mock.apply(slice(
        NS,
        "other-xyz",
        "other",
        "grpc",
        50051,
        &[MockEndpoint::ready("o-1", "10.0.9.1")],
    ));
    mock.apply(slice(
        "elsewhere",
        "sluice-workers-zzz",
        SERVICE,
        "grpc",
        50051,
        &[MockEndpoint::ready("x-1", "10.0.8.1")],
    ));
    let dir = tempdir();
    let recorder = start(&mock, &dir).await;

    // The initial list.
    recorder.wait_for(&[("w-1", Ready)]).await;
    let first = recorder.sets()[0].clone();
    assert_eq!(first[0].authority(), "10.0.0.1:50051");
    assert_eq!(
        mock.requests()[0],
        Request::List {
            namespace: NS.to_owned(),
            selector: "kubernetes.io/service-name=sluice-workers".to_owned()
        }
    );

    // A new ready pod joins.
    mock.apply(workers(&[
        MockEndpoint::ready("w-1", "10.0.0.1"),
        MockEndpoint::ready("w-2", "10.0.0.2"),
    ]));
    recorder.wait_for(&[("w-1", Ready), ("w-2", Ready)]).await;

    // One fails its readiness probe, the other starts terminating.
    mock.apply(workers(&[
        MockEndpoint::ready("w-1", "10.0.0.1").terminating(),
        MockEndpoint::ready("w-2", "10.0.0.2").not_serving(),
    ]));
    recorder
        .wait_for(&[("w-1", Terminating), ("w-2", NotServing)])
        .await;

    // The terminating pod is gone from the slice; then the slice itself is deleted.
    mock.apply(workers(&[MockEndpoint::ready("w-2", "10.0.0.2")]));
    recorder.wait_for(&[("w-2", Ready)]).await;
    assert!(mock.delete(NS, "sluice-workers-abcde"));
    recorder.wait_for(&[]).await;

    // A slice relabelled to another Service leaves this one's set (the server sends DELETED).
    mock.apply(workers(&[MockEndpoint::ready("w-5", "10.0.0.5")]));
    recorder.wait_for(&[("w-5", Ready)]).await;
    let mut moved = workers(&[MockEndpoint::ready("w-5", "10.0.0.5")]);
    moved["metadata"]["labels"]["kubernetes.io/service-name"] = serde_json::json!("other");
    mock.apply(moved);
    recorder.wait_for(&[]).await;

    // Nothing of the other Service or namespace ever showed, and nothing failed.
    assert!(
        recorder.sets().iter().flatten().all(|e| e.name.starts_with("w-")),
        "{:?}",
        recorder.sets()
    );
    assert_eq!(recorder.failures(), Vec::<String>::new());
    // One list, then watches only.
    let lists = mock
        .requests()
        .iter()
        .filter(|r| matches!(r, Request::List { .. }))
        .count();
    assert_eq!(lists, 1, "{:?}", mock.requests());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_dropped_connections_and_failing_lists_never_empty_the_set() {
    let mock = MockApiServer::start().await.expect("mock");
    mock.apply(workers(&[
        MockEndpoint::ready("w-1", "10.0.0.1"),
        MockEndpoint::ready("w-2", "10.0.0.2"),
    ]));
    let dir = tempdir();
    let recorder = start(&mock, &dir).await;
    recorder.wait_for(&[("w-1", Ready), ("w-2", Ready)]).await;
    wait_until(|| mock.open_watches() == 1, "the watch to open").await;

    // 410 Gone: the history is compacted and a change happens before the client lists again.
    mock.expire();
    mock.apply(workers(&[
        MockEndpoint::ready("w-1", "10.0.0.1"),
        MockEndpoint::ready("w-3", "10.0.0.3"),
    ]));
    recorder.wait_for(&[("w-1", Ready), ("w-3", Ready)]).await;
    let lists = |m: &MockApiServer| {
        m.requests()
            .iter()
            .filter(|r| matches!(r, Request::List { .. }))
            .count()
    };
    assert_eq!(lists(&mock), 2, "a re-list after 410: {:?}", mock.requests());
    assert!(
        recorder
            .failures()
            .iter()
            .any(|f| f.contains("410") || f.contains("too old")),
        "{:?}",
        recorder.failures()
    );
    wait_until(|| mock.open_watches() == 1, "the watch to reopen").await;

    // A dropped connection: the client watches again from where it was, without listing, and gets
    // what changed while it was away.
    let watches_before = mock.requests().len();
    mock.drop_watches();
    mock.apply(workers(&[
        MockEndpoint::ready("w-1", "10.0.0.1"),
        MockEndpoint::ready("w-3", "10.0.0.3").not_serving(),
    ]));
    recorder.wait_for(&[("w-1", Ready), ("w-3", NotServing)]).await;
    assert_eq!(
        lists(&mock),
        2,
        "no list after a dropped watch: {:?}",
        mock.requests()
    );
    let resumed = mock.requests()[watches_before..]
        .iter()
        .find_map(|r| match r {
            Request::Watch { resource_version, .. } => Some(resource_version.clone()),
            Request::List { .. } => None,
        })
        .expect("a new watch");
    assert_ne!(resumed, "0", "the watch resumes from a resource version");
    wait_until(|| mock.open_watches() == 1, "the watch to reopen").await;

    // The API server fails: lists answer 500 three times after a 410. The set stands all along, and
    // the retries back off: each wait is longer than the one before.
    let failures_before = recorder.failures().len();
    let sets_before = recorder.sets().len();
    mock.fail_lists(3);
    mock.expire();
    wait_until(|| lists(&mock) == 6, "three failed lists and a good one").await;
    let list_times: Vec<std::time::Instant> = mock
        .requests_timed()
        .into_iter()
        .filter(|(_, r)| matches!(r, Request::List { .. }))
        .map(|(t, _)| t)
        .collect();
    let gaps: Vec<Duration> = list_times[2..].windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps.len(), 3);
    assert!(gaps[0] >= Duration::from_millis(1600), "{gaps:?}");
    assert!(
        gaps[1] > gaps[0].mul_f64(1.5) && gaps[2] > gaps[1].mul_f64(1.5),
        "the backoff grows: {gaps:?}"
    );
    wait_until(|| mock.open_watches() == 1, "the watch to reopen").await;
    assert!(
        recorder.failures().len() >= failures_before + 4,
        "the 410 and the three 500s are reported: {:?}",
        recorder.failures()
    );
    assert!(
        recorder
            .failures()
            .iter()
            .any(|f| f.contains("500") || f.contains("timed out")),
        "{:?}",
        recorder.failures()
    );
    // Nothing changed in the world, so the set was not handed over again, let alone emptied.
    assert_eq!(recorder.sets().len(), sets_before, "{:?}", recorder.sets());
    assert!(
        recorder.sets().iter().all(|s| !s.is_empty()),
        "{:?}",
        recorder.sets()
    );

    // And it still follows changes.
    mock.apply(workers(&[MockEndpoint::ready("w-1", "10.0.0.1")]));
    recorder.wait_for(&[("w-1", Ready)]).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_unreadable_kubeconfig_is_a_clear_error() {
    let target = Target {
        service: SERVICE.to_owned(),
        namespace: None,
        port: Port::Number(50051),
        kubeconfig: Some("/nonexistent/kubeconfig".into()),
    };
    let error = Discovery::connect(&target).await.expect_err("no file");
    assert!(
        error
            .to_string()
            .starts_with("cannot read kubeconfig /nonexistent/kubeconfig"),
        "{error}"
    );
}

async fn wait_until(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "waited 30 s for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
