//! Secrets and their redaction: the decrypted [`Credentials`] a step may
//! use, and the redaction of everything a step result holds: every
//! credential value, in every form a template or the HTTP client can give
//! it, becomes [`REDACTED`]; auth headers are redacted whole.

use std::collections::BTreeMap;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{HeaderMap, HeaderName};
use serde_json::{Map, Value};

/// What replaces a secret in anything stored or shown.
pub const REDACTED: &str = "[REDACTED]";

/// Decrypted credentials available to one step: name → field → value.
pub type Credentials = BTreeMap<String, BTreeMap<String, String>>;

/// The entry of [`Credentials`] that holds the text forms of the run's
/// secret extracts ([`secret_texts`]), so that every later request and
/// response is redacted of them like of a credential. It is no valid
/// credential name, and templates never see it as one.
pub const SECRET_EXTRACTS: &str = "(secret extracts)";

/// The text forms redaction looks for in a secret extracted value: its
/// strings, and its numbers in their JSON form, at any depth (booleans and
/// null are no secrets).
pub fn secret_texts(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(items) => items.iter().for_each(|i| secret_texts(i, out)),
        Value::Object(map) => map.values().for_each(|v| secret_texts(v, out)),
        Value::Null | Value::Bool(_) => {}
    }
}

/// Replaces credential values (and their URL-encoded forms) with
/// [`REDACTED`].
pub(crate) struct Redactor {
    needles: Vec<String>,
}

impl Redactor {
    pub(crate) fn new(credentials: &Credentials) -> Self {
        Self::of_texts(credentials.values().flat_map(BTreeMap::values))
    }

    /// A redactor of `step`'s secret extracts in `extracted`, if it has any
    /// with a value.
    pub(crate) fn of_secret_extracts(
        step: &crate::connector::Step,
        extracted: &Map<String, Value>,
    ) -> Option<Self> {
        let mut texts = Vec::new();
        for (field, spec) in &step.extract {
            if spec.secret
                && let Some(value) = extracted.get(field)
            {
                secret_texts(value, &mut texts);
            }
        }
        (!texts.is_empty()).then(|| Self::of_texts(&texts))
    }

    /// A redactor of the given secret texts.
    pub(crate) fn of_texts<'a>(texts: impl IntoIterator<Item = &'a String>) -> Self {
        let mut needles: Vec<String> = Vec::new();
        for value in texts {
            if value.is_empty() {
                continue;
            }
            // Every form a template or the client can give it: raw, as a
            // URL component (ours and a strict one), form-encoded, and
            // XML-escaped.
            needles.push(value.clone());
            needles.push(crate::template::encode_component(value));
            needles.push(utf8_percent_encode(value, NON_ALPHANUMERIC).to_string());
            needles.push(url::form_urlencoded::byte_serialize(value.as_bytes()).collect());
            needles.push(crate::template::escape_xml(value));
        }
        // Longest first, so a secret containing another is replaced whole.
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        needles.dedup();
        Self { needles }
    }

    pub(crate) fn text(&self, s: &str) -> String {
        let mut out = s.to_owned();
        for needle in &self.needles {
            if out.contains(needle.as_str()) {
                out = out.replace(needle.as_str(), REDACTED);
            }
        }
        out
    }

    pub(crate) fn value(&self, v: Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.text(&s)),
            Value::Array(items) => Value::Array(items.into_iter().map(|i| self.value(i)).collect()),
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (self.text(&k), self.value(v)))
                    .collect(),
            ),
            // A numeric secret (a PIN, an account number) reads back as a
            // number once a provider echoes it as one.
            Value::Number(n) if self.needles.contains(&n.to_string()) => {
                Value::String(REDACTED.to_owned())
            }
            other => other,
        }
    }

    pub(crate) fn headers(&self, headers: &HeaderMap, secret: &[HeaderName]) -> Map<String, Value> {
        let mut out = Map::new();
        for name in headers.keys() {
            let joined = headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect::<Vec<_>>()
                .join(", ");
            let shown = if secret.contains(name) {
                REDACTED.to_owned()
            } else {
                self.text(&joined)
            };
            out.insert(name.as_str().to_owned(), Value::String(shown));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn redactor_replaces_raw_and_encoded_secrets() {
        let mut creds = Credentials::new();
        creds.insert(
            "c".into(),
            BTreeMap::from([("token".to_owned(), "s3cr et/+".to_owned())]),
        );
        let r = Redactor::new(&creds);
        assert_eq!(r.text("a s3cr et/+ b"), format!("a {REDACTED} b"));
        assert_eq!(r.text("q=s3cr%20et%2F%2B"), format!("q={REDACTED}"));
        assert_eq!(r.text("q=s3cr+et%2F%2B"), format!("q={REDACTED}"));
        assert_eq!(
            r.value(json!({"k": ["s3cr et/+"]})),
            json!({"k": [REDACTED]})
        );
    }

    #[test]
    fn numeric_secrets_are_redacted_as_numbers_too() {
        let mut creds = Credentials::new();
        creds.insert(
            "c".into(),
            BTreeMap::from([("pin".to_owned(), "482913".to_owned())]),
        );
        let r = Redactor::new(&creds);
        assert_eq!(
            r.value(json!({"pin": 482_913, "other": 482_914, "s": "482913"})),
            json!({"pin": REDACTED, "other": 482_914, "s": REDACTED})
        );
    }
}
