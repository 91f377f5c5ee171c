use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::*;

fn slice(value: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(value).expect("an EndpointSlice")
}

fn endpoint(name: &str, host: &str, port: u16, state: EndpointState) -> Endpoint {
    Endpoint {
        name: name.to_owned(),
        host: host.to_owned(),
        port,
        state,
    }
}

fn grpc() -> Port {
    Port::Name("grpc".to_owned())
}

#[test]
fn conditions_map_to_states_the_api_way() {
    let s = slice(serde_json::json!({
        "metadata": {"name": "w-abc"},
        "addressType": "IPv4",
        "ports": [{"name": "metrics", "port": 9464}, {"name": "grpc", "port": 50051}],
        "endpoints": [
            {"addresses": ["10.0.0.1"], "conditions": {"ready": true, "serving": true, "terminating": false}, "targetRef": {"kind": "Pod", "name": "w-1"}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "serving": false, "terminating": false}, "targetRef": {"kind": "Pod", "name": "w-2"}},
            // Draining: still serving, but terminating.
            {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}, "targetRef": {"kind": "Pod", "name": "w-3"}},
            // No conditions at all: unknown counts as ready.
            {"addresses": ["10.0.0.4"], "hostname": "w-4"},
            // Only `ready` given, false: `serving` follows it.
            {"addresses": ["10.0.0.5"], "conditions": {"ready": false}},
        ],
    }));
    assert_eq!(
        endpoints_of([&s], &grpc()),
        vec![
            endpoint("10.0.0.5", "10.0.0.5", 50051, EndpointState::NotServing),
            endpoint("w-1", "10.0.0.1", 50051, EndpointState::Ready),
            endpoint("w-2", "10.0.0.2", 50051, EndpointState::NotServing),
            endpoint("w-3", "10.0.0.3", 50051, EndpointState::Terminating),
            endpoint("w-4", "10.0.0.4", 50051, EndpointState::Ready),
        ]
    );
    // A number is used as it is, whatever the slice's ports.
    assert!(
        endpoints_of([&s], &Port::Number(7000))
            .iter()
            .all(|e| e.port == 7000)
    );
    // A slice without the named port adds nothing.
    assert_eq!(endpoints_of([&s], &Port::Name("http".to_owned())), vec![]);
}

#[test]
fn an_address_in_two_slices_counts_once_at_its_readiest() {
    let old = slice(serde_json::json!({
        "metadata": {"name": "w-old"}, "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": 50051}],
        "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": false}, "targetRef": {"kind": "Pod", "name": "w-1"}}],
    }));
    let new = slice(serde_json::json!({
        "metadata": {"name": "w-new"}, "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": 50051}],
        "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "w-1"}}],
    }));
    let want = vec![endpoint("w-1", "10.0.0.1", 50051, EndpointState::Ready)];
    assert_eq!(endpoints_of([&old, &new], &grpc()), want);
    assert_eq!(endpoints_of([&new, &old], &grpc()), want);
}

#[test]
fn a_dual_stack_pod_is_one_worker_reached_over_ipv4() {
    let v4 = slice(serde_json::json!({
        "metadata": {"name": "w-v4"}, "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": 50051}],
        "endpoints": [{"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "w-1"}}],
    }));
    let v6 = slice(serde_json::json!({
        "metadata": {"name": "w-v6"}, "addressType": "IPv6",
        "ports": [{"name": "grpc", "port": 50051}],
        "endpoints": [
            {"addresses": ["fd00::1"], "targetRef": {"kind": "Pod", "name": "w-1"}},
            {"addresses": ["fd00::2"], "targetRef": {"kind": "Pod", "name": "w-2"}},
        ],
    }));
    let got = endpoints_of([&v6, &v4], &grpc());
    assert_eq!(
        got,
        vec![
            endpoint("w-1", "10.0.0.1", 50051, EndpointState::Ready),
            endpoint("w-2", "fd00::2", 50051, EndpointState::Ready),
        ]
    );
    assert_eq!(got[0].authority(), "10.0.0.1:50051");
    assert_eq!(got[1].authority(), "[fd00::2]:50051");
}

#[test]
fn the_backoff_doubles_to_its_cap_and_resets() {
    let mut b = Backoff::default();
    let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
    for (i, d) in delays.iter().enumerate() {
        let base = MIN_BACKOFF.saturating_mul(1 << i).min(MAX_BACKOFF);
        assert!(*d >= base && *d <= base.mul_f64(1.25), "retry {i}: {d:?}");
    }
    assert!(delays[..6].windows(2).all(|w| w[1] > w[0]), "{delays:?}");
    b.reset();
    assert!(b.next_delay() <= MIN_BACKOFF.mul_f64(1.25));
}
