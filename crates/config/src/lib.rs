//! Reading YAML configuration so that every problem names its file, line and key.
//!
//! Daemons parse their file into a "raw" struct (`deny_unknown_fields`, every field optional) with
//! [`parse_yaml`] or [`read_yaml_file`], then validate it into their own typed configuration, reporting
//! semantic problems through a [`Locator`]. This crate does no other IO and knows no daemon.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration problem: where (file, line, key) and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{key}: {message}", location(file.as_deref(), *line))]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    /// Key path as serde writes it (`tls.cert`, `clouds[0].models[1].id`), or a flag (`--slots`).
    pub key: String,
    pub message: String,
}

fn location(file: Option<&Path>, line: Option<usize>) -> String {
    match (file, line) {
        (Some(f), Some(l)) => format!("{}:{l}: ", f.display()),
        (Some(f), None) => format!("{}: ", f.display()),
        (None, _) => String::new(),
    }
}

/// Reads and parses a YAML file; returns the text too, so that validation can locate keys in it.
pub fn read_yaml_file<T: DeserializeOwned + Default>(path: &Path) -> Result<(T, String), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: Some(path.to_owned()),
        line: None,
        key: "(file)".into(),
        message: format!("cannot read: {e}"),
    })?;
    let raw = parse_yaml(&text).map_err(|e| ConfigError {
        file: Some(path.to_owned()),
        ..e
    })?;
    Ok((raw, text))
}

/// Parses YAML text; an empty document gives `T::default()`.
pub fn parse_yaml<T: DeserializeOwned + Default>(text: &str) -> Result<T, ConfigError> {
    if text.trim().is_empty() {
        return Ok(T::default());
    }
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let line = inner.location().map(|l| l.line());
        let message = inner.to_string();
        // The YAML library appends " at line L column C"; the location is reported separately.
        let message = match message.find(" at line ") {
            Some(i) => message[..i].to_owned(),
            None => message,
        };
        // It also starts nested messages with the parent's path ("tls: unknown field"); the key path is
        // reported on its own.
        let message = match message.split_once(": ") {
            Some((prefix, rest)) if !prefix.contains(' ') && key.starts_with(prefix) => rest.to_owned(),
            _ => message,
        };
        ConfigError {
            file: None,
            line,
            key: if key == "." { "(document)".into() } else { key },
            message,
        }
    })
}

/// Builds located errors while a raw configuration is validated.
#[derive(Debug, Clone, Copy, Default)]
pub struct Locator<'a> {
    pub file: Option<&'a Path>,
    pub text: Option<&'a str>,
}

impl<'a> Locator<'a> {
    pub fn new(file: Option<&'a Path>, text: Option<&'a str>) -> Self {
        Self { file, text }
    }

    /// An error at `key` (a serde key path); the line is found in the text when the key is written there.
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.map(Path::to_owned),
            line: self.text.and_then(|t| line_of(t, key)),
            key: key.into(),
            message: message.into(),
        }
    }
}

/// One step of a key path: a map key, or an index into a list.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Step::Key(name));
        }
        while let Some(close) = rest.find(']') {
            if let Ok(i) = rest[1..close].parse() {
                out.push(Step::Index(i));
            }
            rest = &rest[close + 1..];
        }
    }
    out
}

/// The 1-based line where a key path (`tls.cert`, `clouds[1].models[0].id`) is written in YAML text,
/// found by following indentation and list items; for a key that is not written (a missing `tls.cert`),
/// the line of its deepest parent that is. Handles block style, the way configuration files are written.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = None;
    // The block being searched: lines [start, end) whose content sits deeper than `parent_indent`.
    let (mut start, mut end) = (0usize, lines.len());
    let mut parent_indent: Option<usize> = None;
    for step in steps(path) {
        let mut hit = None;
        let mut item = 0usize;
        let mut block_indent = None;
        for (i, line) in lines.iter().enumerate().take(end).skip(start) {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = line.len() - trimmed.len();
            // Leaving the parent's block ends the search; a list may sit at its key's own indent.
            if let Some(p) = parent_indent
                && (indent < p || (indent == p && !trimmed.starts_with("- ")))
            {
                break;
            }
            // A list item's first key sits after "- ".
            let (indent, trimmed) = match trimmed.strip_prefix("- ") {
                Some(rest) if matches!(step, Step::Key(_)) => (indent + 2, rest.trim_start()),
                _ => (indent, trimmed),
            };
            let level = *block_indent.get_or_insert(indent);
            if indent != level {
                continue;
            }
            match step {
                Step::Key(key) => {
                    if let Some(rest) = trimmed.strip_prefix(key)
                        && rest.trim_start().starts_with(':')
                    {
                        hit = Some((i, indent));
                        break;
                    }
                }
                Step::Index(want) => {
                    if trimmed.starts_with('-') {
                        if item == want {
                            hit = Some((i, indent));
                            break;
                        }
                        item += 1;
                    }
                }
            }
        }
        let Some((i, indent)) = hit else { break };
        found = Some(i + 1);
        // The value's block: following lines until one at this indent or shallower (another item or key).
        let mut block_end = lines.len().min(end);
        for (j, line) in lines.iter().enumerate().take(end).skip(i + 1) {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if line.len() - trimmed.len() <= indent {
                block_end = j;
                break;
            }
        }
        match step {
            // A list item's own keys start on its "- " line.
            Step::Index(_) => {
                start = i;
                parent_indent = None;
            }
            Step::Key(_) => {
                start = i + 1;
                parent_indent = Some(indent);
            }
        }
        end = block_end;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
listen: 0.0.0.0:8080
tls:
  cert: a.pem
  # a comment
  key: b.pem
clouds:
  - name: openai
    models:
      - id: gpt-4o-mini
        input_usd_per_mtok: 0.15
      - id: gpt-4o
        input_usd_per_mtok: 2.5
  - name: other
    base_url: http://x
";

    #[test]
    fn finds_nested_keys_and_list_items() {
        assert_eq!(line_of(TEXT, "listen"), Some(1));
        assert_eq!(line_of(TEXT, "tls.key"), Some(5));
        assert_eq!(line_of(TEXT, "clouds[0].name"), Some(7));
        assert_eq!(line_of(TEXT, "clouds[0].models[1].id"), Some(11));
        assert_eq!(line_of(TEXT, "clouds[0].models[1].input_usd_per_mtok"), Some(12));
        assert_eq!(line_of(TEXT, "clouds[1].base_url"), Some(14));
        assert_eq!(line_of(TEXT, "clouds[1]"), Some(13));
    }

    #[test]
    fn a_missing_key_gives_its_deepest_written_parent() {
        assert_eq!(line_of(TEXT, "tls.client_ca"), Some(2));
        assert_eq!(line_of(TEXT, "clouds[1].api_key_env"), Some(13));
        assert_eq!(line_of(TEXT, "nowhere"), None);
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Raw {
        slots: Option<u32>,
        tls: Option<RawTls>,
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct RawTls {
        cert: Option<String>,
    }

    #[test]
    fn parse_errors_name_key_and_line() {
        let e = parse_yaml::<Raw>("slots: 2\ntls:\n  certt: x\n").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("unknown field `certt`"), "{}", e.message);
        let e = parse_yaml::<Raw>("slots: many\n").unwrap_err();
        assert_eq!(e.key, "slots");
        assert_eq!(e.line, Some(1));
        assert!(parse_yaml::<Raw>("").is_ok());
    }

    #[test]
    fn located_errors_print_file_line_and_key() {
        let at = Locator::new(Some(Path::new("g.yaml")), Some(TEXT));
        assert_eq!(
            at.error("clouds[1].base_url", "bad").to_string(),
            "g.yaml:14: clouds[1].base_url: bad"
        );
    }
}
