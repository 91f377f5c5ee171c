//! The OpenAPI document (`docs/openapi.json`, served at `/openapi.json` on the admin listener) describes
//! every route the two routers serve, on the listener that serves it, and nothing they do not.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeSet;

use serde_json::Value;

const ROUTER: &str = include_str!("../src/server/router.rs");
const TRACED: &str = include_str!("../src/server/traced.rs");
const DOC: &str = include_str!("../../../docs/openapi.json");

/// `(path, method)` of every `.route("PATH", METHOD(...))` in `text`.
fn routes(text: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(".route(") {
        rest = rest[i + 7..].trim_start();
        // `.route(` of something else (a backend's route) takes no path.
        let Some(after_quote) = rest.strip_prefix('"') else {
            continue;
        };
        rest = after_quote;
        let end = rest.find('"').expect("end of path");
        let path = rest[..end].to_owned();
        let after = rest[end + 1..].trim_start_matches([',', ' ', '\n']);
        let method: String = after.chars().take_while(char::is_ascii_alphabetic).collect();
        assert!(
            ["get", "post", "put", "patch", "delete"].contains(&method.as_str()),
            "{path}: cannot read its method from {:?}",
            &after[..after.len().min(40)]
        );
        out.insert((path, method));
    }
    out
}

/// The router's routes of one listener: the text of `fn NAME` up to the next `pub fn`.
fn listener_routes(name: &str) -> BTreeSet<(String, String)> {
    let start = ROUTER.find(&format!("pub fn {name}(")).expect("router function");
    let body = &ROUTER[start..];
    let end = body[1..].find("\npub fn ").map_or(body.len(), |e| e + 1);
    routes(&body[..end])
}

/// `(path, method)` of every operation in the document tagged `tag`.
fn documented(doc: &Value, tag: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let tags = op["tags"]
                .as_array()
                .expect("every operation is tagged with its listener");
            if tags.iter().any(|t| t == tag) {
                out.insert((path.clone(), method.clone()));
            }
        }
    }
    out
}

#[test]
fn the_document_lists_exactly_the_routes_of_each_listener() {
    let doc: Value = serde_json::from_str(DOC).expect("docs/openapi.json is JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    for (router, tag) in [("public_router", "public"), ("admin_router", "admin")] {
        let served = listener_routes(router);
        assert!(served.len() >= 4, "{router}: read only {served:?}");
        let described = documented(&doc, tag);
        let missing: Vec<_> = served.difference(&described).collect();
        assert!(
            missing.is_empty(),
            "{router} serves routes docs/openapi.json lacks: {missing:?}"
        );
        let extra: Vec<_> = described.difference(&served).collect();
        assert!(
            extra.is_empty(),
            "docs/openapi.json lists {tag} routes nobody serves: {extra:?}"
        );
    }
}

#[test]
fn request_spans_are_named_after_exactly_the_public_routes() {
    let start = TRACED.find("const ROUTES: &[&str] = &[").expect("ROUTES") + 26;
    let end = start + TRACED[start..].find("];").expect("end of ROUTES");
    let named: BTreeSet<String> = TRACED[start..end]
        .split(',')
        .map(|p| p.trim().trim_matches('"').to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    let served: BTreeSet<String> = listener_routes("public_router")
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(named, served);
}

#[test]
fn every_error_answer_is_openai_or_anthropic_shaped_and_every_operation_has_an_id() {
    let doc: Value = serde_json::from_str(DOC).unwrap();
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            assert!(ids.insert(id.to_owned()), "{id} twice");
            for (status, answer) in op["responses"].as_object().unwrap() {
                if status.starts_with('4') || (status.starts_with('5') && path != "/readyz") {
                    // The Anthropic Messages API answers in Anthropic's error shape.
                    let shape = if path == "/v1/messages" {
                        "#/components/schemas/AnthropicError"
                    } else {
                        "#/components/schemas/Error"
                    };
                    assert_eq!(
                        answer["content"]["application/json"]["schema"]["$ref"], shape,
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_route_reader_reads_paths_and_methods() {
    let text = r#"Router::new()
        .route("/a/{id}", get(x::a))
        .route(
            "/b", post(b))"#;
    let got: Vec<_> = routes(text).into_iter().collect();
    assert_eq!(
        got,
        [
            ("/a/{id}".to_owned(), "get".to_owned()),
            ("/b".to_owned(), "post".to_owned())
        ]
    );
}
