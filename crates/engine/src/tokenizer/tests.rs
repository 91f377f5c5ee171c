use super::*;
use crate::testing;

fn tiny() -> Tokenizer {
    tiny_with(PreTokenizer::SmolLm)
}

/// The tiny test vocabulary with a given pre-tokenizer.
fn tiny_with(pre: PreTokenizer) -> Tokenizer {
    let (tokens, token_types) = testing::vocabulary();
    let merges = testing::MERGES.iter().map(|m| m.to_string()).collect();
    let vocab = Vocabulary {
        tokens,
        token_types,
        merges,
        ..Vocabulary::default()
    };
    Tokenizer::new(&vocab, pre).expect("tiny tokenizer")
}

fn ids(t: &Tokenizer, texts: &[&str]) -> Vec<u32> {
    texts
        .iter()
        .map(|s| t.token_id(s).unwrap_or_else(|| panic!("no token {s:?}")))
        .collect()
}

#[test]
fn merges_apply_by_rank() {
    let t = tiny();
    assert_eq!(t.encode("the"), ids(&t, &["t", "he"]));
    assert_eq!(t.encode(" the"), ids(&t, &["Ġthe"]));
    assert_eq!(t.encode(" then"), ids(&t, &["Ġthe", "n"]));
    assert_eq!(t.encode("inner"), ids(&t, &["in", "n", "er"]));
}

#[test]
fn smollm_splits_every_digit_even_with_a_merge_for_them() {
    let t = tiny();
    // The vocabulary merges "1 2", but the pre-tokenizer never lets two digits meet.
    assert_eq!(t.encode("12"), ids(&t, &["1", "2"]));
    assert_eq!(t.encode("a12b"), ids(&t, &["a", "1", "2", "b"]));
    let gpt2 = tiny_with(PreTokenizer::Gpt2);
    assert_eq!(gpt2.encode("12"), ids(&gpt2, &["12"]));
}

#[test]
fn a_whitespace_run_gives_its_last_space_to_the_next_word() {
    let t = tiny();
    // "  b" is " " then " b"; without the look-ahead rule it would be "  " (merged to "ĠĠ") then "b".
    assert_eq!(t.encode("a  b"), ids(&t, &["a", "Ġ", "Ġ", "b"]));
    // At the end of the text the whole run stays together.
    assert_eq!(t.encode("a   "), ids(&t, &["a", "ĠĠ", "Ġ"]));
    // Before a newline-free non-space the rule applies to any whitespace.
    assert_eq!(t.encode("\n\nx"), ids(&t, &["Ċ", "Ċ", "x"]));
}

#[test]
fn special_tokens_in_text_become_their_ids() {
    let t = tiny();
    let got = t.encode("<|im_start|>user\nhi<|im_end|>");
    let mut want = vec![1];
    want.extend(ids(&t, &["u", "s", "er", "Ċ", "h", "i"]));
    want.push(2);
    assert_eq!(got, want);
    assert!(t.is_special(2) && !t.is_special(got[1]));
}

#[test]
fn decode_inverts_encode_on_any_text() {
    let t = tiny();
    for s in [
        "",
        "plain ascii",
        "Ünïcödé ✓",
        "東京は日本の首都です",
        "emoji 🦀🚀",
        "tabs\tand\r\nCRLF",
        "  lead",
        "x<|im_end|>",
    ] {
        let decoded = t.decode(&t.encode(s));
        assert_eq!(decoded, s.replace("<|im_end|>", ""), "round trip of {s:?}");
    }
}

#[test]
fn long_single_word_is_linearithmic() {
    let t = tiny();
    let text = "a".repeat(200_000);
    let started = std::time::Instant::now();
    let out = t.encode(&text);
    assert_eq!(out.len(), 200_000);
    // Quadratic merging would take minutes here.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn bytes_without_a_token_are_dropped_without_breaking_merges_around_them() {
    let (mut tokens, token_types) = testing::vocabulary();
    // Take the token for byte 0x04 out of the vocabulary.
    let gone = tokens
        .iter()
        .position(|t| *t == encode_bytes_as_token_text(&[4]))
        .expect("byte token");
    tokens[gone] = "<unused>".into();
    let merges = testing::MERGES.iter().map(|m| m.to_string()).collect();
    let t = Tokenizer::new(
        &Vocabulary {
            tokens,
            token_types,
            merges,
            ..Vocabulary::default()
        },
        PreTokenizer::SmolLm,
    )
    .expect("tokenizer");
    assert_eq!(t.encode("he\u{4}he"), ids(&t, &["he", "he"]));
    assert_eq!(t.encode("\u{4}"), Vec::<u32>::new());
}

#[test]
fn a_vocabulary_without_byte_tokens_is_refused() {
    let vocab = Vocabulary {
        tokens: vec!["a".into(), "b".into()],
        token_types: vec![],
        merges: vec![],
        ..Vocabulary::default()
    };
    let err = Tokenizer::new(&vocab, PreTokenizer::Gpt2).expect_err("refused");
    assert!(err.to_string().contains("only 2 of 256 bytes"), "{err}");
}

#[test]
fn a_merge_naming_an_unknown_token_is_refused() {
    let (tokens, token_types) = testing::vocabulary();
    let vocab = Vocabulary {
        tokens,
        token_types,
        merges: vec!["x y".into()],
        ..Vocabulary::default()
    };
    let err = Tokenizer::new(&vocab, PreTokenizer::Gpt2).expect_err("refused");
    assert!(err.to_string().contains("merge 0"), "{err}");
}

#[test]
fn llama3_keeps_newline_runs_whole() {
    let re = Regex::new(LLAMA3_PATTERN).expect("pattern");
    assert_eq!(split_pieces(&re, "a\n\nb", true), vec!["a", "\n\n", "b"]);
    assert_eq!(split_pieces(&re, "a   b", true), vec!["a", "  ", " b"]);
    assert_eq!(split_pieces(&re, "12345", true), vec!["123", "45"]);
}

#[derive(serde::Deserialize)]
struct SpmFixture {
    tokens: Vec<String>,
    scores: Vec<f32>,
    token_types: Vec<i32>,
    cases: Vec<SpmCase>,
}

#[derive(serde::Deserialize)]
struct SpmCase {
    text: String,
    ids: Vec<u32>,
}

fn spm_fixture() -> (SpmFixture, Tokenizer) {
    let fixture: SpmFixture =
        serde_json::from_str(include_str!("../../../../tests/fixtures/tiny-spm-tokens.json"))
            .expect("fixture");
    let vocab = Vocabulary {
        model: TokenizerModel::Spm,
        scores: fixture.scores.clone(),
        add_space_prefix: true,
        tokens: fixture.tokens.clone(),
        token_types: fixture.token_types.clone(),
        merges: vec![],
    };
    let tokenizer = Tokenizer::new(&vocab, PreTokenizer::Gpt2).expect("spm tokenizer");
    (fixture, tokenizer)
}

#[test]
fn sentencepiece_ids_match_llama_cpp() {
    let (fixture, t) = spm_fixture();
    assert!(fixture.cases.len() >= 10);
    for case in &fixture.cases {
        let got = t.encode(&case.text);
        let names = |ids: &[u32]| {
            ids.iter()
                .map(|i| fixture.tokens[*i as usize].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&got), names(&case.ids), "{:?}", case.text);
    }
}

#[test]
fn sentencepiece_decodes_spaces_and_bytes() {
    let (_, t) = spm_fixture();
    for text in [
        "hello world",
        "東京 and 大阪",
        "emoji 🦀 falls back",
        "tabs\tand\nnewlines",
    ] {
        let decoded = t.decode(&t.encode(text));
        // The space SentencePiece puts in front comes back as a leading space.
        assert_eq!(decoded, format!(" {text}"), "{text:?}");
    }
}
