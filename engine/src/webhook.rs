//! Webhook signatures: verifying what providers send to a trigger
//! (Stripe, Shopify, Slack, GitHub, Standard Webhooks, a generic HMAC or a
//! shared header) and signing per Standard Webhooks. Pure.
//!
//! Every comparison of a secret or a signature is constant-time
//! (`Mac::verify_slice`), always over the raw body bytes as received;
//! timestamped schemes refuse a timestamp more than the tolerance (default
//! five minutes) away from now, either way.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use utoipa::ToSchema;

pub mod mapping;

type HmacSha256 = Hmac<Sha256>;

/// How far a signed timestamp may be from now by default (seconds).
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;
/// The prefix of a Standard Webhooks secret.
pub const WHSEC_PREFIX: &str = "whsec_";

/// How a trigger verifies its deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    /// Nothing is verified (anyone with the URL can start the connector).
    None,
    /// A header (`header`) must equal the secret.
    Header,
    /// `header` holds the HMAC-SHA256 of the body, hex or base64
    /// (`encoding`), after an optional `prefix`.
    HmacSha256,
    /// `Stripe-Signature: t=<ts>,v1=<hex HMAC of "<ts>.<body>">`.
    Stripe,
    /// `X-Shopify-Hmac-Sha256`: base64 HMAC of the body.
    Shopify,
    /// `X-Slack-Signature: v0=<hex HMAC of "v0:<ts>:<body>">` with
    /// `X-Slack-Request-Timestamp`.
    Slack,
    /// `X-Hub-Signature-256: sha256=<hex HMAC of the body>`.
    Github,
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64
    /// HMAC of "<id>.<ts>.<body>">`, keyed by the base64 after `whsec_`.
    StandardWebhooks,
}

impl Scheme {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Header => "header",
            Self::HmacSha256 => "hmac_sha256",
            Self::Stripe => "stripe",
            Self::Shopify => "shopify",
            Self::Slack => "slack",
            Self::Github => "github",
            Self::StandardWebhooks => "standard_webhooks",
        }
    }

    /// Whether the scheme needs a secret.
    pub fn needs_secret(self) -> bool {
        self != Self::None
    }
}

/// How a generic HMAC is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Lowercase or uppercase hexadecimal.
    #[default]
    Hex,
    /// Standard base64.
    Base64,
}

/// A scheme's settings other than the secret (stored in clear, shown).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The header holding the secret or signature (`header`,
    /// `hmac_sha256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The signature's encoding (`hmac_sha256`; default hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<Encoding>,
    /// Text before the signature, e.g. `sha256=` (`hmac_sha256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Largest distance of a signed timestamp from now, in seconds
    /// (`stripe`, `slack`, `standard_webhooks`; default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance_secs: Option<u64>,
    /// The header whose value identifies a delivery, for deduplication
    /// (`none`, `header`, `hmac_sha256`; default `Idempotency-Key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_header: Option<String>,
}

/// Why a delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// A header the scheme needs is absent.
    #[error("the `{0}` header is missing")]
    Missing(String),
    /// A header is not in the scheme's format.
    #[error("the `{0}` header is malformed")]
    Malformed(String),
    /// The signed timestamp is outside the tolerance.
    #[error("the signed timestamp is more than {0} seconds from now")]
    Stale(u64),
    /// No signature matches (or the shared header differs).
    #[error("the signature does not match")]
    Mismatch,
}

/// The header that identifies a delivery of the generic schemes when
/// their settings name none.
pub const DEFAULT_ID_HEADER: &str = "Idempotency-Key";

/// Checks the settings a scheme needs; `(field, message)` pairs.
pub fn check_settings(scheme: Scheme, settings: &Settings) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let header_ok = |h: &Option<String>| {
        h.as_deref().is_some_and(|h| {
            !h.is_empty()
                && h.len() <= 128
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    };
    let needs_header = matches!(scheme, Scheme::Header | Scheme::HmacSha256);
    if (needs_header || settings.header.is_some()) && !header_ok(&settings.header) {
        out.push((
            "verification.header",
            "a header name of 1 to 128 letters, digits, `-` and `_` (required for `header` and `hmac_sha256`)".to_owned(),
        ));
    }
    if settings.id_header.is_some() && !header_ok(&settings.id_header) {
        out.push((
            "verification.id_header",
            "must be a header name of letters, digits, `-` and `_`".to_owned(),
        ));
    }
    // The delivery id is stored (and shown): never the shared secret.
    let id_header = settings.id_header.as_deref().unwrap_or(DEFAULT_ID_HEADER);
    if scheme == Scheme::Header
        && settings
            .header
            .as_deref()
            .is_some_and(|h| h.eq_ignore_ascii_case(id_header))
    {
        out.push((
            "verification.id_header",
            format!(
                "`{id_header}` carries the shared secret (`verification.header`): the delivery id is stored, so it must be another header"
            ),
        ));
    }
    if settings
        .tolerance_secs
        .is_some_and(|t| !(1..=86_400).contains(&t))
    {
        out.push((
            "verification.tolerance_secs",
            "must be between 1 and 86400".to_owned(),
        ));
    }
    if settings.prefix.as_deref().is_some_and(|p| p.len() > 64) {
        out.push((
            "verification.prefix",
            "must be at most 64 characters".to_owned(),
        ));
    }
    out
}

/// The key a secret stands for: for Standard Webhooks the bytes its
/// base64 (after `whsec_`) encodes, otherwise the secret's own bytes.
///
/// # Errors
///
/// A Standard Webhooks secret that is not base64.
pub fn key_of(scheme: Scheme, secret: &str) -> Result<Vec<u8>, String> {
    if scheme == Scheme::StandardWebhooks {
        let b64 = secret.strip_prefix(WHSEC_PREFIX).unwrap_or(secret);
        let key = STANDARD
            .decode(b64)
            .map_err(|_| "must be `whsec_` followed by base64".to_owned())?;
        if key.len() < 16 {
            return Err("must encode at least 16 bytes".to_owned());
        }
        Ok(key)
    } else {
        Ok(secret.as_bytes().to_vec())
    }
}

/// Verifies a delivery: `header` looks a header up (case-insensitively),
/// `key` is [`key_of`] the secret.
///
/// # Errors
///
/// Why it is refused.
pub fn verify(
    scheme: Scheme,
    settings: &Settings,
    key: &[u8],
    header: &dyn Fn(&str) -> Option<String>,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), Failure> {
    let need = |name: &str| header(name).ok_or_else(|| Failure::Missing(name.to_owned()));
    let tolerance = settings.tolerance_secs.unwrap_or(DEFAULT_TOLERANCE_SECS);
    match scheme {
        Scheme::None => Ok(()),
        Scheme::Header => {
            let name = settings.header.as_deref().unwrap_or_default();
            let given = need(name)?;
            // Equal keys give equal tags; verify_slice compares the tags in
            // constant time, so the secret's length and bytes do not leak.
            let expected = mac(key, &[b"conveyor-shared-header"]);
            check(
                given.trim().as_bytes(),
                &[b"conveyor-shared-header"],
                &expected,
            )
        }
        Scheme::HmacSha256 => {
            let name = settings.header.as_deref().unwrap_or_default();
            let given = need(name)?;
            let prefix = settings.prefix.as_deref().unwrap_or("");
            let text = given
                .trim()
                .strip_prefix(prefix)
                .ok_or_else(|| Failure::Malformed(name.to_owned()))?;
            let tag = decode(text, settings.encoding.unwrap_or_default())
                .ok_or_else(|| Failure::Malformed(name.to_owned()))?;
            check(key, &[body], &tag)
        }
        Scheme::Shopify => {
            let name = "X-Shopify-Hmac-Sha256";
            let tag = decode(need(name)?.trim(), Encoding::Base64)
                .ok_or_else(|| Failure::Malformed(name.to_owned()))?;
            check(key, &[body], &tag)
        }
        Scheme::Github => {
            let name = "X-Hub-Signature-256";
            let tag = need(name)?
                .trim()
                .strip_prefix("sha256=")
                .and_then(|h| decode(h, Encoding::Hex))
                .ok_or_else(|| Failure::Malformed(name.to_owned()))?;
            check(key, &[body], &tag)
        }
        Scheme::Slack => {
            let ts = need("X-Slack-Request-Timestamp")?;
            fresh(&ts, "X-Slack-Request-Timestamp", tolerance, now)?;
            let name = "X-Slack-Signature";
            let tag = need(name)?
                .trim()
                .strip_prefix("v0=")
                .and_then(|h| decode(h, Encoding::Hex))
                .ok_or_else(|| Failure::Malformed(name.to_owned()))?;
            check(key, &[b"v0:", ts.trim().as_bytes(), b":", body], &tag)
        }
        Scheme::Stripe => {
            let name = "Stripe-Signature";
            let given = need(name)?;
            let mut ts = None;
            let mut tags = Vec::new();
            for part in given.split(',') {
                match part.trim().split_once('=') {
                    Some(("t", t)) => ts = Some(t.to_owned()),
                    Some(("v1", sig)) => tags.extend(decode(sig, Encoding::Hex)),
                    _ => {}
                }
            }
            let ts = ts.ok_or_else(|| Failure::Malformed(name.to_owned()))?;
            fresh(&ts, name, tolerance, now)?;
            any_matches(key, &[ts.as_bytes(), b".", body], &tags)
        }
        Scheme::StandardWebhooks => {
            let id = need("webhook-id")?;
            let ts = need("webhook-timestamp")?;
            fresh(&ts, "webhook-timestamp", tolerance, now)?;
            let tags: Vec<Vec<u8>> = need("webhook-signature")?
                .split_whitespace()
                .filter_map(|s| s.strip_prefix("v1,"))
                .filter_map(|s| decode(s, Encoding::Base64))
                .collect();
            let (id, ts) = (id.trim(), ts.trim());
            any_matches(
                key,
                &[id.as_bytes(), b".", ts.as_bytes(), b".", body],
                &tags,
            )
        }
    }
}

/// The provider's id of a delivery, which deduplicates its retries:
/// Stripe's event `id`, Slack's `event_id`, `X-GitHub-Delivery`,
/// `X-Shopify-Webhook-Id`, `webhook-id`; for the generic schemes the
/// `id_header` (default `Idempotency-Key`).
pub fn delivery_id(
    scheme: Scheme,
    settings: &Settings,
    header: &dyn Fn(&str) -> Option<String>,
    body: Option<&Value>,
) -> Option<String> {
    let field = |name: &str| {
        body.and_then(|b| b.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let id = match scheme {
        Scheme::Stripe => field("id"),
        Scheme::Slack => field("event_id"),
        Scheme::Github => header("X-GitHub-Delivery"),
        Scheme::Shopify => header("X-Shopify-Webhook-Id"),
        Scheme::StandardWebhooks => header("webhook-id"),
        Scheme::None | Scheme::Header | Scheme::HmacSha256 => {
            header(settings.id_header.as_deref().unwrap_or(DEFAULT_ID_HEADER))
        }
    };
    id.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// The `webhook-signature` value for one key: `v1,<base64 HMAC-SHA256 of
/// "<id>.<timestamp>.<body>">` (Standard Webhooks).
pub fn sign_standard(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let tag = mac(key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    format!("v1,{}", STANDARD.encode(tag))
}

/// HMAC-SHA256 over `parts`. HMAC takes a key of any length (longer ones
/// are hashed first), so `None` never happens in practice; callers treat
/// it as a mismatch.
fn mac_of(key: &[u8], parts: &[&[u8]]) -> Option<HmacSha256> {
    let mut m = HmacSha256::new_from_slice(key).ok()?;
    for p in parts {
        m.update(p);
    }
    Some(m)
}

fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    mac_of(key, parts)
        .map(|m| m.finalize().into_bytes().to_vec())
        .unwrap_or_default()
}

fn check(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> Result<(), Failure> {
    mac_of(key, parts)
        .ok_or(Failure::Mismatch)?
        .verify_slice(tag)
        .map_err(|_| Failure::Mismatch)
}

fn any_matches(key: &[u8], parts: &[&[u8]], tags: &[Vec<u8>]) -> Result<(), Failure> {
    if tags.iter().any(|tag| check(key, parts, tag).is_ok()) {
        Ok(())
    } else {
        Err(Failure::Mismatch)
    }
}

fn fresh(ts: &str, name: &str, tolerance: u64, now: DateTime<Utc>) -> Result<(), Failure> {
    let ts: i64 = ts
        .trim()
        .parse()
        .map_err(|_| Failure::Malformed(name.to_owned()))?;
    if now.timestamp().abs_diff(ts) > tolerance {
        return Err(Failure::Stale(tolerance));
    }
    Ok(())
}

fn decode(text: &str, encoding: Encoding) -> Option<Vec<u8>> {
    match encoding {
        Encoding::Base64 => STANDARD.decode(text.trim()).ok(),
        Encoding::Hex => {
            let text = text.trim().as_bytes();
            if !text.len().is_multiple_of(2) {
                return None;
            }
            text.chunks(2)
                .map(|pair| {
                    let hi = char::from(pair[0]).to_digit(16)?;
                    let lo = char::from(pair[1]).to_digit(16)?;
                    u8::try_from(hi * 16 + lo).ok()
                })
                .collect()
        }
    }
}

/// Lowercase hex of `bytes` (for signing in tests and docs).
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The HMAC-SHA256 of `parts` under `key`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    mac(key, parts)
}

#[cfg(test)]
mod tests;
