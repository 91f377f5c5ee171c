//! Intake, the first step of every request: read the body, parse and check it ([`crate::api`]), read the
//! client's routing hints, and scan every string for sensitive data. The result ([`Intake`]) gives the
//! policy its [`RequestFacts`]. The chat handler and `sluice policy explain` both go through here, so an
//! explanation is computed from exactly what the gateway would have seen.
//! Intake never decides where a request goes and never touches a backend.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use sluice_policy::{Level, RequestFacts, RequestHeaders, Route, estimate_tokens, strings};
use sluice_sensitivity::{Scan, Scanner};

use crate::api::embeddings::{EmbeddingRequest, parse_embedding_request};
use crate::api::{ChatRequest, parse_chat_request};
use crate::error::ApiError;
use crate::headers::{X_FALLBACK, X_PREFER, X_SENSITIVITY};

/// Bodies up to this size are scanned on the runtime thread; larger ones on the blocking pool.
pub const SCAN_INLINE_BYTES: usize = 64 << 10;

/// What the policy reads of a request of any kind.
pub trait Asked {
    fn model(&self) -> &str;
    /// The answer's length limit the client set.
    fn max_tokens(&self) -> Option<u32>;
    /// The body as the client sent it.
    fn body(&self) -> &serde_json::Map<String, serde_json::Value>;
}

impl Asked for ChatRequest {
    fn model(&self) -> &str {
        &self.model
    }
    fn max_tokens(&self) -> Option<u32> {
        self.max_tokens
    }
    fn body(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.body
    }
}

impl Asked for EmbeddingRequest {
    fn model(&self) -> &str {
        &self.model
    }
    /// An embedding writes no tokens.
    fn max_tokens(&self) -> Option<u32> {
        Some(0)
    }
    fn body(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.body
    }
}

/// A request read, checked and scanned.
#[derive(Debug)]
pub struct Intake<R = ChatRequest> {
    pub request: R,
    /// The level the client declared in `x-sluice-sensitivity`.
    pub declared: Option<Level>,
    /// The client's `x-sluice-prefer` hint.
    pub prefer: Option<Route>,
    /// The estimated prompt size in tokens.
    pub prompt_tokens: u64,
    pub scan: Scan,
}

/// A request refused at intake: the client's error, and the `sluice_rejected_total` reason.
#[derive(Debug)]
pub struct Refused {
    pub reason: &'static str,
    pub error: Box<ApiError>,
}

impl Refused {
    fn invalid(error: ApiError) -> Self {
        Self {
            reason: "invalid_request",
            error: Box::new(error),
        }
    }
}

impl<R: Asked> Intake<R> {
    fn of(
        request: R,
        declared: Option<Level>,
        prefer: Option<Route>,
        (prompt_tokens, scan): (u64, Scan),
    ) -> Self {
        Self {
            request,
            declared,
            prefer,
            prompt_tokens,
            scan,
        }
    }

    /// What the policy knows of the request, from `tenant`.
    pub fn facts<'a>(
        &'a self,
        tenant: &'a str,
        headers: &'a (dyn RequestHeaders + Sync),
    ) -> RequestFacts<'a> {
        RequestFacts {
            tenant,
            model: self.request.model(),
            max_tokens: self.request.max_tokens(),
            body: self.request.body(),
            headers,
            declared: self.declared,
            scan: &self.scan,
            prefer: self.prefer,
            prompt_tokens: self.prompt_tokens,
        }
    }
}

/// Parses a body and reads the hints; the scan is the caller's to run.
fn parse(bytes: &[u8], headers: &HeaderMap) -> Result<(ChatRequest, Option<Level>, Option<Route>), Refused> {
    let request = parse_chat_request(bytes).map_err(|e| Refused::invalid(e.into()))?;
    let (declared, prefer) = client_hints(headers).map_err(Refused::invalid)?;
    Ok((request, declared, prefer))
}

/// Reads a whole request on the calling thread.
pub fn read(bytes: &[u8], headers: &HeaderMap, scanner: &Scanner) -> Result<Intake, Refused> {
    let (request, declared, prefer) = parse(bytes, headers)?;
    let scanned = scan_request(scanner, &request);
    Ok(Intake::of(request, declared, prefer, scanned))
}

/// Reads a request as the handler receives it. A large body is scanned on the blocking pool (a few MiB
/// take tens of milliseconds), so that it holds up no other request on this runtime thread.
pub async fn read_body(
    body: Result<Bytes, BytesRejection>,
    max_body_bytes: usize,
    headers: &HeaderMap,
    scanner: &Scanner,
) -> Result<Intake, Refused> {
    let bytes = body_bytes(body, max_body_bytes)?;
    if bytes.len() <= SCAN_INLINE_BYTES {
        return read(&bytes, headers, scanner);
    }
    let (request, declared, prefer) = parse(&bytes, headers)?;
    let (request, scanned) = scan_blocking(request, scanner, scan_request).await?;
    Ok(Intake::of(request, declared, prefer, scanned))
}

/// Scans a large request on the blocking pool, so that it holds up no other request on this thread.
async fn scan_blocking<R: Send + 'static>(
    request: R,
    scanner: &Scanner,
    scan: fn(&Scanner, &R) -> (u64, Scan),
) -> Result<(R, (u64, Scan)), Refused> {
    let scanner = scanner.clone();
    tokio::task::spawn_blocking(move || {
        let scanned = scan(&scanner, &request);
        (request, scanned)
    })
    .await
    .map_err(|e| Refused {
        reason: "internal",
        error: Box::new(ApiError::internal(format!("The content scan failed: {e}"))),
    })
}

/// Reads an embeddings request as the handler receives it: every string scanned (as for chat, on the
/// blocking pool when large); inputs given as token ids cannot be read, so the scan is incomplete and the
/// request restricted.
pub async fn read_embeddings(
    body: Result<Bytes, BytesRejection>,
    max_body_bytes: usize,
    headers: &HeaderMap,
    scanner: &Scanner,
) -> Result<Intake<EmbeddingRequest>, Refused> {
    let bytes = body_bytes(body, max_body_bytes)?;
    let request = parse_embedding_request(&bytes).map_err(|e| Refused::invalid(e.into()))?;
    let (declared, prefer) = client_hints(headers).map_err(Refused::invalid)?;
    if bytes.len() <= SCAN_INLINE_BYTES {
        let scanned = scan_embeddings(scanner, &request);
        return Ok(Intake::of(request, declared, prefer, scanned));
    }
    let (request, scanned) = scan_blocking(request, scanner, scan_embeddings).await?;
    Ok(Intake::of(request, declared, prefer, scanned))
}

/// Scans every string of an embeddings request; inputs given as token ids make the scan incomplete.
/// Returns the estimated input tokens and what was found.
fn scan_embeddings(scanner: &Scanner, request: &EmbeddingRequest) -> (u64, Scan) {
    let texts = strings(&request.body);
    let bytes = texts.iter().map(|t| t.len()).sum::<usize>();
    let token_ids: usize = request
        .inputs
        .iter()
        .map(|i| match i {
            crate::api::embeddings::EmbeddingInput::Tokens(t) => t.len(),
            crate::api::embeddings::EmbeddingInput::Text(_) => 0,
        })
        .sum();
    let mut scan = scanner.scan_all(texts);
    if request.token_inputs() > 0 {
        scan.fail_closed(sluice_sensitivity::Incomplete::TokenIds {
            inputs: request.token_inputs(),
        });
    }
    (estimate_tokens(bytes) + token_ids as u64, scan)
}

/// The body's bytes, or why it could not be read.
fn body_bytes(body: Result<Bytes, BytesRejection>, max_body_bytes: usize) -> Result<Bytes, Refused> {
    match body {
        Ok(b) => Ok(b),
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(Refused {
            reason: "too_large",
            error: Box::new(ApiError::too_large(max_body_bytes)),
        }),
        Err(r) => Err(Refused::invalid(ApiError::invalid(
            "invalid_body",
            format!("Cannot read the body: {}", r.body_text()),
        ))),
    }
}

/// What a client may say about routing in its headers: the level it declares (`x-sluice-sensitivity`) and
/// the route it prefers (`x-sluice-prefer`); a value that is neither is its error. `x-sluice-fallback`, read
/// by the policy, is checked here too: its one value is `none` (in any case, as the policy reads it), and a
/// typo must not pass for consent.
pub fn client_hints(headers: &HeaderMap) -> Result<(Option<Level>, Option<Route>), ApiError> {
    let declared = match headers.get(&X_SENSITIVITY) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<Level>().ok())
                .ok_or_else(|| {
                    ApiError::invalid(
                        "invalid_sensitivity",
                        "x-sluice-sensitivity must be public, internal, confidential or restricted.",
                    )
                })?,
        ),
    };
    let prefer = match headers.get(&X_PREFER).map(|v| v.to_str().map(str::trim)) {
        None => None,
        Some(Ok("local")) => Some(Route::Local),
        Some(Ok("cloud")) => Some(Route::Cloud),
        Some(_) => {
            return Err(ApiError::invalid(
                "invalid_prefer",
                "x-sluice-prefer must be local or cloud.",
            ));
        }
    };
    if headers
        .get_all(&X_FALLBACK)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"none"))
    {
        return Err(ApiError::invalid(
            "invalid_fallback",
            "x-sluice-fallback must be none (it forbids serving the request with a local substitute).",
        ));
    }
    Ok((declared, prefer))
}

/// Scans every string of a request, object keys included: whatever reaches a backend has been seen.
/// Returns the estimated prompt tokens (from the same strings) and what was found.
pub fn scan_request(scanner: &Scanner, request: &ChatRequest) -> (u64, Scan) {
    let texts = strings(&request.body);
    let bytes = texts.iter().map(|t| t.len()).sum();
    (estimate_tokens(bytes), scanner.scan_all(texts))
}
