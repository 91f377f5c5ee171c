//! Byte-level BPE tokenizer built from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! candle's own GGUF tokenizer does not know the pre-tokenizers that models declare in
//! `tokenizer.ggml.pre` (SmolLM2 declares `smollm`: every digit on its own, then GPT-2 byte-level splitting
//! with no prefix space), so it returns different ids from the model's reference tokenizer. This one
//! follows the reference: control and user-defined tokens are matched first, the rest is pre-tokenized by
//! the declared rule, and each piece is merged by BPE rank in O(n log n).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use regex::Regex;

use crate::error::LoadError;

mod spm;

use spm::Spm;

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Placeholder ids for bytes the vocabulary has no token for: `MISSING_BYTE_BASE + byte`.
const MISSING_BYTE_BASE: u32 = u32::MAX - 256;

/// The GPT-2 style split, without the `\s+(?!\S)` alternative: the regex crate has no look-around, so
/// [`split_pieces`] gives a whitespace run's last character back to the next piece, which is what that
/// alternative does.
const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

/// Llama 3 (`llama-bpe`), likewise without the look-ahead alternative.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+";

/// How text is cut into pieces before BPE, from `tokenizer.ggml.pre`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// GPT-2's byte-level split (`gpt2`, `default`).
    Gpt2,
    /// Every digit alone, then GPT-2's split (`smollm`).
    SmolLm,
    /// Llama 3's split (`llama-bpe`, `llama3`).
    Llama3,
}

impl PreTokenizer {
    /// The pre-tokenizer a GGUF declares. Unknown names fall back to GPT-2's split, with a warning.
    pub fn from_gguf_name(name: Option<&str>) -> Self {
        match name {
            Some("smollm") => Self::SmolLm,
            Some("llama-bpe" | "llama3") => Self::Llama3,
            None | Some("gpt2" | "default") => Self::Gpt2,
            Some(other) => {
                tracing::warn!(
                    pre = other,
                    "unknown tokenizer.ggml.pre; using GPT-2's pre-tokenizer"
                );
                Self::Gpt2
            }
        }
    }

    fn pattern(self) -> &'static str {
        match self {
            Self::Gpt2 | Self::SmolLm => GPT2_PATTERN,
            Self::Llama3 => LLAMA3_PATTERN,
        }
    }
}

/// Which tokenizer algorithm a vocabulary is for (`tokenizer.ggml.model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenizerModel {
    /// Byte-level BPE with merges (`gpt2`): SmolLM, Llama 3, Qwen, ...
    #[default]
    Gpt2,
    /// SentencePiece-style BPE with scores (`llama`): Llama 2, TinyLlama, Mistral 7B, ...
    Spm,
}

/// The vocabulary of a model, as stored in GGUF metadata.
#[derive(Debug, Clone, Default)]
pub struct Vocabulary {
    pub model: TokenizerModel,
    /// Scores of the tokens (SentencePiece merges by them).
    pub scores: Vec<f32>,
    /// Whether SentencePiece puts a space before the text (`tokenizer.ggml.add_space_prefix`).
    pub add_space_prefix: bool,
    /// Token strings, in id order, in the byte-level encoding (`Ġ` for a space, ...).
    pub tokens: Vec<String>,
    /// llama.cpp token types, one per token; empty means every token is normal.
    pub token_types: Vec<i32>,
    /// Merges as `"left right"`, highest priority first.
    pub merges: Vec<String>,
}

/// A tokenizer for one model. Cheap to share behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Tokenizer {
    pre: PreTokenizer,
    split: Regex,
    /// Matches any special (control or user-defined) token, longest first.
    specials: Option<Regex>,
    special_ids: HashMap<String, u32>,
    /// Token id of each byte value.
    byte_ids: [u32; 256],
    /// `(left, right)` -> `(rank, merged id)`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Raw bytes of every token, for decoding.
    token_bytes: Vec<Vec<u8>>,
    /// Whether a token is special (control or user-defined): never produced by BPE, skipped in output.
    is_special: Vec<bool>,
    by_text: HashMap<String, u32>,
    /// The SentencePiece encoder, for `llama` vocabularies.
    spm: Option<Spm>,
}

impl Tokenizer {
    /// Builds the tokenizer; fails when the vocabulary cannot encode every byte or a merge names an unknown
    /// token.
    pub fn new(vocab: &Vocabulary, pre: PreTokenizer) -> Result<Self, LoadError> {
        let decoder = byte_decoder();
        let n = vocab.tokens.len();
        if n == 0 {
            return Err(LoadError::Tokenizer("the vocabulary is empty".into()));
        }
        let mut by_text = HashMap::with_capacity(n);
        let mut token_bytes = Vec::with_capacity(n);
        let mut is_special = Vec::with_capacity(n);
        let mut special_ids = HashMap::new();
        for (id, text) in vocab.tokens.iter().enumerate() {
            let id = u32::try_from(id).map_err(|_| LoadError::Tokenizer("vocabulary too large".into()))?;
            let kind = vocab.token_types.get(id as usize).copied().unwrap_or(1);
            let special = kind == TOKEN_TYPE_CONTROL || kind == TOKEN_TYPE_USER_DEFINED;
            let bytes = if special {
                text.as_bytes().to_vec()
            } else if vocab.model == TokenizerModel::Spm {
                Spm::token_bytes(text, kind)
            } else {
                let mut out = Vec::with_capacity(text.len());
                for c in text.chars() {
                    match decoder.get(&c) {
                        Some(b) => out.push(*b),
                        None => {
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                }
                out
            };
            if special && !text.is_empty() {
                special_ids.insert(text.clone(), id);
            }
            // The first token with a given text wins, as in the reference implementations.
            by_text.entry(text.clone()).or_insert(id);
            token_bytes.push(bytes);
            is_special.push(special);
        }

        // Some vocabularies lack a few bytes that never occur in their training text (SmolLM2 has no token
        // for 0x04, 0xC0, 0xFF and others). Such a byte gets a placeholder id that takes part in no merge and
        // is dropped from the output, as the reference tokenizers do.
        let spm = (vocab.model == TokenizerModel::Spm).then(|| {
            Spm::new(
                &vocab.tokens,
                &vocab.scores,
                &vocab.token_types,
                vocab.add_space_prefix,
            )
        });
        let mut byte_ids = [u32::MAX; 256];
        let mut found = if spm.is_some() { 256 } else { 0 };
        for (b, c) in byte_encoder().iter().enumerate() {
            match by_text.get(&c.to_string()) {
                Some(id) => {
                    byte_ids[b] = *id;
                    found += 1;
                }
                None => byte_ids[b] = MISSING_BYTE_BASE + b as u32,
            }
        }
        if found < 128 {
            return Err(LoadError::Tokenizer(format!(
                "the vocabulary has tokens for only {found} of 256 bytes; only byte-level BPE vocabularies are supported"
            )));
        }

        let mut merges = HashMap::with_capacity(vocab.merges.len());
        let bpe_merges: &[String] = if spm.is_some() { &[] } else { &vocab.merges };
        for (rank, merge) in bpe_merges.iter().enumerate() {
            let Some((left, right)) = merge.split_once(' ') else {
                return Err(LoadError::Tokenizer(format!(
                    "merge {rank} ({merge:?}) is not \"left right\""
                )));
            };
            let lookup = |t: &str| {
                by_text.get(t).copied().ok_or_else(|| {
                    LoadError::Tokenizer(format!("merge {rank} ({merge:?}) names unknown token {t:?}"))
                })
            };
            let merged = lookup(&format!("{left}{right}"))?;
            let rank = u32::try_from(rank).map_err(|_| LoadError::Tokenizer("too many merges".into()))?;
            merges
                .entry((lookup(left)?, lookup(right)?))
                .or_insert((rank, merged));
        }

        let specials = if special_ids.is_empty() {
            None
        } else {
            let mut texts: Vec<&String> = special_ids.keys().collect();
            texts.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
            let alternation = texts
                .iter()
                .map(|t| regex::escape(t))
                .collect::<Vec<_>>()
                .join("|");
            Some(Regex::new(&alternation).map_err(|e| LoadError::Tokenizer(e.to_string()))?)
        };
        let split = Regex::new(pre.pattern()).map_err(|e| LoadError::Tokenizer(e.to_string()))?;

        Ok(Self {
            pre,
            split,
            specials,
            special_ids,
            byte_ids,
            merges,
            token_bytes,
            is_special,
            by_text,
            spm,
        })
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// The id of a token given by its stored text (`"<|im_end|>"`, `"Ġthe"`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.by_text.get(text).copied()
    }

    /// Whether `id` is a control or user-defined token.
    pub fn is_special(&self, id: u32) -> bool {
        self.is_special.get(id as usize).copied().unwrap_or(false)
    }

    /// Encodes text. Special tokens written in the text (`<|im_start|>`) become their ids, as the reference
    /// tokenizers do when rendering a chat template.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 1);
        let mut start = 0;
        // SentencePiece puts a space at the start of the text and after each special token.
        let mut after_special = true;
        if let Some(specials) = &self.specials {
            for m in specials.find_iter(text) {
                if m.start() > start {
                    self.encode_fragment(&text[start..m.start()], after_special, &mut ids);
                }
                if let Some(id) = self.special_ids.get(m.as_str()) {
                    ids.push(*id);
                }
                after_special = true;
                start = m.end();
            }
        }
        if start < text.len() {
            self.encode_fragment(&text[start..], after_special, &mut ids);
        }
        ids
    }

    /// Raw bytes of a token; empty for ids out of range.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Decodes ids to text, skipping special tokens; invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for id in ids {
            if !self.is_special(*id) {
                bytes.extend_from_slice(self.token_bytes(*id));
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn encode_fragment(&self, text: &str, after_special: bool, out: &mut Vec<u32>) {
        match &self.spm {
            Some(spm) => spm.encode(text, after_special, out),
            None => self.encode_ordinary(text, out),
        }
    }

    fn encode_ordinary(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        match self.pre {
            PreTokenizer::SmolLm => {
                // Digits pre-tokenizer with `individual_digits`: each numeric character is a piece of its own.
                let mut run_start = 0;
                for (i, c) in text.char_indices() {
                    if c.is_numeric() {
                        self.encode_piece(&text[run_start..i], out);
                        self.encode_piece(&text[i..i + c.len_utf8()], out);
                        run_start = i + c.len_utf8();
                    }
                }
                self.encode_piece(&text[run_start..], out);
            }
            PreTokenizer::Gpt2 | PreTokenizer::Llama3 => self.encode_piece(text, out),
        }
    }

    /// Splits `text` with the pre-tokenizer's pattern and runs BPE on every piece.
    fn encode_piece(&self, text: &str, out: &mut Vec<u32>) {
        let newline_branch = self.pre == PreTokenizer::Llama3;
        for piece in split_pieces(&self.split, text, newline_branch) {
            self.bpe(piece.as_bytes(), out);
        }
    }

    /// Byte-pair merging by rank over a doubly linked list of symbols, with a heap of candidate pairs.
    fn bpe(&self, bytes: &[u8], out: &mut Vec<u32>) {
        match bytes.len() {
            0 => return,
            1 => {
                let id = self.byte_ids[bytes[0] as usize];
                if id < MISSING_BYTE_BASE {
                    out.push(id);
                }
                return;
            }
            _ => {}
        }
        let n = bytes.len();
        let mut ids: Vec<u32> = bytes.iter().map(|b| self.byte_ids[*b as usize]).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut next: Vec<usize> = (1..=n).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<_>, ids: &[u32], left: usize, right: usize| {
            if let Some((rank, merged)) = self.merges.get(&(ids[left], ids[right])) {
                heap.push(Reverse((*rank, left, ids[left], ids[right], *merged)));
            }
        };
        for i in 0..n - 1 {
            push(&mut heap, &ids, i, i + 1);
        }
        while let Some(Reverse((_rank, left, left_id, right_id, merged))) = heap.pop() {
            let right = next[left];
            // Skip candidates made stale by an earlier merge.
            if !alive[left] || right >= n || ids[left] != left_id || ids[right] != right_id {
                continue;
            }
            ids[left] = merged;
            alive[right] = false;
            next[left] = next[right];
            if next[right] < n {
                prev[next[right]] = left;
            }
            if prev[left] < n {
                push(&mut heap, &ids, prev[left], left);
            }
            if next[left] < n {
                push(&mut heap, &ids, left, next[left]);
            }
        }
        let mut i = 0;
        while i < n {
            if ids[i] < MISSING_BYTE_BASE {
                out.push(ids[i]);
            }
            i = next[i];
        }
    }
}

/// Cuts `text` into pre-tokenizer pieces. A whitespace run followed by more text gives its last character
/// to the next piece (`"  x"` is `" "`, `" x"`), which is what the reference pattern's `\s+(?!\S)` does.
/// With `newline_branch` (Llama 3), a run holding a line break came from the `\s*[\r\n]+` branch, which
/// the look-ahead never touches.
fn split_pieces<'t>(split: &Regex, text: &'t str, newline_branch: bool) -> Vec<&'t str> {
    let mut pieces = Vec::new();
    let mut pos = 0;
    while pos < text.len() {
        let Some(m) = split.find_at(text, pos) else {
            pieces.push(&text[pos..]);
            break;
        };
        if m.start() > pos {
            // Cannot happen with the patterns above (every character matches some branch), but never drop text.
            pieces.push(&text[pos..m.start()]);
        }
        let mut end = m.end();
        let piece = m.as_str();
        let from_newline_branch = newline_branch && piece.contains(['\r', '\n']);
        if end < text.len() && !from_newline_branch && piece.chars().all(char::is_whitespace) {
            let last_len = piece.chars().next_back().map_or(0, char::len_utf8);
            if piece.len() > last_len {
                let next_is_space = text[end..].chars().next().is_some_and(char::is_whitespace);
                if !next_is_space {
                    end -= last_len;
                }
            }
        }
        pieces.push(&text[m.start()..end]);
        pos = end;
    }
    pieces
}

/// GPT-2's reversible map from bytes to printable characters.
fn byte_encoder() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(256 + extra).unwrap_or('\u{FFFD}');
            extra += 1;
            c
        };
    }
    table
}

fn byte_decoder() -> HashMap<char, u8> {
    byte_encoder()
        .iter()
        .enumerate()
        .map(|(b, c)| (*c, b as u8))
        .collect()
}

/// The byte-level encoding of raw bytes, as vocabulary strings store them (for building vocabularies).
pub fn encode_bytes_as_token_text(bytes: &[u8]) -> String {
    let table = byte_encoder();
    bytes.iter().map(|b| table[*b as usize]).collect()
}

#[cfg(test)]
mod tests;
