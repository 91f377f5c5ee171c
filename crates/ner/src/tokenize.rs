//! Text to the model's word pieces, each with the byte range of the original text it comes from (the
//! model's own `tokenizer.json`: BERT normalisation with lower case and accents stripped, WordPiece), and
//! the windows a long sequence is tagged in: at most [`crate::model::MAX_TOKENS`] less `[CLS]` and
//! `[SEP]`, overlapping, so that no text is cut off and an entity on a window's edge is whole in the next.
//! Pure: no IO (the caller reads the file).

use std::ops::Range;

/// One word piece: its id, and the bytes of the original text it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub id: u32,
    pub start: usize,
    pub end: usize,
}

/// Why text could not be split.
#[derive(Debug, thiserror::Error)]
#[error("tokenizer: {0}")]
pub struct TokenizeError(String);

/// The model's tokenizer.
pub struct WordPieces {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for WordPieces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WordPieces").finish_non_exhaustive()
    }
}

impl WordPieces {
    /// Reads a `tokenizer.json`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, TokenizeError> {
        tokenizers::Tokenizer::from_bytes(bytes)
            .map(|inner| Self { inner })
            .map_err(|e| TokenizeError(e.to_string()))
    }

    /// The id of a token of the vocabulary (`[CLS]`, `[SEP]`).
    pub fn id_of(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The pieces of `text`, without `[CLS]` and `[SEP]`.
    pub fn pieces(&self, text: &str) -> Result<Vec<Piece>, TokenizeError> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizeError(e.to_string()))?;
        Ok(encoding
            .get_ids()
            .iter()
            .zip(encoding.get_offsets())
            .map(|(&id, &(start, end))| Piece { id, start, end })
            .collect())
    }
}

/// Windows over `n` pieces: each at most `width` long, each starting `width - overlap` after the one
/// before, the last ending at `n`. Every piece is in a window, and any run of at most `overlap + 1`
/// pieces lies whole in one of them.
///
/// `overlap` must be below `width`; it is lowered to `width - 1` otherwise.
pub fn windows(n: usize, width: usize, overlap: usize) -> Vec<Range<usize>> {
    let width = width.max(1);
    let step = width - overlap.min(width - 1);
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let end = (start + width).min(n);
        out.push(start..end);
        if end == n {
            break;
        }
        start += step;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::windows;

    #[test]
    fn windows_cover_everything_and_every_short_run_lies_whole_in_one() {
        assert!(windows(0, 510, 64).is_empty());
        assert_eq!(windows(10, 510, 64), vec![(0..10)]);
        assert_eq!(windows(510, 510, 64), vec![(0..510)]);
        assert_eq!(windows(511, 510, 64), [0..510, 446..511]);
        for (n, width, overlap) in [
            (1_000, 510, 64),
            (5_003, 510, 64),
            (37, 8, 3),
            (9, 4, 0),
            (10, 3, 7),
        ] {
            let w = windows(n, width, overlap);
            let overlap = overlap.min(width - 1);
            assert!(w.iter().all(|r| r.len() <= width && !r.is_empty()), "{w:?}");
            assert_eq!(w.first().map(|r| r.start), Some(0));
            assert_eq!(w.last().map(|r| r.end), Some(n));
            for pair in w.windows(2) {
                assert!(
                    pair[1].start <= pair[0].end - overlap,
                    "{pair:?} share fewer than {overlap}"
                );
            }
            // An entity of overlap + 1 pieces anywhere, on a window's edge included, is whole in one.
            for start in 0..n.saturating_sub(overlap) {
                let entity = start..start + overlap + 1;
                assert!(
                    w.iter().any(|r| r.start <= entity.start && entity.end <= r.end),
                    "{entity:?} is cut by every window of {w:?}"
                );
            }
        }
    }
}
