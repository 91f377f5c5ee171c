//! A request that came in another API's format keeps the client's own body beside its chat translation.

use serde_json::{Map, Value};

use super::ChatRequest;

/// The client's request in another API's own format (today Anthropic's Messages API), kept beside its chat
/// translation so that a backend speaking that API is sent it as it came (prompt-caching hints, exact
/// shapes). It stands for the request only while the request's body is still the translation it was made
/// with: a redacted or otherwise rewritten request has another body, and goes as its translation.
#[derive(Debug)]
pub struct Native {
    body: Map<String, Value>,
    translated: Map<String, Value>,
}

impl ChatRequest {
    /// Keeps the client's own `body`, from which this request was translated (see [`Native`]).
    pub fn keep_native(&mut self, body: Map<String, Value>) {
        self.native = Some(std::sync::Arc::new(Native {
            body,
            translated: self.body.clone(),
        }));
    }

    /// The client's own body for this request, naming the request's model, while the request is still
    /// exactly what it was translated into (whatever its model: a substitute or a virtual model's member).
    pub fn native_body(&self) -> Option<Map<String, Value>> {
        let n = self.native.as_ref()?;
        let unchanged = n.translated.len() == self.body.len()
            && n.translated
                .iter()
                .all(|(k, v)| k == "model" || self.body.get(k) == Some(v));
        unchanged.then(|| {
            let mut body = n.body.clone();
            body.insert("model".to_owned(), Value::String(self.model.clone()));
            body
        })
    }
}
