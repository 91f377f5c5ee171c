//! Checking the chain: every line parses, `seq` goes up by one, `prev` is the hash of the line before.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::log::rotated;
use crate::{GENESIS_PREV, LineIn, line_hash};

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The path given to [`verify`].
    pub path: PathBuf,
    /// The files read, oldest first (the active file last, when it exists).
    pub files: Vec<PathBuf>,
    /// Records in the chain (torn lines not counted).
    pub records: u64,
    pub first_seq: Option<u64>,
    /// `seq` and hash of the newest record. The chain cannot show that records were removed from its end
    /// or that the newest one was edited; comparing these with a copy kept elsewhere can.
    pub last_seq: Option<u64>,
    pub last_hash: Option<String>,
    /// Partial last lines (file, 1-based line): a crash while writing. Each is the last line of its file.
    pub torn: Vec<(PathBuf, usize)>,
}

impl VerifyReport {
    /// The oldest record kept is not the first ever written: earlier files were rotated away (or, which
    /// the chain cannot tell apart, the oldest records were removed), so it cannot be checked against its
    /// predecessor.
    pub fn earlier_rotated_away(&self) -> bool {
        self.first_seq.is_some_and(|s| s > 0)
    }
}

/// `PATH: N records in F file(s), chain intact`, then what a reader should know.
impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} records in {} file(s), chain intact",
            self.path.display(),
            self.records,
            self.files.len()
        )?;
        if let Some(first) = self.first_seq.filter(|_| self.earlier_rotated_away()) {
            write!(f, "; starts at seq {first} (earlier files rotated away)")?;
        }
        for (i, (file, line)) in self.torn.iter().enumerate() {
            let lead = if i == 0 { "; torn last line at " } else { ", " };
            write!(f, "{lead}{}:{line}", file.display())?;
        }
        Ok(())
    }
}

/// Why the log does not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{}: no audit log (neither the file nor rotated copies exist)", path.display())]
    NotFound { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// The first line that is not what the chain says it must be.
    #[error("{}: line {line}: {problem}", file.display())]
    Broken {
        file: PathBuf,
        /// 1-based.
        line: usize,
        problem: Problem,
    },
}

/// What is wrong with a line. Each message says which kinds of tampering produce it: a line cannot show
/// which of them happened, only that the chain breaks there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Not a JSON record with the expected fields (and not a torn last line).
    Unparsable(String),
    /// `seq` skips ahead.
    Gap { previous: u64, found: u64 },
    /// `seq` repeats or goes back.
    Backwards { previous: u64, found: u64 },
    /// `prev` is not the hash of the previous record, which is at `line` of `file` (`None`: this file).
    PrevMismatch { file: Option<PathBuf>, line: usize },
    /// The record with seq 0 must have [`GENESIS_PREV`].
    NotGenesis,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Unparsable(why) => write!(f, "not an audit record ({why})"),
            Problem::Gap { previous, found } => {
                let first_missing = previous + 1;
                let last_missing = found - 1;
                let missing = if first_missing == last_missing {
                    format!("record {first_missing} is")
                } else {
                    format!("records {first_missing} to {last_missing} are")
                };
                write!(
                    f,
                    "seq {found} follows seq {previous}: {missing} missing (removed or reordered records)"
                )
            }
            Problem::Backwards { previous, found } => write!(
                f,
                "seq {found} follows seq {previous} (an inserted, duplicated or reordered record)"
            ),
            Problem::PrevMismatch { file, line } => {
                let at = match file {
                    Some(file) => format!("{}:{line}", file.display()),
                    None => format!("line {line}"),
                };
                write!(
                    f,
                    "prev does not match the hash of {at} (an edited, removed or inserted record)"
                )
            }
            Problem::NotGenesis => write!(f, "the record with seq 0 must have prev = 64 zeros"),
        }
    }
}

/// The files of the log at `path`, oldest first: its rotated copies (`path.N` down to `path.1`), then
/// `path` itself when it exists. Empty when there is no log.
pub fn log_files(path: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = rotated(path)?.into_iter().rev().map(|(_, p)| p).collect();
    if path.try_exists()? {
        files.push(path.to_owned());
    }
    Ok(files)
}

/// Checks `path` and its rotated copies (`path.N`, oldest first, then `path`): every line parses, `seq`
/// goes up by exactly one, and `prev` is the hash of the previous line, across files. The first record
/// must have 64 zeros as `prev` when its `seq` is 0; a later first `seq` means older files were rotated
/// away. A partial last line of a file (no newline: a crash while writing) is reported, not an error; the
/// writer never counts such a line, and continues in a new file.
///
/// Any edited, removed, inserted or reordered record is an error naming the first line where the chain
/// breaks. The chain alone cannot catch what no later record points at: the last record of the active
/// file removed (or several), or edited; nor the first records of the oldest file removed, which look
/// rotated away. For those, compare [`VerifyReport::last_seq`] and `last_hash` with a copy kept elsewhere.
///
/// Run it on a log no one is rotating at that moment: a rotation between listing and reading the files
/// looks like a break.
pub fn verify(path: &Path) -> Result<VerifyReport, VerifyError> {
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| VerifyError::Io { path, source }
    };
    let files = log_files(path).map_err(io_error(path))?;
    if files.is_empty() {
        return Err(VerifyError::NotFound {
            path: path.to_owned(),
        });
    }

    let mut report = VerifyReport {
        path: path.to_owned(),
        files: files.clone(),
        records: 0,
        first_seq: None,
        last_seq: None,
        last_hash: None,
        torn: Vec::new(),
    };
    // The previous record: seq, hash, file index, line.
    let mut last: Option<(u64, String, usize, usize)> = None;
    for (index, file) in files.iter().enumerate() {
        let mut reader = BufReader::new(File::open(file).map_err(io_error(file))?);
        let mut buf = Vec::new();
        let mut line = 0;
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf).map_err(io_error(file))? == 0 {
                break;
            }
            line += 1;
            if buf.pop() != Some(b'\n') {
                // Nothing follows in this file: `read_until` stops only at a newline or at the end.
                report.torn.push((file.clone(), line));
                break;
            }
            let broken = |problem| VerifyError::Broken {
                file: file.clone(),
                line,
                problem,
            };
            let parsed: LineIn = if buf.is_empty() {
                return Err(broken(Problem::Unparsable("empty line".into())));
            } else {
                serde_json::from_slice(&buf).map_err(|e| broken(Problem::Unparsable(e.to_string())))?
            };
            match &last {
                None => {
                    if parsed.seq == 0 && parsed.prev != GENESIS_PREV {
                        return Err(broken(Problem::NotGenesis));
                    }
                    report.first_seq = Some(parsed.seq);
                }
                Some((previous, hash, prev_index, prev_line)) => {
                    let (previous, found) = (*previous, parsed.seq);
                    if found <= previous {
                        return Err(broken(Problem::Backwards { previous, found }));
                    }
                    if found != previous + 1 {
                        return Err(broken(Problem::Gap { previous, found }));
                    }
                    if parsed.prev != *hash {
                        return Err(broken(Problem::PrevMismatch {
                            file: (*prev_index != index).then(|| files[*prev_index].clone()),
                            line: *prev_line,
                        }));
                    }
                }
            }
            report.records += 1;
            last = Some((parsed.seq, line_hash(&buf), index, line));
        }
    }
    report.last_seq = last.as_ref().map(|(seq, ..)| *seq);
    report.last_hash = last.map(|(_, hash, ..)| hash);
    Ok(report)
}
