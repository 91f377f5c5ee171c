//! Entities in text: the tokenizer's pieces, tagged by the model window by window (each piece keeps the
//! label of the window it sits most centrally in), then read as BIO spans with the bytes of the
//! original text they cover. Every piece of every text is tagged: long text is never cut, only windowed.

use std::ops::Range;

use crate::model::{MAX_TOKENS, ModelError, Tagger};
use crate::tokenize::{Piece, TokenizeError, WordPieces, windows};

/// Pieces two neighbouring windows share: an entity of up to this many pieces plus one is whole in a
/// window, whatever its position.
pub const OVERLAP: usize = 64;

/// What the model recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntityKind {
    GivenName,
    Surname,
    Email,
    Phone,
    Url,
    TaxId,
    BankAccount,
    RoutingNumber,
    GovernmentId,
    Passport,
    DriversLicense,
    BuildingNumber,
    StreetName,
    SecondaryAddress,
    City,
    State,
    ZipCode,
}

impl EntityKind {
    /// In the order of the model's labels.
    pub const ALL: [Self; 17] = [
        Self::GivenName,
        Self::Surname,
        Self::Email,
        Self::Phone,
        Self::Url,
        Self::TaxId,
        Self::BankAccount,
        Self::RoutingNumber,
        Self::GovernmentId,
        Self::Passport,
        Self::DriversLicense,
        Self::BuildingNumber,
        Self::StreetName,
        Self::SecondaryAddress,
        Self::City,
        Self::State,
        Self::ZipCode,
    ];

    /// The kind and whether it begins an entity, for a label id; `None` for `O`.
    pub fn of_label(label: usize) -> Option<(Self, bool)> {
        let i = label.checked_sub(1)?;
        Some((*Self::ALL.get(i / 2)?, i % 2 == 0))
    }
}

/// One entity: its kind and the bytes of the text it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entity {
    pub kind: EntityKind,
    pub range: Range<usize>,
}

/// Why text could not be tagged.
#[derive(Debug, thiserror::Error)]
pub enum TagError {
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the tokenizer has no {0} token")]
    Special(&'static str),
}

/// The tokenizer and the model together.
#[derive(Debug)]
pub struct Recognizer {
    pieces: WordPieces,
    tagger: Tagger,
    cls: u32,
    sep: u32,
}

impl Recognizer {
    pub fn new(pieces: WordPieces, tagger: Tagger) -> Result<Self, TagError> {
        let cls = pieces.id_of("[CLS]").ok_or(TagError::Special("[CLS]"))?;
        let sep = pieces.id_of("[SEP]").ok_or(TagError::Special("[SEP]"))?;
        Ok(Self {
            pieces,
            tagger,
            cls,
            sep,
        })
    }

    /// The personal data in `text` (names and addresses joined, see [`crate::personal`]), in order.
    pub fn personal(&self, text: &str) -> Result<Vec<crate::Personal>, TagError> {
        Ok(self.personal_reading(text, Reading::Whole)?.0)
    }

    /// The personal data in `text`, reading what `reading` says; with the number of pieces the model
    /// read.
    pub fn personal_reading(
        &self,
        text: &str,
        reading: Reading,
    ) -> Result<(Vec<crate::Personal>, usize), TagError> {
        let (entities, read) = self.entities_reading(text, reading)?;
        Ok((crate::personal(text, &entities), read))
    }

    /// The entities in `text`, in order.
    pub fn entities(&self, text: &str) -> Result<Vec<Entity>, TagError> {
        Ok(self.entities_reading(text, Reading::Whole)?.0)
    }

    /// The entities in the parts of `text` that `reading` says, and how many pieces the model read.
    pub fn entities_reading(&self, text: &str, reading: Reading) -> Result<(Vec<Entity>, usize), TagError> {
        let pieces = self.pieces.pieces(text)?;
        let parts = match reading {
            Reading::Whole => std::iter::once(0..pieces.len()).collect(),
            Reading::AroundCues => around(&pieces, &crate::cues::cues(text)),
        };
        // Each piece's label, from the window where it is farthest from an edge; pieces not read are `O`.
        let mut labels = vec![(0usize, 0usize); pieces.len()];
        let mut read = 0;
        let all = parts.iter().flat_map(|span| {
            windows(span.len(), MAX_TOKENS - 2, OVERLAP)
                .into_iter()
                .map(move |w| span.start + w.start..span.start + w.end)
        });
        for window in all {
            read += window.len();
            let mut ids = Vec::with_capacity(window.len() + 2);
            ids.push(self.cls);
            ids.extend(pieces[window.clone()].iter().map(|p| p.id));
            ids.push(self.sep);
            let logits = self.tagger.logits(&ids)?;
            for (offset, row) in logits[1..logits.len() - 1].iter().enumerate() {
                let i = window.start + offset;
                // 1 + the distance to the nearer edge of the window.
                let centrality = 1 + offset.min(window.len() - 1 - offset);
                if centrality > labels[i].1 {
                    let label = row
                        .iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .map_or(0, |(l, _)| l);
                    labels[i] = (label, centrality);
                }
            }
        }
        let labels: Vec<usize> = labels.into_iter().map(|(l, _)| l).collect();
        Ok((spans(&pieces, &labels), read))
    }
}

/// How much of a text the model reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// Every piece.
    Whole,
    /// The pieces within [`CONTEXT`] of a cue ([`crate::cues`]): a digit, a known name, a capitalised
    /// word inside a sentence. Nothing when there is no cue.
    AroundCues,
}

/// Pieces read on each side of a cue: a name, address or identifier starting at a cue is whole
/// within it, with the words around it that the model reads it by.
pub const CONTEXT: usize = 48;

/// The spans of pieces within `CONTEXT` of a cue, merged where they touch.
fn around(pieces: &[Piece], cues: &[Range<usize>]) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut p = 0;
    for cue in cues {
        // The first piece of the cue word.
        while pieces.get(p).is_some_and(|x| x.end <= cue.start) {
            p += 1;
        }
        if p >= pieces.len() {
            break;
        }
        let span = p.saturating_sub(CONTEXT)..(p + CONTEXT + 1).min(pieces.len());
        match out.last_mut() {
            Some(last) if span.start <= last.end => last.end = last.end.max(span.end),
            _ => out.push(span),
        }
    }
    out
}

/// Reads BIO labels (one per piece) as entities over the pieces' bytes.
pub fn spans(pieces: &[Piece], labels: &[usize]) -> Vec<Entity> {
    let mut out: Vec<Entity> = Vec::new();
    let mut open: Option<EntityKind> = None;
    for (piece, &label) in pieces.iter().zip(labels) {
        match EntityKind::of_label(label) {
            None => open = None,
            // A piece continues the open entity of its kind when it says so (`I-`) or when it touches
            // it (the model labels each piece of "jane.doe@example.com" `B-EMAIL`, since the tokenizer
            // splits at punctuation); any other starts an entity.
            Some((kind, begins)) => match out.last_mut() {
                Some(last) if open == Some(kind) && (!begins || last.range.end == piece.start) => {
                    last.range.end = piece.end;
                }
                _ => {
                    out.push(Entity {
                        kind,
                        range: piece.start..piece.end,
                    });
                    open = Some(kind);
                }
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(start: usize, end: usize) -> Piece {
        Piece { id: 0, start, end }
    }

    #[test]
    fn bio_labels_become_entities_over_bytes() {
        // "Jo ##hn Smith , jane.doe" with labels B-GIVEN I-GIVEN B-SURNAME O B-EMAIL B-EMAIL B-EMAIL.
        let pieces = [
            piece(0, 2),
            piece(2, 4),
            piece(5, 10),
            piece(10, 11),
            piece(12, 16),
            piece(16, 17),
            piece(17, 20),
        ];
        let labels = [1, 2, 3, 0, 5, 5, 5];
        assert_eq!(
            spans(&pieces, &labels),
            [
                Entity {
                    kind: EntityKind::GivenName,
                    range: 0..4
                },
                Entity {
                    kind: EntityKind::Surname,
                    range: 5..10
                },
                Entity {
                    kind: EntityKind::Email,
                    range: 12..20
                },
            ]
        );
        // Two names apart are two entities; an `I-` of another kind starts one; `O` closes.
        let pieces = [
            piece(0, 4),
            piece(5, 8),
            piece(9, 12),
            piece(13, 15),
            piece(16, 18),
        ];
        let labels = [1, 1, 4, 0, 2];
        let kinds: Vec<(EntityKind, Range<usize>)> = spans(&pieces, &labels)
            .into_iter()
            .map(|e| (e.kind, e.range))
            .collect();
        assert_eq!(
            kinds,
            [
                (EntityKind::GivenName, 0..4),
                (EntityKind::GivenName, 5..8),
                (EntityKind::Surname, 9..12),
                (EntityKind::GivenName, 16..18),
            ]
        );
        assert_eq!(EntityKind::of_label(34), Some((EntityKind::ZipCode, false)));
        assert_eq!(EntityKind::of_label(35), None);
        assert_eq!(EntityKind::of_label(0), None);
    }
}
