//! The bearer token of the mutating endpoints.
//!
//! The agent keeps only the token's SHA-256, and compares the SHA-256 of
//! what a client presents with it in constant time: neither the content
//! nor the length of the token leaks through timing, and the token itself
//! is never held where a log line could reach it.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Secret;

/// The SHA-256 of the configured token.
#[derive(Clone)]
pub(crate) struct TokenDigest([u8; 32]);

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest(<redacted>)")
    }
}

impl TokenDigest {
    pub(crate) fn new(token: &Secret) -> Self {
        TokenDigest(Sha256::digest(token.expose().as_bytes()).into())
    }

    fn matches(&self, presented: &[u8]) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented).into();
        self.0.ct_eq(&presented).into()
    }
}

/// The verdict on a request to a mutating endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The right token.
    Allowed,
    /// No token is configured: mutating endpoints are disabled.
    NotConfigured,
    /// No `Authorization: Bearer` header.
    Missing,
    /// A bearer token that is not the configured one.
    Wrong,
}

/// Checks an `Authorization` header value against the configured token.
pub(crate) fn check(token: Option<&TokenDigest>, authorization: Option<&[u8]>) -> Verdict {
    let Some(token) = token else {
        return Verdict::NotConfigured;
    };
    let Some(presented) = authorization.and_then(bearer) else {
        return Verdict::Missing;
    };
    if token.matches(presented) {
        Verdict::Allowed
    } else {
        Verdict::Wrong
    }
}

/// The token of a `Bearer` credential (the scheme is case-insensitive,
/// RFC 9110 section 11.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = value[7..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let token = TokenDigest::new(&Secret::new("s3cret-token"));
        let t = Some(&token);
        assert_eq!(check(t, Some(b"Bearer s3cret-token")), Verdict::Allowed);
        assert_eq!(check(t, Some(b"bearer  s3cret-token ")), Verdict::Allowed);
        assert_eq!(check(t, Some(b"BEARER s3cret-token")), Verdict::Allowed);
        assert_eq!(check(t, Some(b"Bearer s3cret-toke")), Verdict::Wrong);
        assert_eq!(check(t, Some(b"Bearer s3cret-token2")), Verdict::Wrong);
        assert_eq!(check(t, Some(b"Bearer ")), Verdict::Missing);
        assert_eq!(check(t, Some(b"Basic czNjcmV0")), Verdict::Missing);
        assert_eq!(check(t, Some(b"s3cret-token")), Verdict::Missing);
        assert_eq!(check(t, None), Verdict::Missing);
        assert_eq!(
            check(None, Some(b"Bearer s3cret-token")),
            Verdict::NotConfigured
        );
    }

    #[test]
    fn digest_debug_is_redacted() {
        let token = TokenDigest::new(&Secret::new("s3cret-token"));
        assert_eq!(format!("{token:?}"), "TokenDigest(<redacted>)");
    }
}
