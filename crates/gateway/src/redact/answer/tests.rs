use futures_util::StreamExt as _;
use serde_json::json;
use sluice_sensitivity::{Finding, Kind, Level};

use super::*;
use crate::backend::Usage;
use crate::redact::redact;

fn finding(kind: Kind, text: &str, part: &str) -> Finding {
    let start = text.find(part).unwrap_or_default();
    Finding {
        kind,
        level: Level::Confidential,
        index: 0,
        range: start..start + part.len(),
        rule: None,
    }
}

const TEXT: &str = "Remind Maria Gonzalez (maria.g@northwind.example) about \"invoice\" 88213.";

/// The redacted text and its mapping.
fn redacted() -> (String, Arc<Mapping>) {
    let r = redact(
        &[TEXT],
        &[
            finding(Kind::PersonName, TEXT, "Maria Gonzalez"),
            finding(Kind::Email, TEXT, "maria.g@northwind.example"),
        ],
    );
    assert_eq!(
        r.texts[0],
        "Remind [PERSON_1] ([EMAIL_1]) about \"invoice\" 88213."
    );
    (r.texts[0].clone(), Arc::new(r.mapping))
}

fn finished() -> ChatEvent {
    ChatEvent::Finished {
        finish_reason: "stop".into(),
        usage: Usage {
            prompt_tokens: 11,
            completion_tokens: 7,
        },
    }
}

async fn run(events: Vec<ChatEvent>, mapping: Arc<Mapping>) -> Vec<ChatEvent> {
    let stream: EventStream = Box::pin(futures_util::stream::iter(events.into_iter().map(Ok)));
    restore(stream, mapping)
        .map(|e| e.expect("no error"))
        .collect()
        .await
}

fn chunk(delta: Value, finish: Option<&str>) -> ChatEvent {
    ChatEvent::Chunk(json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }))
}

/// The content a client would put together from the chunks, and the arguments of tool call 0.
fn assembled(events: &[ChatEvent]) -> (String, String) {
    let (mut content, mut args) = (String::new(), String::new());
    for e in events {
        if let ChatEvent::Chunk(c) = e {
            for choice in c["choices"].as_array().unwrap() {
                let d = &choice["delta"];
                content.push_str(d["content"].as_str().unwrap_or_default());
                for call in d["tool_calls"].as_array().into_iter().flatten() {
                    args.push_str(call["function"]["arguments"].as_str().unwrap_or_default());
                }
            }
        }
    }
    (content, args)
}

#[tokio::test]
async fn streamed_content_split_at_every_boundary_is_restored_and_the_usage_kept() {
    let (sent, mapping) = redacted();
    for cut in 0..=sent.len() {
        for cut2 in cut..=sent.len() {
            if !sent.is_char_boundary(cut) || !sent.is_char_boundary(cut2) {
                continue;
            }
            let events = vec![
                chunk(json!({"role": "assistant", "content": ""}), None),
                chunk(json!({"content": &sent[..cut]}), None),
                chunk(json!({"content": &sent[cut..cut2]}), None),
                chunk(json!({"content": &sent[cut2..]}), None),
                chunk(json!({}), Some("stop")),
                finished(),
            ];
            let out = run(events, mapping.clone()).await;
            assert_eq!(assembled(&out).0, TEXT, "cut at {cut} and {cut2}");
            assert_eq!(out.last(), Some(&finished()));
            // One event out for each in: nothing is delayed by a chunk or more.
            assert_eq!(out.len(), 6);
        }
    }
}

#[tokio::test]
async fn a_worker_text_is_restored_and_a_held_tail_goes_out_before_the_end() {
    let (sent, mapping) = redacted();
    let pieces: Vec<ChatEvent> = sent
        .as_bytes()
        .chunks(3)
        .map(|b| ChatEvent::Text(String::from_utf8(b.to_vec()).unwrap()))
        .chain([ChatEvent::Text(" [PERS".into()), finished()])
        .collect();
    let out = run(pieces, mapping).await;
    let text: String = out
        .iter()
        .filter_map(|e| match e {
            ChatEvent::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    // An unfinished placeholder at the end was none: it goes out as it came.
    assert_eq!(text, format!("{TEXT} [PERS"));
    assert_eq!(out.last(), Some(&finished()));
}

#[tokio::test]
async fn tool_call_arguments_are_restored_json_escaped_across_chunks() {
    let text = "Mail \"Bo\" O'Neil <bo@example.com>";
    let r = redact(
        &[text],
        &[
            finding(Kind::PersonName, text, "\"Bo\" O'Neil"),
            finding(Kind::Email, text, "bo@example.com"),
        ],
    );
    let mapping = Arc::new(r.mapping);
    let args = r#"{"to":"[PERSON_1]","address":"[EMAIL_1]"}"#;
    let mut events = vec![chunk(
        json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "send", "arguments": ""}}]}),
        None,
    )];
    for piece in args.as_bytes().chunks(4) {
        events.push(chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": std::str::from_utf8(piece).unwrap()}}]}),
            None,
        ));
    }
    events.push(chunk(json!({}), Some("tool_calls")));
    events.push(finished());
    let out = run(events, mapping.clone()).await;
    let restored: Value = serde_json::from_str(&assembled(&out).1).unwrap();
    assert_eq!(
        restored,
        json!({"to": "\"Bo\" O'Neil", "address": "bo@example.com"})
    );

    // A whole completion: content, and each tool call's arguments.
    let completion = json!({"id": "c", "object": "chat.completion", "choices": [{"index": 0, "message": {
        "role": "assistant", "content": "Sent to [PERSON_1].",
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "send", "arguments": args}}]},
        "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}});
    let out = run(vec![ChatEvent::Completion(completion), finished()], mapping).await;
    let ChatEvent::Completion(c) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(c["choices"][0]["message"]["content"], "Sent to \"Bo\" O'Neil.");
    let args: Value = serde_json::from_str(
        c["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(args["to"], "\"Bo\" O'Neil");
    assert_eq!(c["usage"]["total_tokens"], 7);
}

#[tokio::test]
async fn what_is_held_when_a_stream_ends_unfinished_goes_out_in_a_chunk_before_the_end() {
    let (_, mapping) = redacted();
    let events = vec![
        chunk(json!({"content": "Dear [PERSON_1"}), None),
        // The stream ends with no finishing chunk: the held tail is no placeholder after all.
        finished(),
    ];
    let out = run(events, mapping).await;
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(assembled(&out).0, "Dear [PERSON_1");
    let ChatEvent::Chunk(flush) = &out[1] else {
        panic!("{out:?}")
    };
    assert_eq!(flush["id"], "chatcmpl-1");
    assert_eq!(flush["model"], "gpt-4o-mini");
}

#[tokio::test]
async fn altered_or_invented_placeholders_are_left_as_they_are() {
    let (_, mapping) = redacted();
    let text = "[PERSON_2] and [person_1] and [PERSON_1 ] and [EMAIL_1]";
    let out = run(vec![ChatEvent::Text(text.into()), finished()], mapping).await;
    let ChatEvent::Text(t) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(
        t,
        "[PERSON_2] and [person_1] and [PERSON_1 ] and maria.g@northwind.example"
    );
}

#[tokio::test]
async fn a_choice_that_finishes_without_a_delta_gets_what_was_held() {
    let (_, mapping) = redacted();
    let finish = ChatEvent::Chunk(json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop"}],
    }));
    let events = vec![
        chunk(json!({"content": "Dear [PERSON_1"}), None),
        finish,
        finished(),
    ];
    let out = run(events, mapping).await;
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(assembled(&out).0, "Dear [PERSON_1");
    let ChatEvent::Chunk(last) = &out[1] else {
        panic!("{out:?}")
    };
    assert_eq!(last["choices"][0]["delta"]["content"], "[PERSON_1");
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
}
