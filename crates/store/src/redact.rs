//! Keeping secrets out of messages: the one place where warmspare turns
//! URLs, passwords and error chains into text that may be printed or logged.
//!
//! Every crate that builds a message from a connection URL or a driver's
//! error uses these helpers rather than its own copy, so that a fix to the
//! redaction applies everywhere at once.

/// The userinfo of a URL-looking string (`scheme://user:pw@host/...`)
/// replaced with `***`. Works on strings that do not parse as URLs.
///
/// ```
/// use warmspare_store::redact::redact_authority;
/// assert_eq!(redact_authority("s3://key:secret@bucket/p"), "s3://***@bucket/p");
/// assert_eq!(redact_authority("s3://bucket/a@b"), "s3://bucket/a@b");
/// ```
pub fn redact_authority(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_owned();
    };
    let start = scheme_end + 3;
    let rest = &text[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{}***{}", &text[..start], &rest[at..]),
        None => text.to_owned(),
    }
}

/// A URL with its password and any secret query parameter (`password=`,
/// `sslpassword=`, `token=`, ...) replaced by `***`; the user name stays,
/// because it helps operators. Text that does not parse as a URL has its
/// whole userinfo replaced instead ([`redact_authority`]).
///
/// ```
/// use warmspare_store::redact::redact_url;
/// assert_eq!(
///     redact_url("postgres://builder:hunter2@10.0.1.20:5432/builder"),
///     "postgres://builder:***@10.0.1.20:5432/builder"
/// );
/// assert_eq!(
///     redact_url("postgres://u@db/x?password=hunter2&sslmode=require"),
///     "postgres://u@db/x?password=***&sslmode=require"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return redact_authority(url);
    };
    if parsed.password().is_some() {
        // Only fails for URLs that cannot have credentials.
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query_pairs().any(|(k, _)| is_secret_param(&k)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_param(&k) {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    // `set_password` percent-encodes the stars; show them as written.
    parsed.to_string().replacen("%2A%2A%2A@", "***@", 1)
}

/// Whether a URL query parameter named `key` carries a secret.
pub fn is_secret_param(key: &str) -> bool {
    matches!(
        key.to_ascii_lowercase().as_str(),
        "password" | "pass" | "secret" | "token" | "sslpassword"
    )
}

/// The password of a URL, both as written (percent-encoded) and decoded, so
/// that [`scrub`] catches either spelling in a driver's message. Empty for
/// a URL without a password or a string that is not a URL.
pub fn url_passwords(url: &str) -> Vec<String> {
    let Ok(parsed) = url::Url::parse(url) else {
        return Vec::new();
    };
    let Some(raw) = parsed.password().filter(|p| !p.is_empty()) else {
        return Vec::new();
    };
    let decoded = percent_decode(raw);
    if decoded == raw {
        vec![decoded]
    } else {
        vec![raw.to_owned(), decoded]
    }
}

/// `text` with every non-empty secret replaced by `***`.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), "***");
        }
    }
    text
}

/// An error and its sources on one line, skipping a source whose text the
/// line already contains.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Percent-decoding that keeps malformed escapes as they are.
fn percent_decode(text: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_found_and_scrubbed_in_both_spellings() {
        let secrets = url_passwords("postgres://u:p%40ss%2Fword@localhost/db");
        assert_eq!(secrets, ["p%40ss%2Fword", "p@ss/word"]);
        let text = scrub("bad p@ss/word and p%40ss%2Fword", &secrets);
        assert_eq!(text, "bad *** and ***");
        assert!(url_passwords("postgres://u@localhost/db").is_empty());
        assert!(url_passwords("not a url").is_empty());
    }

    #[test]
    fn percent_decode_keeps_malformed_escapes() {
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert_eq!(percent_decode("%"), "%");
    }

    #[test]
    fn scrub_skips_empty_secrets() {
        assert_eq!(scrub("abc", &[String::new()]), "abc");
    }

    #[test]
    fn error_chain_joins_new_sources_only() {
        let inner = std::io::Error::other("disk gone");
        let outer = std::io::Error::other(inner);
        assert_eq!(error_chain(&outer), "disk gone");
    }
}
