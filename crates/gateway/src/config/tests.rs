use super::*;
use crate::backend::cloud::CloudApi;
use crate::backend::local::worker_uri;
use crate::level::Level;

fn env(var: &str) -> Option<String> {
    match var {
        "OPENAI_API_KEY" => Some("sk-upstream".into()),
        "ACME_KEY" => Some("sk-acme".into()),
        _ => None,
    }
}

fn validate(text: &str) -> Result<GatewayConfig, ConfigError> {
    RawGatewayConfig::from_yaml_str(text)?.validate(Some(Path::new("gateway.yaml")), Some(text), &env)
}

const FULL: &str = "\
listen: 127.0.0.1:8080
admin_listen: off
api_keys:
  - tenant: acme
    key_env: ACME_KEY
  - tenant: globex
    key_sha256: ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
limits:
  max_in_flight: 64
local:
  workers:
    - name: gpu-0
      address: 10.0.0.5:50051
    - address: https://gpu-1:50051
clouds:
  - name: openai
    base_url: https://api.openai.com/v1
    api_key_env: OPENAI_API_KEY
    models:
      - id: gpt-4o-mini
        input_usd_per_mtok: 0.15
        output_usd_per_mtok: 0.60
";

#[test]
fn a_full_configuration_validates() {
    let c = validate(FULL).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.admin_listen, None);
    assert_eq!(c.keys.len(), 2);
    assert_eq!(c.keys[0].sha256, crate::auth::hash_key("sk-acme"));
    assert_eq!(c.limits.max_in_flight, 64);
    assert_eq!(c.limits.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    let local = c.local.unwrap();
    assert_eq!(local.clearance, Level::Restricted);
    assert_eq!(local.workers[0].uri, "http://10.0.0.5:50051");
    assert_eq!(local.workers[1].name, "worker-1");
    assert_eq!(c.clouds[0].api_key.as_deref(), Some("sk-upstream"));
    assert_eq!(c.clouds[0].clearance, Level::Internal);
    assert_eq!(c.clouds[0].models[0].prices.output_usd_per_mtok, 0.60);
}

#[test]
fn problems_name_file_line_and_key() {
    let cases = [
        (
            FULL.replace("max_in_flight: 64", "max_in_flight: 0"),
            "gateway.yaml:9: limits.max_in_flight",
        ),
        (
            FULL.replace("10.0.0.5:50051", "nowhere"),
            "gateway.yaml:13: local.workers[0].address",
        ),
        (
            FULL.replace("output_usd_per_mtok: 0.60", "output_usd_per_mtok: -1"),
            "gateway.yaml:22: clouds[0].models[0].output_usd_per_mtok",
        ),
        (
            FULL.replace("OPENAI_API_KEY", "MISSING_KEY"),
            "gateway.yaml:18: clouds[0].api_key_env",
        ),
        (
            FULL.replace("key_sha256: ba78", "key_sha256: zz78"),
            "gateway.yaml:7: api_keys[1].key_sha256",
        ),
        (
            FULL.replace("name: gpu-0", "name: gpu 0"),
            "gateway.yaml:12: local.workers[0].name",
        ),
    ];
    for (text, want) in cases {
        let e = validate(&text).unwrap_err().to_string();
        assert!(e.starts_with(want), "{e}");
    }
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let e = RawGatewayConfig::from_yaml_str(&FULL.replace("  max_in_flight", "  max_inflight")).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (Some(9), "limits.max_inflight"));
    assert!(e.message.contains("unknown field `max_inflight`"), "{e}");
}

#[test]
fn a_gateway_needs_keys_and_backends() {
    let e = validate("clouds: []\n").unwrap_err();
    assert_eq!(e.key, "api_keys");
    let e = validate("allow_unauthenticated: true\n").unwrap_err();
    assert!(e.message.contains("no backends"), "{e}");
}

#[test]
fn worker_addresses_become_uris() {
    assert_eq!(worker_uri("h:1", false).as_deref(), Some("http://h:1"));
    assert_eq!(worker_uri("h:1", true).as_deref(), Some("https://h:1"));
    assert_eq!(
        worker_uri("http://[::1]:50051", false).as_deref(),
        Some("http://[::1]:50051")
    );
    assert_eq!(worker_uri("h", false), None);
    assert_eq!(worker_uri("h:port", false), None);
}

#[test]
fn air_gapped_mode_refuses_any_cloud_backend_and_says_why() {
    let e = validate(&format!("air_gapped: true\n{FULL}")).unwrap_err();
    assert_eq!(e.key, "clouds");
    assert_eq!(e.line, Some(16));
    assert!(
        e.message.starts_with("air_gapped is on, so no request may leave for a cloud, but cloud backend \"openai\" (https://api.openai.com/v1) is configured"),
        "{e}"
    );
    let local_only = FULL.split("clouds:").next().unwrap();
    let c = validate(&format!("air_gapped: true\n{local_only}")).unwrap();
    assert!(c.air_gapped && c.clouds.is_empty());
    assert!(!validate(FULL).unwrap().air_gapped);
}

#[test]
fn workers_can_come_from_kubernetes_alone() {
    let text = "\
allow_unauthenticated: true
local:
  cost: { overhead_usd_per_hour: 2.0, measured_power: true }
  kubernetes:
    service: sluice-workers
    namespace: inference
    port: 50051
";
    let c = validate(text).unwrap();
    let local = c.local.unwrap();
    assert!(local.workers.is_empty());
    assert_eq!(
        local.kubernetes,
        Some(sluice_discovery::Target {
            service: "sluice-workers".into(),
            namespace: Some("inference".into()),
            port: sluice_discovery::Port::Number(50051),
            kubeconfig: None,
        })
    );
    // A discovered worker's node is priced at the pool's figure.
    assert_eq!(
        local
            .node_cost_of("sluice-workers-7d9f-abcde")
            .overhead_usd_per_hour,
        2.0
    );
    assert!(local.node_cost_of("sluice-workers-7d9f-abcde").measured_power);
    assert!(
        !crate::cost::NodeCost::default().measured_power,
        "configured power unless asked"
    );
    // The defaults: the port named grpc, the namespace of the credentials.
    let c = validate("allow_unauthenticated: true\nlocal:\n  kubernetes: { service: w }\n").unwrap();
    let k = c.local.unwrap().kubernetes.unwrap();
    assert_eq!(k.port, sluice_discovery::Port::Name("grpc".into()));
    assert_eq!(k.namespace, None);
}

#[test]
fn kubernetes_settings_are_checked() {
    let cases = [
        ("kubernetes: {}", "local.kubernetes.service", "is required"),
        (
            "kubernetes: { service: Workers }",
            "local.kubernetes.service",
            "is not a Kubernetes name",
        ),
        (
            "kubernetes: { service: w, namespace: -ns }",
            "local.kubernetes.namespace",
            "is not a Kubernetes name",
        ),
        (
            "kubernetes: { service: w, port: 70000 }",
            "local.kubernetes.port",
            "70000 is not a port number",
        ),
        (
            "kubernetes: { service: w, port: '' }",
            "local.kubernetes.port",
            "is not a port name",
        ),
        (
            "kubernetes: { service: w, label: x }",
            "local.kubernetes",
            "unknown field `label`",
        ),
        (
            "kubernetes: { service: w }\n  tls: {}",
            "local.tls.domain",
            "is required with local.kubernetes",
        ),
    ];
    for (local, key, message) in cases {
        let text = format!("allow_unauthenticated: true\nlocal:\n  {local}\n");
        let e = validate(&text).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains(message), "{local}: {e}");
    }
}

/// `FULL` with tenant limits in place of its `limits:` section.
fn with_limits(limits: &str) -> String {
    FULL.replace(
        "limits:\n  max_in_flight: 64\n",
        &format!("limits:\n  max_in_flight: 64\n{limits}"),
    )
}

#[test]
fn tenant_limits_are_read_with_their_defaults() {
    let c = validate(&with_limits(
        "  default: { requests_per_minute: 600 }
  tenants:
    acme:
      tokens_per_minute: 100000
      budget: { usd: 12.5, period: week, time_zone: '-05:00', include_local: true }
  redis: { url: 'redis://:pw@10.0.0.9:6379/2', key_prefix: eu }
  fail: local
",
    ))
    .unwrap();
    let l = &c.tenant_limits;
    assert_eq!(l.of("globex").unwrap().requests_per_minute, Some(600));
    let acme = l.of("acme").unwrap();
    assert_eq!(
        (acme.requests_per_minute, acme.tokens_per_minute),
        (None, Some(100_000))
    );
    let b = acme.budget.unwrap();
    assert_eq!(
        (b.pico, b.period, b.utc_offset_seconds, b.include_local),
        (
            crate::cost::pico(12.5),
            crate::limits::Period::Week,
            -18_000,
            true
        )
    );
    assert_eq!(l.fail, Fail::Local);
    assert_eq!(l.reserve_output_tokens, DEFAULT_RESERVE_OUTPUT_TOKENS);
    match &l.store {
        StoreConfig::Redis {
            url,
            key_prefix,
            timeout,
        } => {
            assert_eq!(
                (url.as_str(), key_prefix.as_str()),
                ("redis://:pw@10.0.0.9:6379/2", "eu")
            );
            assert_eq!(*timeout, Duration::from_millis(DEFAULT_STORE_TIMEOUT_MS));
        }
        StoreConfig::Memory => panic!("redis expected"),
    }
    // TLS turns the scheme to rediss://.
    let c = validate(&with_limits(
        "  default: { requests_per_minute: 1 }\n  redis: { url: 'redis://r:6379', tls: true }\n",
    ))
    .unwrap();
    assert!(matches!(&c.tenant_limits.store, StoreConfig::Redis { url, .. } if url == "rediss://r:6379"));
    // Without the keys, no limits at all.
    assert!(!validate(FULL).unwrap().tenant_limits.any());
}

#[test]
fn tenant_limit_problems_name_file_line_and_key_and_never_a_password() {
    let cases = [
        (
            "  tenants:\n    initech: { requests_per_minute: 5 }\n",
            "gateway.yaml:11: limits.tenants.initech",
            "no API key maps to the tenant",
        ),
        (
            "  default: { requests_per_minute: 0 }\n",
            "gateway.yaml:10: limits.default.requests_per_minute",
            "at least 1",
        ),
        (
            "  default: {}\n",
            "gateway.yaml:10: limits.default",
            "give requests_per_minute",
        ),
        (
            "  default:\n    budget: { usd: 5, period: fortnight }\n",
            "gateway.yaml:11: limits.default.budget.period",
            "day, week",
        ),
        (
            "  default:\n    budget: { usd: 5, time_zone: Europe/Paris }\n",
            "gateway.yaml:11: limits.default.budget.time_zone",
            "named zones",
        ),
        (
            "  default:\n    budget: { period: day }\n",
            "gateway.yaml:11: limits.default.budget",
            "`usd` is required",
        ),
        (
            "  default: { requests_per_minute: 1 }\n  fail: local\n",
            "gateway.yaml:11: limits.fail",
            "kept in Redis",
        ),
        (
            "  default: { requests_per_minute: 1 }\n  redis: { url: 'http://:hunter2@r' }\n",
            "gateway.yaml:11: limits.redis.url",
            "not a Redis URL",
        ),
        (
            "  default: { requests_per_minute: 1 }\n  redis: { url_env: NO_SUCH_VAR }\n",
            "gateway.yaml:11: limits.redis.url_env",
            "is not set",
        ),
        (
            "  default: { requests_per_minute: 1 }\n  redis: { url: 'redis://r', key_prefix: 'a b' }\n",
            "gateway.yaml:11: limits.redis.key_prefix",
            "without spaces",
        ),
        (
            "  default: { requests_per_minute: 1 }\n  redis: { url: 'redis://r' }\n  fail: open\n",
            "gateway.yaml:12: limits.fail",
            "closed",
        ),
        (
            "  default: { tokens_per_minute: 4096 }\n",
            "gateway.yaml:10: limits.default.tokens_per_minute",
            "not above reserve_output_tokens",
        ),
    ];
    for (limits, at, says) in cases {
        let e = validate(&with_limits(limits)).unwrap_err().to_string();
        assert!(e.starts_with(at) && e.contains(says), "{limits}: {e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
}

#[test]
fn an_admin_token_comes_from_the_environment_or_a_digest() {
    let with = |extra: &str| FULL.replace("admin_listen: off\n", &format!("admin_listen: off\n{extra}"));
    let c = validate(&with("admin_token_env: ACME_KEY\n")).unwrap();
    assert_eq!(c.admin_token, Some(crate::auth::AdminToken(hash_key("sk-acme"))));
    let c = validate(&with(
        "admin_token_sha256: ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n",
    ))
    .unwrap();
    assert_eq!(c.admin_token, Some(crate::auth::AdminToken(hash_key("abc"))));
    assert_eq!(validate(FULL).unwrap().admin_token, None);
    for (extra, at) in [
        ("admin_token_env: NOPE\n", "gateway.yaml:3: admin_token_env"),
        ("admin_token_sha256: zz\n", "gateway.yaml:3: admin_token_sha256"),
        (
            "admin_token_env: ACME_KEY\nadmin_token_sha256: ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n",
            "gateway.yaml:3: admin_token_env",
        ),
    ] {
        let e = validate(&with(extra)).unwrap_err().to_string();
        assert!(e.starts_with(at), "{e}");
    }
}

#[test]
fn connection_limits_have_defaults_and_are_checked_with_their_key() {
    let c = validate(FULL).unwrap();
    assert_eq!(c.limits.connections, ConnectionLimits::public());
    assert_eq!(c.limits.admin_connections.max_connections, 256);
    assert_eq!(c.limits.connections.header_read_timeout, Duration::from_secs(10));
    let text = FULL.replace(
        "  max_in_flight: 64\n",
        "  max_in_flight: 64\n  max_connections: 50\n  max_admin_connections: 5\n  idle_timeout_seconds: 2.5\n  max_header_bytes: 2048\n",
    );
    let c = validate(&text).unwrap();
    assert_eq!(c.limits.connections.max_connections, 50);
    assert_eq!(c.limits.admin_connections.max_connections, 5);
    assert_eq!(
        c.limits.admin_connections.idle_timeout,
        Duration::from_millis(2500)
    );
    assert_eq!(c.limits.connections.max_header_bytes, 2048);
    for (line, key) in [
        ("  max_connections: 0\n", "limits.max_connections"),
        (
            "  header_read_timeout_seconds: 0\n",
            "limits.header_read_timeout_seconds",
        ),
        ("  max_header_bytes: 100\n", "limits.max_header_bytes"),
    ] {
        let text = FULL.replace("  max_in_flight: 64\n", &format!("  max_in_flight: 64\n{line}"));
        let e = validate(&text).unwrap_err();
        assert_eq!(e.key, key, "{e}");
        assert_eq!(e.line, Some(10), "{e}");
    }
}

#[test]
fn azure_and_anthropic_clouds_are_read_and_checked() {
    let with = |cloud: &str| {
        validate(&format!(
            "allow_unauthenticated: true\nclouds:\n  - name: c\n{cloud}    models:\n      - id: m\n        deployment: dep-1\n        input_usd_per_mtok: 1\n        output_usd_per_mtok: 2\n"
        ))
    };
    let azure =
        with("    api: azure\n    api_version: \"2024-10-21\"\n    base_url: https://r.openai.azure.com\n")
            .expect("azure");
    assert_eq!(
        azure.clouds[0].api,
        CloudApi::Azure {
            api_version: "2024-10-21".into()
        }
    );
    assert_eq!(azure.clouds[0].models[0].deployment.as_deref(), Some("dep-1"));
    let e = with("    api: azure\n    base_url: https://r.openai.azure.com\n").unwrap_err();
    assert_eq!(e.key, "clouds[0].api_version", "{e}");
    let e = with("    api: anthropic\n    base_url: https://api.anthropic.com/v1\n").unwrap_err();
    assert_eq!(e.key, "clouds[0].models[0].deployment", "{e}");
    let e = with("    api: bedrock\n    base_url: https://x\n").unwrap_err();
    assert_eq!(e.key, "clouds[0].api", "{e}");
    let anthropic = validate(
        "allow_unauthenticated: true\nclouds:\n  - name: c\n    api: anthropic\n    base_url: https://api.anthropic.com/v1\n    models:\n      - { id: claude, input_usd_per_mtok: 3, output_usd_per_mtok: 15 }\n",
    )
    .expect("anthropic");
    assert_eq!(
        anthropic.clouds[0].api,
        CloudApi::Anthropic {
            version: "2023-06-01".into(),
            default_max_tokens: 4096
        }
    );
    let e = validate(
        "allow_unauthenticated: true\nclouds:\n  - name: c\n    api: anthropic\n    base_url: https://api.anthropic.com/v1\n    models:\n      - { id: e, kind: embedding, input_usd_per_mtok: 3 }\n",
    )
    .unwrap_err();
    assert_eq!(e.key, "clouds[0].models[0].kind", "{e}");
}

#[test]
fn a_fallback_never_stands_in_for_an_embedding_model() {
    let with_fallback = |model: &str| {
        format!(
            "{FULL}      - {{ id: text-embedding-3-small, kind: embedding, input_usd_per_mtok: 0.02 }}\npolicy:\n  fallbacks:\n    - {{ model: {model}, to: smollm2 }}\n"
        )
    };
    assert!(validate(&with_fallback("gpt-4o-mini")).is_ok());
    let text = with_fallback("text-embedding-3-small");
    let e = validate(&text).expect_err("an embedding model's fallback");
    assert_eq!(e.key, "policy.fallbacks[0].model", "{e}");
    assert!(e.message.contains("is an embedding model"), "{e}");
    // `policy check` reports it as an error too.
    let report = RawGatewayConfig::from_yaml_str(&text).unwrap().check(
        Some(Path::new("gateway.yaml")),
        Some(&text),
        &env,
    );
    assert!(report.config.is_none());
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert_eq!(report.errors[0].key, "policy.fallbacks[0].model");
}
