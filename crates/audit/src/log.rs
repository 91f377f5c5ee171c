//! Appending records to the active file, rotating it, and picking the chain up again after a restart.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::{GENESIS_PREV, LineIn, LineOut, Record, line_hash};

/// When to rotate and how much to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditOptions {
    /// The active file is rotated before a line would take it past this size (a line longer than this
    /// still gets a file of its own).
    pub max_bytes: u64,
    /// Rotated files kept (`PATH.1` .. `PATH.keep`); older ones are deleted. At least 1, because the newest
    /// rotated file is where a restart finds the chain when the active file holds no complete record.
    pub keep: usize,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024,
            keep: 10,
        }
    }
}

/// Why an audit record could not be written, or the log not opened.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// Two writers would fork the chain, which verification then reports as tampering.
    #[error("{}: another writer holds this audit log", path.display())]
    Locked { path: PathBuf },
    /// The last complete record, where the chain continues, does not parse: appending after it would
    /// hide the damage behind a chain that looks intact from there on.
    #[error("{}: the last complete record cannot be read ({reason}); check the log with `sluice audit verify`", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("invalid audit log options: {0}")]
    Options(&'static str),
    #[error("cannot encode an audit record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("cannot start the audit writer thread: {0}")]
    Spawn(io::Error),
}

/// An append-only, hash-chained JSONL file with rotation; see the crate documentation.
///
/// Every method takes `&self` (the state is behind a mutex) so one log can be shared between threads;
/// they all block on the disk. An advisory lock on `PATH.lock`, held while the value lives, keeps a second
/// writer (another process, or another `open` in this one) out.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    options: AuditOptions,
    state: Mutex<State>,
    _lock: File,
}

#[derive(Debug)]
pub(crate) struct State {
    /// `None` after a rotation moved the active file away but could not create the next one.
    file: Option<File>,
    /// Bytes in the active file.
    size: u64,
    next_seq: u64,
    /// Hash of the last complete record.
    prev: String,
    /// The active file may end with a partial line (a crash, or a failed write): the next record goes to a
    /// new file, so that the partial line stays the last line of its file, where verification expects
    /// torn lines, instead of being glued to the front of the next record.
    torn_tail: bool,
}

impl AuditLog {
    /// Opens or creates the log at `path` (its directory must exist) and continues the chain from the last
    /// complete record of the active file, or of the newest rotated file when the active one has none.
    pub fn open(path: &Path, options: AuditOptions) -> Result<AuditLog, AuditError> {
        if options.max_bytes == 0 {
            return Err(AuditError::Options("max_bytes must be above 0"));
        }
        if options.keep == 0 {
            return Err(AuditError::Options("keep must be at least 1"));
        }
        let lock = take_lock(path)?;
        let active = read_tail(path).map_err(io_error("cannot read", path))?;
        let (next_seq, prev) = chain_state(path, active.as_ref())?;
        let torn_tail = active.as_ref().is_some_and(|t| t.torn);
        if torn_tail {
            tracing::warn!(
                path = %path.display(),
                "the audit log ends with a partial line (a crash?); the next record starts a new file"
            );
        }
        let file = open_append(path).map_err(io_error("cannot open", path))?;
        let size = file.metadata().map_err(io_error("cannot read", path))?.len();
        if active.is_none() {
            sync_dir(path).map_err(io_error("cannot sync the directory of", path))?;
        }
        Ok(AuditLog {
            path: path.to_owned(),
            options,
            state: Mutex::new(State {
                file: Some(file),
                size,
                next_seq,
                prev,
                torn_tail,
            }),
            _lock: lock,
        })
    }

    /// Appends one record and waits until it is on disk (`sync_data`). The line goes out in one
    /// `write_all` on a file opened for appending, so a crash leaves at most one partial line, at the end.
    ///
    /// On error the record is not part of the chain, except when only the sync failed: the line is then
    /// in the file (and chained) but may not survive a crash.
    pub fn append(&self, record: Record) -> Result<(), AuditError> {
        let mut state = self.lock_state();
        self.write_record(&mut state, &record)?;
        self.sync(&mut state)
    }

    /// The path of the active file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn lock_state(&self) -> MutexGuard<'_, State> {
        // Nothing here panics while holding the lock; if something did, the state is still consistent
        // (each field is updated only after the write it describes succeeded).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes one line without syncing; the caller syncs once for a batch.
    pub(crate) fn write_record(&self, state: &mut State, record: &Record) -> Result<(), AuditError> {
        let mut line = serde_json::to_vec(&LineOut {
            seq: state.next_seq,
            prev: &state.prev,
            record,
        })?;
        let hash = line_hash(&line);
        line.push(b'\n');
        let len = line.len() as u64;

        if state.torn_tail {
            self.rotate(state)?;
        }
        if state.file.is_some() && state.size > 0 && state.size.saturating_add(len) > self.options.max_bytes {
            self.rotate(state)?;
        }
        let file = match &mut state.file {
            Some(file) => file,
            None => {
                let file = open_append(&self.path).map_err(io_error("cannot open", &self.path))?;
                state.size = file
                    .metadata()
                    .map_err(io_error("cannot read", &self.path))?
                    .len();
                sync_dir(&self.path).map_err(io_error("cannot sync the directory of", &self.path))?;
                state.file.insert(file)
            }
        };
        if let Err(e) = file.write_all(&line) {
            // A failed write may have written nothing; then there is no partial line to keep apart.
            state.torn_tail = file.metadata().map_or(true, |m| m.len() != state.size);
            return Err(io_error("cannot write to", &self.path)(e));
        }
        state.size += len;
        state.next_seq += 1;
        state.prev = hash;
        Ok(())
    }

    pub(crate) fn sync(&self, state: &mut State) -> Result<(), AuditError> {
        if let Some(file) = &mut state.file {
            file.flush().map_err(io_error("cannot write to", &self.path))?;
            file.sync_data().map_err(io_error("cannot sync", &self.path))?;
        }
        Ok(())
    }

    /// `PATH.(keep-1)` -> `PATH.keep` .. `PATH` -> `PATH.1`, then a new, empty `PATH`. The chain state stays
    /// in memory, so the new file's first record points at the old file's last.
    fn rotate(&self, state: &mut State) -> Result<(), AuditError> {
        let path = &self.path;
        // Records of the current batch are in the old file: they must be on disk before it moves on.
        self.sync(state)?;
        for (n, old) in rotated(path).map_err(io_error("cannot list the rotated files of", path))? {
            if n >= self.options.keep as u64 {
                remove_if_present(&old).map_err(io_error("cannot remove", &old))?;
            }
        }
        for n in (1..self.options.keep).rev() {
            let from = sibling(path, &format!(".{n}"));
            rename_if_present(&from, &sibling(path, &format!(".{}", n + 1)))
                .map_err(io_error("cannot rotate", &from))?;
        }
        rename_if_present(path, &sibling(path, ".1")).map_err(io_error("cannot rotate", path))?;
        // From here on the old handle points at `PATH.1`: never write through it again.
        state.file = None;
        state.size = 0;
        state.torn_tail = false;
        let file = open_append(path).map_err(io_error("cannot open", path))?;
        sync_dir(path).map_err(io_error("cannot sync the directory of", path))?;
        state.file = Some(file);
        Ok(())
    }
}

/// The newest complete record's `seq + 1` and hash, or a fresh chain when no file holds one.
fn chain_state(path: &Path, active: Option<&Tail>) -> Result<(u64, String), AuditError> {
    let mut newest = active.and_then(|t| t.last_complete.clone().map(|l| (path.to_owned(), l)));
    if newest.is_none() {
        for (_, file) in rotated(path).map_err(io_error("cannot list the rotated files of", path))? {
            if let Some(line) = read_tail(&file)
                .map_err(io_error("cannot read", &file))?
                .and_then(|t| t.last_complete)
            {
                newest = Some((file, line));
                break;
            }
        }
    }
    let Some((file, line)) = newest else {
        return Ok((0, GENESIS_PREV.to_owned()));
    };
    let corrupt = |reason: String| AuditError::Corrupt {
        path: file.clone(),
        reason,
    };
    let parsed: LineIn = serde_json::from_slice(&line).map_err(|e| corrupt(e.to_string()))?;
    let next = parsed
        .seq
        .checked_add(1)
        .ok_or_else(|| corrupt("seq is at its maximum".into()))?;
    Ok((next, line_hash(&line)))
}

/// The end of a file, as far as the chain is concerned.
struct Tail {
    /// The last line that ends with a newline, without it.
    last_complete: Option<Vec<u8>>,
    /// Bytes follow the last newline.
    torn: bool,
}

/// Reads backwards from the end, a growing window at a time, so that opening a large log stays cheap.
fn read_tail(path: &Path) -> io::Result<Option<Tail>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut window: u64 = 64 * 1024;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        (&mut file).take(len - start).read_to_end(&mut buf)?;
        let torn = buf.last().is_some_and(|&b| b != b'\n');
        let whole_file = start == 0;
        let last_complete = match buf.iter().rposition(|&b| b == b'\n') {
            None if whole_file => None,
            None => {
                window = window.saturating_mul(2);
                continue;
            }
            Some(end) => match buf[..end].iter().rposition(|&b| b == b'\n') {
                Some(newline) => Some(buf[newline + 1..end].to_vec()),
                None if whole_file => Some(buf[..end].to_vec()),
                None => {
                    window = window.saturating_mul(2);
                    continue;
                }
            },
        };
        return Ok(Some(Tail { last_complete, torn }));
    }
}

/// The rotated files that exist, `PATH.1` (newest) first. Listing the directory rather than probing
/// `PATH.1`, `PATH.2`, ... until one is missing means a deleted middle file cannot hide the older ones.
pub(crate) fn rotated(path: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let Some(name) = path.file_name() else {
        return Ok(Vec::new());
    };
    let mut prefix = name.as_encoded_bytes().to_vec();
    prefix.push(b'.');
    let mut found = Vec::new();
    for entry in fs::read_dir(parent(path))? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(suffix) = file_name
            .as_encoded_bytes()
            .strip_prefix(prefix.as_slice())
            .and_then(|s| std::str::from_utf8(s).ok())
        else {
            continue;
        };
        // Only what rotation writes: `1`, `2`, ..., no signs or leading zeros.
        match suffix.parse::<u64>() {
            Ok(n) if n > 0 && n.to_string() == suffix => found.push((n, sibling(path, &format!(".{n}")))),
            _ => {}
        }
    }
    found.sort_unstable_by_key(|(n, _)| *n);
    Ok(found)
}

/// `path` with `suffix` appended to its file name (`audit.jsonl` -> `audit.jsonl.1`).
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn take_lock(path: &Path) -> Result<File, AuditError> {
    let lock_path = sibling(path, ".lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_error("cannot open", &lock_path))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(TryLockError::WouldBlock) => Err(AuditError::Locked {
            path: path.to_owned(),
        }),
        Err(TryLockError::Error(e)) => Err(io_error("cannot lock", &lock_path)(e)),
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        // Tenants, models and costs: readable by the owner and the log shipper's group, not by everyone.
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o640);
    }
    options.open(path)
}

/// A rename or a new file is a change to the directory: without syncing it, a crash can undo it.
fn sync_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(parent(path))?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

fn rename_if_present(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> AuditError {
    let path = path.to_owned();
    move |source| AuditError::Io { op, path, source }
}
