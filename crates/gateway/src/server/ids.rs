//! Ids: the request id (the client's `x-request-id` when it is sane, else a new one) and new random ids
//! for requests and decisions. A leaf of the server.

use std::sync::Arc;

/// A new random id: `prefix` and 24 hex digits.
pub fn new_id(prefix: &str) -> String {
    let n: u128 = rand::random();
    format!("{prefix}{:024x}", n >> 32)
}

/// The request id: the client's `x-request-id` when it is sane, otherwise a new one.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);
