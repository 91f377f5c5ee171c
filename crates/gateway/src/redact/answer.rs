//! Restoring an answer: the values go back where the model wrote placeholders, in every form an answer
//! takes on its way to the wire layer. A worker's text, an OpenAI-compatible backend's streamed chunks
//! (each choice's content and refusal, each tool call's name and arguments, the legacy `function_call`)
//! and its whole completions. Arguments are JSON text, so a value goes into them JSON-escaped.
//!
//! Streamed text is held back only while its tail could still become a placeholder; whatever is held when
//! a choice finishes goes out in the chunk that finishes it, and whatever is held when the answer ends
//! goes out just before the end. The usage is passed on unchanged.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt as _;
use serde_json::{Map, Value, json};

use super::{Escape, Held, Mapping};
use crate::backend::{BackendError, ChatEvent, EventStream};

/// Which text of a streamed choice a held tail belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    Content,
    Refusal,
    /// A tool call's arguments, by its `index`.
    Arguments(u64),
    /// The legacy `function_call`'s arguments.
    FunctionCall,
}

impl Slot {
    fn escape(self) -> Escape {
        match self {
            Self::Content | Self::Refusal => Escape::None,
            Self::Arguments(_) | Self::FunctionCall => Escape::JsonString,
        }
    }
}

/// One answer's restoring state.
struct Restoring {
    mapping: Arc<Mapping>,
    /// A worker's text.
    text: Held,
    /// Streamed chunks' texts, by choice index and slot.
    held: BTreeMap<(u64, Slot), Held>,
    /// The last chunk seen, less its choices: the shape of a chunk that flushes what is held at the end.
    last: Option<Map<String, Value>>,
}

/// The answer with every placeholder of `mapping` restored.
pub fn restore(events: EventStream, mapping: Arc<Mapping>) -> EventStream {
    let mut state = Restoring {
        mapping,
        text: Held::new(Escape::None),
        held: BTreeMap::new(),
        last: None,
    };
    Box::pin(events.flat_map(move |event| futures_util::stream::iter(state.next(event))))
}

impl Restoring {
    fn next(&mut self, event: Result<ChatEvent, BackendError>) -> Vec<Result<ChatEvent, BackendError>> {
        match event {
            Ok(ChatEvent::Text(t)) => {
                let out = self.text.push(&self.mapping, &t);
                if out.is_empty() {
                    Vec::new()
                } else {
                    vec![Ok(ChatEvent::Text(out))]
                }
            }
            Ok(ChatEvent::Chunk(mut c)) => {
                self.chunk(&mut c);
                vec![Ok(ChatEvent::Chunk(c))]
            }
            Ok(ChatEvent::Completion(mut c)) => {
                restore_completion(&self.mapping, &mut c);
                vec![Ok(ChatEvent::Completion(c))]
            }
            // A redacted request is never passed on in its own format (`api::native`), so no answer in
            // one can come back; were one to, its placeholders could not be put back.
            Ok(ChatEvent::Native { .. }) => vec![Err(BackendError::Failed(
                "an answer in the client's own format cannot have its redacted values put back".into(),
            ))],
            Ok(finished @ ChatEvent::Finished { .. }) => {
                let mut out = Vec::with_capacity(2);
                let rest = self.text.finish();
                if !rest.is_empty() {
                    out.push(Ok(ChatEvent::Text(rest)));
                }
                if let Some(c) = self.flush_all() {
                    out.push(Ok(ChatEvent::Chunk(c)));
                }
                out.push(Ok(finished));
                out
            }
            Err(e) => vec![Err(e)],
        }
    }

    /// Restores one streamed chunk in place; a choice that finishes in it gets what was held for it.
    fn chunk(&mut self, c: &mut Value) {
        let Some(choices) = c.get_mut("choices").and_then(Value::as_array_mut) else {
            return;
        };
        for (position, choice) in choices.iter_mut().enumerate() {
            let index = choice
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(position as u64);
            let finished = choice.get("finish_reason").is_some_and(|f| !f.is_null());
            if finished
                && choice.get("delta").is_none_or(Value::is_null)
                && let Some(c) = choice.as_object_mut()
            {
                c.insert("delta".to_owned(), Value::Object(Map::new()));
            }
            let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) else {
                continue;
            };
            for (key, slot) in [("content", Slot::Content), ("refusal", Slot::Refusal)] {
                if let Some(Value::String(s)) = delta.get_mut(key) {
                    *s = self.push(index, slot, s);
                }
            }
            if let Some(calls) = delta.get_mut("tool_calls").and_then(Value::as_array_mut) {
                for (n, call) in calls.iter_mut().enumerate() {
                    let at = call.get("index").and_then(Value::as_u64).unwrap_or(n as u64);
                    let Some(function) = call.get_mut("function").and_then(Value::as_object_mut) else {
                        continue;
                    };
                    if let Some(Value::String(name)) = function.get_mut("name") {
                        *name = self.mapping.restore(name, Escape::None);
                    }
                    if let Some(Value::String(args)) = function.get_mut("arguments") {
                        *args = self.push(index, Slot::Arguments(at), args);
                    }
                }
            }
            if let Some(Value::String(args)) = delta
                .get_mut("function_call")
                .and_then(|f| f.get_mut("arguments"))
            {
                *args = self.push(index, Slot::FunctionCall, args);
            }
            if finished {
                self.flush_into(index, delta);
            }
        }
        if let Value::Object(o) = c {
            let mut shape = o.clone();
            shape.remove("choices");
            self.last = Some(shape);
        }
    }

    fn push(&mut self, index: u64, slot: Slot, piece: &str) -> String {
        self.held
            .entry((index, slot))
            .or_insert_with(|| Held::new(slot.escape()))
            .push(&self.mapping, piece)
    }

    /// Adds what is held for choice `index` to its delta.
    fn flush_into(&mut self, index: u64, delta: &mut Map<String, Value>) {
        let slots: Vec<(u64, Slot)> = self
            .held
            .iter()
            .filter(|((i, _), h)| *i == index && h.is_holding())
            .map(|(k, _)| *k)
            .collect();
        for key in slots {
            let Some(rest) = self.held.get_mut(&key).map(Held::finish) else {
                continue;
            };
            let append = |v: Option<&mut Value>, rest: &str| -> Option<()> {
                let Value::String(s) = v? else { return None };
                s.push_str(rest);
                Some(())
            };
            match key.1 {
                Slot::Content | Slot::Refusal => {
                    let field = if key.1 == Slot::Content {
                        "content"
                    } else {
                        "refusal"
                    };
                    if append(delta.get_mut(field), &rest).is_none() {
                        delta.insert(field.to_owned(), Value::String(rest));
                    }
                }
                Slot::Arguments(at) => {
                    let call = json!({"index": at, "function": {"arguments": rest}});
                    match delta.get_mut("tool_calls").and_then(Value::as_array_mut) {
                        Some(calls) => calls.push(call),
                        None => {
                            delta.insert("tool_calls".to_owned(), Value::Array(vec![call]));
                        }
                    }
                }
                Slot::FunctionCall => {
                    delta.insert("function_call".to_owned(), json!({"arguments": rest}));
                }
            }
        }
    }

    /// A chunk with everything still held, for an answer that ends without finishing its choices.
    fn flush_all(&mut self) -> Option<Value> {
        let indices: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, h)| h.is_holding())
            .map(|((i, _), _)| *i)
            .collect();
        if indices.is_empty() {
            return None;
        }
        let mut choices = Vec::new();
        for index in indices {
            if choices
                .iter()
                .any(|c: &Value| c.get("index").and_then(Value::as_u64) == Some(index))
            {
                continue;
            }
            let mut delta = Map::new();
            self.flush_into(index, &mut delta);
            choices.push(json!({"index": index, "delta": delta, "finish_reason": null}));
        }
        let mut chunk = self.last.clone().unwrap_or_default();
        chunk.insert("choices".to_owned(), Value::Array(choices));
        Some(Value::Object(chunk))
    }
}

/// Restores a whole `chat.completion` in place: every choice's content and refusal, and its tool calls'
/// names and arguments.
fn restore_completion(mapping: &Mapping, c: &mut Value) {
    let Some(choices) = c.get_mut("choices").and_then(Value::as_array_mut) else {
        return;
    };
    let text = |v: Option<&mut Value>, escape: Escape| {
        if let Some(Value::String(s)) = v {
            *s = mapping.restore(s, escape);
        }
    };
    for choice in choices {
        let Some(message) = choice.get_mut("message") else {
            continue;
        };
        text(message.get_mut("content"), Escape::None);
        text(message.get_mut("refusal"), Escape::None);
        if let Some(calls) = message.get_mut("tool_calls").and_then(Value::as_array_mut) {
            for call in calls {
                if let Some(function) = call.get_mut("function") {
                    text(function.get_mut("name"), Escape::None);
                    text(function.get_mut("arguments"), Escape::JsonString);
                }
            }
        }
        if let Some(function) = message.get_mut("function_call") {
            text(function.get_mut("arguments"), Escape::JsonString);
        }
    }
}

#[cfg(test)]
mod tests;
