//! A dedicated thread that appends, so that request handlers never wait on the disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

use crate::{AuditError, AuditLog, Record};

/// Records written between two syncs, at most: bounds the memory of a batch and the work a crash can
/// lose, while under load one sync still covers many records.
const MAX_BATCH: usize = 1024;

enum Message {
    Record(Box<Record>),
    /// Answered once everything queued before it is on disk (or has failed).
    Flush(SyncSender<()>),
}

/// Sends records to the writer thread. Clones share the thread; when the last one is dropped, it waits
/// until everything queued is written and the thread has ended (from async code, drop the last one on
/// the blocking pool).
#[derive(Clone)]
pub struct AuditHandle {
    shared: Arc<Shared>,
}

struct Shared {
    sender: Option<Sender<Message>>,
    thread: Option<JoinHandle<()>>,
    errors: Arc<AtomicU64>,
}

impl std::fmt::Debug for AuditHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditHandle")
            .field("errors", &self.errors())
            .finish_non_exhaustive()
    }
}

/// Starts the thread that owns `log`. It takes whatever is queued (up to 1,024 records), writes each
/// line, then syncs once: the same durability as [`AuditLog::append`] per record, with one sync per batch
/// instead of one per record when records arrive faster than the disk syncs.
pub fn spawn_writer(log: AuditLog) -> Result<AuditHandle, AuditError> {
    let (sender, receiver) = mpsc::channel();
    let errors = Arc::new(AtomicU64::new(0));
    let thread = std::thread::Builder::new()
        .name("sluice-audit".into())
        .spawn({
            let errors = errors.clone();
            move || run(&log, &receiver, &errors)
        })
        .map_err(AuditError::Spawn)?;
    Ok(AuditHandle {
        shared: Arc::new(Shared {
            sender: Some(sender),
            thread: Some(thread),
            errors,
        }),
    })
}

impl AuditHandle {
    /// Queues a record and returns at once. The queue is unbounded so that nothing is dropped: a disk that
    /// stalls shows as memory growth and, once it fails, as [`errors`](Self::errors).
    pub fn send(&self, record: Record) {
        let sent = self
            .shared
            .sender
            .as_ref()
            .is_some_and(|s| s.send(Message::Record(Box::new(record))).is_ok());
        if !sent {
            self.shared.errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!("the audit writer has stopped; an audit record was not written");
        }
    }

    /// Blocks until every record sent before this call is on disk or has failed (check
    /// [`errors`](Self::errors)). From async code, call it on the blocking pool.
    pub fn flush(&self) {
        let (ack, done) = mpsc::sync_channel(1);
        let queued = self
            .shared
            .sender
            .as_ref()
            .is_some_and(|s| s.send(Message::Flush(ack)).is_ok());
        if queued {
            // An error means the thread ended, and with it any chance of writing more.
            let _ = done.recv();
        }
    }

    /// Records that could not be written, or were written but not confirmed on disk (the sync failed),
    /// since the writer started.
    pub fn errors(&self) -> u64 {
        self.shared.errors.load(Ordering::Relaxed)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Closing the channel ends the thread once it has written what is queued.
        drop(self.sender.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the audit writer thread panicked");
        }
    }
}

fn run(log: &AuditLog, receiver: &Receiver<Message>, errors: &AtomicU64) {
    let mut batch = Vec::new();
    let mut acks = Vec::new();
    while let Ok(first) = receiver.recv() {
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Message::Record(record) => batch.push(*record),
                Message::Flush(ack) => acks.push(ack),
            }
            if batch.len() >= MAX_BATCH {
                break;
            }
            next = receiver.try_recv().ok();
        }
        write_batch(log, &batch, errors);
        batch.clear();
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

fn write_batch(log: &AuditLog, batch: &[Record], errors: &AtomicU64) {
    if batch.is_empty() {
        return;
    }
    let mut state = log.lock_state();
    let mut written = 0;
    for record in batch {
        match log.write_record(&mut state, record) {
            Ok(()) => written += 1,
            Err(e) => {
                errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    error = %e,
                    decision_id = %record.decision_id,
                    "audit record not written"
                );
            }
        }
    }
    if written > 0
        && let Err(e) = log.sync(&mut state)
    {
        errors.fetch_add(written, Ordering::Relaxed);
        tracing::error!(error = %e, records = written, "audit records written but not synced to disk");
    }
}
