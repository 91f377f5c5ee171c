//! SentencePiece-style BPE (`tokenizer.ggml.model = "llama"`: Llama 2, TinyLlama, Mistral 7B, ...), as
//! llama.cpp runs it: spaces become `▁`, a space is put in front of the text and after every special
//! token, adjacent pieces are merged by the score of the token they would form (highest first), and text
//! with no token falls back to `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// The marker SentencePiece uses for a space.
pub const SPACE: char = '\u{2581}';

/// llama.cpp's `LLAMA_TOKEN_TYPE_BYTE`.
pub const TOKEN_TYPE_BYTE: i32 = 6;

#[derive(Debug)]
pub struct Spm {
    by_text: HashMap<String, u32>,
    scores: Vec<f32>,
    /// Token id of `<0xXX>` for each byte, where the vocabulary has it.
    byte_tokens: [Option<u32>; 256],
    pub add_space_prefix: bool,
}

/// A candidate merge of two adjacent symbols.
#[derive(Debug, PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl Eq for Bigram {}

impl Ord for Bigram {
    /// Highest score first; on ties, the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Spm {
    pub fn new(tokens: &[String], scores: &[f32], token_types: &[i32], add_space_prefix: bool) -> Self {
        let mut by_text = HashMap::with_capacity(tokens.len());
        let mut byte_tokens = [None; 256];
        for (id, text) in tokens.iter().enumerate() {
            let id = id as u32;
            by_text.entry(text.clone()).or_insert(id);
            if token_types.get(id as usize) == Some(&TOKEN_TYPE_BYTE)
                && let Some(hex) = text.strip_prefix("<0x").and_then(|t| t.strip_suffix('>'))
                && let Ok(b) = u8::from_str_radix(hex, 16)
            {
                byte_tokens[b as usize] = Some(id);
            }
        }
        let mut scores = scores.to_vec();
        scores.resize(tokens.len(), 0.0);
        Self {
            by_text,
            scores,
            byte_tokens,
            add_space_prefix,
        }
    }

    /// Raw bytes of a token's text: `▁` is a space, `<0xXX>` byte tokens are their byte.
    pub fn token_bytes(text: &str, token_type: i32) -> Vec<u8> {
        if token_type == TOKEN_TYPE_BYTE
            && let Some(b) = text
                .strip_prefix("<0x")
                .and_then(|t| t.strip_suffix('>'))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            return vec![b];
        }
        text.replace(SPACE, " ").into_bytes()
    }

    /// Encodes a fragment of plain text (no special tokens). `after_special` is whether the fragment
    /// starts the text or follows a special token, where SentencePiece puts a space.
    pub fn encode(&self, text: &str, after_special: bool, out: &mut Vec<u32>) {
        let mut escaped = String::with_capacity(text.len() + 3);
        if self.add_space_prefix && after_special {
            escaped.push(SPACE);
        }
        escaped.extend(text.chars().map(|c| if c == ' ' { SPACE } else { c }));
        if escaped.is_empty() {
            return;
        }
        let text = escaped.as_str();
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (i, (start, c)) in text.char_indices().enumerate() {
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: Some(i + 1),
            });
        }
        if let Some(last) = symbols.last_mut() {
            last.next = None;
        }
        let mut queue = BinaryHeap::new();
        let mut merges: HashMap<String, (usize, usize)> = HashMap::new();
        let try_add = |queue: &mut BinaryHeap<Bigram>,
                       merges: &mut HashMap<String, (usize, usize)>,
                       symbols: &[Symbol],
                       left: Option<usize>,
                       right: Option<usize>| {
            let (Some(l), Some(r)) = (left, right) else { return };
            let start = symbols[l].start;
            let len = symbols[l].len + symbols[r].len;
            let piece = &text[start..start + len];
            if let Some(id) = self.by_text.get(piece) {
                queue.push(Bigram {
                    score: self.scores[*id as usize],
                    left: l,
                    right: r,
                    len,
                });
                merges.insert(piece.to_owned(), (l, r));
            }
        };
        for i in 1..symbols.len() {
            try_add(&mut queue, &mut merges, &symbols, Some(i - 1), Some(i));
        }
        while let Some(bigram) = queue.pop() {
            let (l, r) = (bigram.left, bigram.right);
            // Skip pairs that an earlier merge already changed.
            if symbols[l].len == 0 || symbols[r].len == 0 || symbols[l].len + symbols[r].len != bigram.len {
                continue;
            }
            symbols[l].len += symbols[r].len;
            symbols[r].len = 0;
            symbols[l].next = symbols[r].next;
            if let Some(n) = symbols[r].next {
                symbols[n].prev = Some(l);
            }
            try_add(&mut queue, &mut merges, &symbols, symbols[l].prev, Some(l));
            try_add(&mut queue, &mut merges, &symbols, Some(l), symbols[l].next);
        }
        let mut i = Some(0);
        while let Some(s) = i {
            let symbol = symbols[s];
            self.resegment(text, &symbols, &merges, symbol.start, symbol.len, out);
            i = symbol.next;
        }
    }

    /// Emits the token for `text[start..start + len]`, or the pieces it was merged from, or its bytes.
    fn resegment(
        &self,
        text: &str,
        symbols: &[Symbol],
        merges: &HashMap<String, (usize, usize)>,
        start: usize,
        len: usize,
        out: &mut Vec<u32>,
    ) {
        let piece = &text[start..start + len];
        if let Some(id) = self.by_text.get(piece) {
            out.push(*id);
            return;
        }
        if let Some((l, r)) = merges.get(piece) {
            let left_len = symbols[*l].start.abs_diff(symbols[*r].start);
            self.resegment(text, symbols, merges, start, left_len, out);
            self.resegment(text, symbols, merges, start + left_len, len - left_len, out);
            return;
        }
        for b in piece.bytes() {
            if let Some(id) = self.byte_tokens[b as usize] {
                out.push(id);
            }
        }
    }
}
