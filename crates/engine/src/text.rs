//! From generated token bytes to streamed text: whole UTF-8 characters only, stop sequences cut out and
//! never sent in part.

/// Assembles the text of one stream.
#[derive(Debug, Default)]
pub struct TextStream {
    /// Bytes that do not yet form a whole UTF-8 character.
    pending: Vec<u8>,
    /// Decoded text held back because it could be the start of a stop sequence.
    held: String,
    stops: Vec<String>,
}

/// What a push produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Text safe to send now (may be empty).
    pub text: String,
    /// The stop sequence that matched; generation ends and nothing after it is sent.
    pub stopped: Option<String>,
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            pending: Vec::new(),
            held: String::new(),
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
        }
    }

    /// Adds a token's bytes.
    pub fn push(&mut self, bytes: &[u8]) -> Pushed {
        self.pending.extend_from_slice(bytes);
        let decoded = take_valid_utf8(&mut self.pending);
        self.held.push_str(&decoded);
        self.release()
    }

    /// Ends the stream: whatever is held (not a stop sequence) is sent, and incomplete bytes become U+FFFD.
    pub fn finish(&mut self) -> String {
        let mut out = std::mem::take(&mut self.held);
        if !self.pending.is_empty() {
            out.push_str(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
        }
        out
    }

    fn release(&mut self) -> Pushed {
        if self.stops.is_empty() {
            return Pushed {
                text: std::mem::take(&mut self.held),
                stopped: None,
            };
        }
        // The earliest match wins; at one position, the longest stop sequence.
        let mut best: Option<(usize, &String)> = None;
        for stop in &self.stops {
            if let Some(at) = self.held.find(stop.as_str()) {
                let better = match best {
                    None => true,
                    Some((b_at, b)) => at < b_at || (at == b_at && stop.len() > b.len()),
                };
                if better {
                    best = Some((at, stop));
                }
            }
        }
        if let Some((at, stop)) = best {
            let stop = stop.clone();
            let text = self.held[..at].to_owned();
            self.held.clear();
            self.pending.clear();
            return Pushed {
                text,
                stopped: Some(stop),
            };
        }
        // Hold back the longest tail that could still grow into a stop sequence.
        let mut keep_from = self.held.len();
        for (i, _) in self.held.char_indices().rev() {
            let tail = &self.held[i..];
            if tail.len() > self.max_stop_len() {
                break;
            }
            if self.stops.iter().any(|s| s.starts_with(tail)) {
                keep_from = i;
            }
        }
        let rest = self.held.split_off(keep_from);
        Pushed {
            text: std::mem::replace(&mut self.held, rest),
            stopped: None,
        }
    }

    fn max_stop_len(&self) -> usize {
        self.stops.iter().map(String::len).max().unwrap_or(0)
    }
}

/// Removes and returns the longest prefix of `bytes` that is complete UTF-8; invalid sequences (not just
/// incomplete ones) become U+FFFD.
fn take_valid_utf8(bytes: &mut Vec<u8>) -> String {
    let mut out = String::new();
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                bytes.clear();
                return out;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                out.push_str(std::str::from_utf8(&bytes[..valid]).unwrap_or_default());
                match e.error_len() {
                    // Incomplete character at the end: keep it for the next token.
                    None => {
                        bytes.drain(..valid);
                        return out;
                    }
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        bytes.drain(..valid + bad);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(stream: &mut TextStream, parts: &[&[u8]]) -> (String, Option<String>) {
        let mut out = String::new();
        for p in parts {
            let pushed = stream.push(p);
            out.push_str(&pushed.text);
            if pushed.stopped.is_some() {
                return (out, pushed.stopped);
            }
        }
        out.push_str(&stream.finish());
        (out, None)
    }

    #[test]
    fn split_multibyte_characters_are_held_until_whole() {
        let mut s = TextStream::new(vec![]);
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(s.push(&euro[..1]).text, "");
        assert_eq!(s.push(&euro[1..2]).text, "");
        assert_eq!(s.push(&euro[2..]).text, "€");
        let emoji = "🦀".as_bytes();
        assert_eq!(s.push(&[b'a', emoji[0], emoji[1]]).text, "a");
        assert_eq!(s.push(&emoji[2..3]).text, "");
        assert_eq!(s.push(&emoji[3..]).text, "🦀");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut s = TextStream::new(vec![]);
        assert_eq!(s.push(&[b'x', 0xFF, b'y']).text, "x\u{FFFD}y");
        s.push(&[0xE2, 0x82]);
        assert_eq!(s.finish(), "\u{FFFD}");
    }

    #[test]
    fn stop_sequence_across_tokens_is_cut_and_never_leaked() {
        let mut s = TextStream::new(vec!["END".into()]);
        assert_eq!(s.push(b"Hello E").text, "Hello ");
        assert_eq!(s.push(b"N").text, "");
        let pushed = s.push(b"D and more");
        assert_eq!(
            pushed,
            Pushed {
                text: String::new(),
                stopped: Some("END".into())
            }
        );
    }

    #[test]
    fn a_false_start_of_a_stop_sequence_is_released() {
        let mut s = TextStream::new(vec!["END".into()]);
        let (out, stop) = feed(&mut s, &[b"a E", b"N", b"x", b"!"]);
        assert_eq!(out, "a ENx!");
        assert_eq!(stop, None);
    }

    #[test]
    fn earliest_stop_wins() {
        let mut s = TextStream::new(vec!["two".into(), "one".into()]);
        let (out, stop) = feed(&mut s, &[b"zero one two"]);
        assert_eq!(out, "zero ");
        assert_eq!(stop.as_deref(), Some("one"));
    }

    #[test]
    fn held_text_is_flushed_at_the_end() {
        let mut s = TextStream::new(vec!["\n\n".into()]);
        assert_eq!(s.push(b"line\n").text, "line");
        assert_eq!(s.finish(), "\n");
    }

    #[test]
    fn multibyte_stop_sequences_work() {
        let mut s = TextStream::new(vec!["。".into()]);
        let bytes = "東京。次".as_bytes();
        let (out, stop) = feed(
            &mut s,
            &bytes.iter().map(std::slice::from_ref).collect::<Vec<_>>(),
        );
        assert_eq!(out, "東京");
        assert_eq!(stop.as_deref(), Some("。"));
    }
}
