//! Responses: bodies read under a byte limit, parsed under a memory limit
//! and stored truncated past a size; fields extracted; the attempt judged.
//!
//! Parsing and extraction are CPU work proportional to the body: the step
//! client runs [`handle_response`] on the blocking pool, never on an async
//! worker thread.

use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde_json::{Map, Value, json};

use super::{
    HttpConfig, ResponseRecord, StepError, StepErrorKind, classify_send_error, status_error,
};
use crate::connector::Step;
use crate::extract;
use crate::redact::Redactor;

/// What one parsed JSON value is reckoned to cost in memory beyond its text:
/// a `serde_json::Value` is 32 bytes, an object entry adds its key and map
/// slot.
pub(super) const BYTES_PER_VALUE: usize = 64;

/// Judges a read response: its stored record, the extracted fields (when
/// `expect` accepts the status) and the attempt's error, if any. The body
/// is parsed only when something needs it (it is stored whole, or fields
/// are extracted from it), and moved, not copied, into the record after
/// extraction.
pub(super) fn handle_response(
    config: &HttpConfig,
    step: &Step,
    redactor: &Redactor,
    status: u16,
    headers: &HeaderMap,
    bytes: Vec<u8>,
) -> (ResponseRecord, Map<String, Value>, Option<StepError>) {
    let accepted = step.accepts(status);
    let max_stored = config.max_stored_body_bytes;
    let needed = bytes.len() <= max_stored || (accepted && !step.extract.is_empty());
    let parsed = if needed {
        parse(headers, &bytes, config.max_parsed_body_bytes)
    } else {
        Ok(Value::Null)
    };
    let record = |body: Value| ResponseRecord {
        status,
        headers: redactor.headers(headers, &[]),
        body: redactor.value(body),
    };
    let parsed = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            let body = truncated(&bytes, max_stored, redactor);
            let error = if accepted {
                e
            } else {
                status_error(step, status, headers)
            };
            return (record(body), Map::new(), Some(error));
        }
    };
    if !accepted {
        let error = status_error(step, status, headers);
        return (
            record(stored(parsed, &bytes, max_stored, redactor)),
            Map::new(),
            Some(error),
        );
    }
    let extracted = extract::extract_all(&step.extract, &parsed);
    let record = record(stored(parsed, &bytes, max_stored, redactor));
    match extracted {
        Ok(extracted) => {
            let extracted = match redactor.value(Value::Object(extracted)) {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            // A secret extract is kept (later steps use it) but redacted
            // from the stored response, wherever the provider echoed it.
            let Some(secrets) = Redactor::of_secret_extracts(step, &extracted) else {
                return (record, extracted, None);
            };
            let record = ResponseRecord {
                status: record.status,
                headers: match secrets.value(Value::Object(record.headers)) {
                    Value::Object(m) => m,
                    _ => Map::new(),
                },
                body: secrets.value(record.body),
            };
            // Other fields of the step may select the secret too (`$`).
            let extracted = extracted
                .into_iter()
                .map(|(field, value)| match step.extract.get(&field) {
                    Some(spec) if !spec.secret => (field, secrets.value(value)),
                    _ => (field, value),
                })
                .collect();
            (record, extracted, None)
        }
        Err(e) => (
            record,
            Map::new(),
            Some(StepError::fatal(StepErrorKind::Extract, e.to_string())),
        ),
    }
}

/// Reads the body, failing once it exceeds `max` bytes.
pub(super) async fn read_limited(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, StepError> {
    let too_large = || {
        StepError::fatal(
            StepErrorKind::ResponseTooLarge,
            format!("the response body exceeds {max} bytes"),
        )
    };
    if response
        .content_length()
        .is_some_and(|len| len > max as u64)
    {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if bytes.len() + chunk.len() > max {
                    return Err(too_large());
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(bytes),
            Err(e) => return Err(classify_send_error(&e)),
        }
    }
}

/// The body as a value: parsed JSON when it is (or looks like) JSON, else
/// text. A JSON body whose parsed form is reckoned ([`parsed_size`]) to take
/// more than `max_parsed` bytes fails with
/// [`StepErrorKind::ParsedBodyTooLarge`] before anything is allocated for it.
pub(super) fn parse(
    headers: &HeaderMap,
    bytes: &[u8],
    max_parsed: usize,
) -> Result<Value, StepError> {
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"));
    let looks_json = matches!(
        bytes.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    );
    if is_json || looks_json {
        let size = parsed_size(bytes);
        if size > max_parsed {
            return Err(StepError::fatal(
                StepErrorKind::ParsedBodyTooLarge,
                format!(
                    "the parsed response body would take about {size} bytes, more than {max_parsed}"
                ),
            ));
        }
        if let Ok(v) = serde_json::from_slice(bytes) {
            return Ok(v);
        }
    }
    Ok(Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// An upper estimate of the memory the parsed form of the JSON text `bytes`
/// takes: its length plus [`BYTES_PER_VALUE`] per value and key. Values are
/// counted from the structure outside strings: the root, and one after each
/// `[`, `{`, `,` and `:`.
pub(super) fn parsed_size(bytes: &[u8]) -> usize {
    let mut values = 1usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b'[' | b'{' | b',' | b':') {
            values += 1;
        }
    }
    bytes
        .len()
        .saturating_add(values.saturating_mul(BYTES_PER_VALUE))
}

/// The body as stored: whole when its bytes fit `max`, else the marker
/// with the original size and a preview of the original bytes.
pub(super) fn stored(body: Value, bytes: &[u8], max: usize, redactor: &Redactor) -> Value {
    if bytes.len() <= max {
        return body;
    }
    truncated(bytes, max, redactor)
}

/// The marker stored for a body that is not stored whole: its size and a
/// preview of its first `max` bytes (at most its length), ending before
/// any secret the cut would halve (the caller redacts the rest).
pub(super) fn truncated(bytes: &[u8], max: usize, redactor: &Redactor) -> Value {
    // Decoded as far past the cut as the longest secret reaches, so that a
    // secret across it is seen whole.
    let window = max.saturating_add(redactor.longest()).min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[..window]);
    let preview = &text[..redactor.cut(&text, max)];
    // Bytes that are no UTF-8 decode as U+FFFD; drop them at the end.
    let preview = preview.trim_end_matches('\u{FFFD}');
    json!({"truncated": true, "original_size": bytes.len(), "preview": preview})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_bodies_are_stored_truncated_with_their_size() {
        let none = Redactor::of_texts(&[]);
        let stored_body = stored(Value::String("abcdefgh".into()), b"abcdefgh", 4, &none);
        assert_eq!(
            stored_body,
            json!({"truncated": true, "original_size": 8, "preview": "abcd"})
        );
        assert_eq!(
            stored(Value::String("abc".into()), b"abc", 4, &none),
            json!("abc")
        );
        // A character cut in half is left out.
        assert_eq!(truncated("abcé".as_bytes(), 4, &none)["preview"], "abc");
    }

    #[test]
    fn a_preview_ends_before_a_secret_its_cut_would_halve() {
        let secret = Redactor::of_texts(&["s3cr3t".to_owned()]);
        let body = b"key=s3cr3t&more";
        // The cut falls inside the secret at every length from 5 to 9.
        for max in 5..=9 {
            assert_eq!(truncated(body, max, &secret)["preview"], "key=", "{max}");
        }
        assert_eq!(truncated(body, 4, &secret)["preview"], "key=");
        // Whole before the cut: kept (and redacted with the rest).
        assert_eq!(truncated(body, 10, &secret)["preview"], "key=s3cr3t");
        assert_eq!(truncated(body, 11, &secret)["preview"], "key=s3cr3t&");
    }

    #[test]
    fn parsed_size_counts_values_outside_strings() {
        let cases: [(&str, usize); 5] = [
            ("1", 1),
            ("[1,2,3]", 4),
            (r#"{"a":1,"b":[2]}"#, 6),
            (r#"["a,b:[{", "\",{"]"#, 3),
            (r#"{"k\\":"v"}"#, 3),
        ];
        for (text, values) in cases {
            assert_eq!(
                parsed_size(text.as_bytes()),
                text.len() + values * BYTES_PER_VALUE,
                "{text}"
            );
        }
    }

    #[test]
    fn json_past_the_parsed_limit_is_refused_and_text_is_not_parsed() {
        let headers = HeaderMap::new();
        let many = format!("[{}0]", "0,".repeat(1000));
        let e = parse(&headers, many.as_bytes(), 10_000).expect_err("over the limit");
        assert_eq!(e.kind, StepErrorKind::ParsedBodyTooLarge);
        assert_eq!(
            parse(&headers, many.as_bytes(), 1_000_000)
                .expect("under the limit")
                .as_array()
                .map(Vec::len),
            Some(1001)
        );
        // Text is kept as text whatever its punctuation.
        assert_eq!(
            parse(&headers, b"a,b,c", 1).expect("text"),
            Value::String("a,b,c".into())
        );
    }
}
