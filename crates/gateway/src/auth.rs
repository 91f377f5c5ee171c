//! API keys: stored as SHA-256 digests, each mapped to a tenant, compared in constant time. The key a
//! client presents is hashed at once and never kept, logged or echoed.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A configured key: its tenant and the SHA-256 of the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub tenant: String,
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// The SHA-256 of a key.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The SHA-256 of a key in hex, as `key_sha256` is written in the configuration.
pub fn hash_key_hex(key: &str) -> String {
    hash_key(key).iter().map(|b| format!("{b:02x}")).collect()
}

/// The tenant a request belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub std::sync::Arc<str>);

/// Tenant of requests when the gateway runs without keys.
pub const ANONYMOUS: &str = "anonymous";

/// The configured keys.
#[derive(Debug, Clone)]
pub struct KeyStore {
    keys: Vec<ApiKey>,
    allow_unauthenticated: bool,
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Malformed,
    Unknown,
}

impl AuthFailure {
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => {
                "Missing API key: send it as `Authorization: Bearer <key>` (the OpenAI SDKs do with api_key) or as `x-api-key: <key>` (the Anthropic SDKs do)."
            }
            Self::Malformed => "The Authorization header must be `Bearer <key>`.",
            Self::Unknown => "Incorrect API key provided.",
        }
    }
}

impl KeyStore {
    pub fn new(keys: Vec<ApiKey>, allow_unauthenticated: bool) -> Self {
        Self {
            keys,
            allow_unauthenticated,
        }
    }

    /// The tenant of the key in an `Authorization` header value. Every configured key is compared, in
    /// constant time, whatever matches, so timing tells nothing about which keys exist.
    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<Tenant, AuthFailure> {
        let Some(value) = header else {
            return if self.allow_unauthenticated {
                Ok(Tenant(ANONYMOUS.into()))
            } else {
                Err(AuthFailure::Missing)
            };
        };
        let digest = bearer_digest(value)?;
        let mut found: Option<&ApiKey> = None;
        for key in &self.keys {
            if bool::from(key.sha256.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        match found {
            Some(k) => Ok(Tenant(k.tenant.as_str().into())),
            None if self.allow_unauthenticated && self.keys.is_empty() => Ok(Tenant(ANONYMOUS.into())),
            None => Err(AuthFailure::Unknown),
        }
    }

    /// The tenant of a key sent bare (the `x-api-key` header of the Anthropic SDKs), compared as
    /// [`KeyStore::authenticate`] compares a bearer token.
    pub fn authenticate_key(&self, key: &[u8]) -> Result<Tenant, AuthFailure> {
        let key = key.trim_ascii();
        if key.is_empty() {
            return self.authenticate(None);
        }
        let mut header = b"Bearer ".to_vec();
        header.extend_from_slice(key);
        self.authenticate(Some(&header))
    }

    /// The configured tenants (metric labels are limited to these).
    pub fn tenants(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.tenant.as_str())
    }
}

/// The SHA-256 of the token in an `Authorization: Bearer TOKEN` header value.
fn bearer_digest(value: &[u8]) -> Result<[u8; 32], AuthFailure> {
    let token = match value.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => value[7..].trim_ascii(),
        _ => return Err(AuthFailure::Malformed),
    };
    if token.is_empty() {
        return Err(AuthFailure::Missing);
    }
    Ok(Sha256::digest(token).into())
}

/// The token the admin listener requires, as its SHA-256 (the token itself is never kept).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AdminToken(pub [u8; 32]);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// Whether an `Authorization` header value carries the token (compared in constant time).
    pub fn check(&self, header: Option<&[u8]>) -> Result<(), AuthFailure> {
        let digest = bearer_digest(header.ok_or(AuthFailure::Missing)?)?;
        if bool::from(self.0.ct_eq(&digest)) {
            Ok(())
        } else {
            Err(AuthFailure::Unknown)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> KeyStore {
        KeyStore::new(
            vec![
                ApiKey {
                    tenant: "acme".into(),
                    sha256: hash_key("sk-acme"),
                },
                ApiKey {
                    tenant: "globex".into(),
                    sha256: hash_key("sk-globex"),
                },
            ],
            false,
        )
    }

    #[test]
    fn keys_map_to_their_tenants() {
        let s = store();
        assert_eq!(s.authenticate(Some(b"Bearer sk-acme")), Ok(Tenant("acme".into())));
        assert_eq!(
            s.authenticate(Some(b"bearer  sk-globex ")),
            Ok(Tenant("globex".into()))
        );
        assert_eq!(
            s.authenticate(Some(b"Bearer sk-other")),
            Err(AuthFailure::Unknown)
        );
        assert_eq!(s.authenticate(Some(b"Basic abc")), Err(AuthFailure::Malformed));
        assert_eq!(s.authenticate(Some(b"Bearer ")), Err(AuthFailure::Missing));
        assert_eq!(s.authenticate(None), Err(AuthFailure::Missing));
    }

    #[test]
    fn hex_digest_matches_sha256sum() {
        // printf %s sk-acme | sha256sum
        assert_eq!(
            hash_key_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn without_keys_only_an_open_gateway_admits() {
        let open = KeyStore::new(Vec::new(), true);
        assert_eq!(open.authenticate(None), Ok(Tenant(ANONYMOUS.into())));
        let closed = KeyStore::new(Vec::new(), false);
        assert_eq!(closed.authenticate(None), Err(AuthFailure::Missing));
    }
}
