//! The latest decisions, explained (`/admin/decisions`): each recorded when it is made and completed
//! with how the request ended. Written by accounting only.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sluice_policy::{Ended, Explanation};

/// How many recent decisions `/admin/decisions/{id}` can explain.
pub const RECENT_DECISIONS: usize = 1024;

/// The latest decisions, explained, newest last; at most its capacity.
#[derive(Debug)]
pub struct DecisionLog {
    capacity: usize,
    recent: Mutex<VecDeque<Arc<Explanation>>>,
}

impl DecisionLog {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            recent: Mutex::new(VecDeque::with_capacity(capacity)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Arc<Explanation>>> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn record(&self, e: Explanation) {
        let e = Arc::new(e);
        let mut recent = self.lock();
        if recent.len() == self.capacity {
            recent.pop_front();
        }
        recent.push_back(e);
    }

    /// Adds how the request ended to its decision, if it is still kept.
    pub(crate) fn end(&self, id: &str, ended: Ended) {
        let mut recent = self.lock();
        // Requests mostly end in the order they came: look from the newest.
        if let Some(e) = recent.iter_mut().rev().find(|e| e.decision_id == id) {
            Arc::make_mut(e).ended = Some(ended);
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Explanation>> {
        self.lock().iter().rev().find(|e| e.decision_id == id).cloned()
    }

    pub fn latest(&self, n: usize) -> Vec<Arc<Explanation>> {
        let recent = self.lock();
        recent.iter().rev().take(n).cloned().collect()
    }
}
