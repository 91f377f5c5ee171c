//! `/v1/models`: every model a backend serves, and the virtual models, with their prices.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::app::App;

pub(super) async fn list(State(app): State<Arc<App>>) -> Response {
    let mut seen = std::collections::HashSet::new();
    let mut data = Vec::new();
    for backend in &app.fleet.backends {
        for card in backend.models() {
            if !seen.insert(card.id.clone()) {
                continue;
            }
            let mut entry = json!({
                "id": card.id,
                "object": "model",
                "created": 0,
                "owned_by": backend.name(),
                "sluice": {"route": backend.route().as_str(), "backend": backend.name()},
            });
            if let Some(p) = card.prices {
                entry["sluice"]["pricing"] = json!({
                    "input_usd_per_mtok": p.input_usd_per_mtok,
                    "output_usd_per_mtok": p.output_usd_per_mtok,
                });
            }
            data.push(entry);
        }
    }
    for v in &app.config.policy.models {
        if !seen.insert(v.name.clone()) {
            continue;
        }
        data.push(json!({
            "id": v.name,
            "object": "model",
            "created": 0,
            "owned_by": "sluice",
            "sluice": {
                "virtual": true,
                "strategy": v.strategy.as_str(),
                "members": v.members.iter().map(|m| json!({"backend": m.backend, "model": m.model})).collect::<Vec<_>>(),
            },
        }));
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}
