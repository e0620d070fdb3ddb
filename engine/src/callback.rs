//! Completion callbacks and subscription events: the URL rule, the event
//! types, the signed payload, and the retry schedule (exponential, up to
//! 24 hours). Pure; the outbox is `store::callbacks` (subscriptions:
//! `store::subscriptions`), the sender the worker's callback loop.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use crate::webhook;

/// Longest callback URL.
pub const MAX_URL_LEN: usize = 2048;
/// How long a callback is retried before it is given up.
pub const GIVE_UP_AFTER: Duration = Duration::hours(24);
/// The first retry delay; each later one doubles, up to [`MAX_DELAY`].
pub const FIRST_DELAY: Duration = Duration::seconds(5);
/// The longest delay between two attempts.
pub const MAX_DELAY: Duration = Duration::hours(1);
/// The event types a subscription may name, besides [`ALL_EVENTS`].
pub const EVENT_TYPES: [&str; 4] = [
    "execution.succeeded",
    "execution.failed",
    "execution.cancelled",
    "credential.needs_reconnect",
];
/// The wildcard: every event type, present and future.
pub const ALL_EVENTS: &str = "*";

/// Checks a subscription's event list: 1 to 5 known types (or `*`), no
/// repeats.
///
/// # Errors
///
/// What is wrong with it.
pub fn check_events(events: &[String]) -> Result<(), String> {
    if events.is_empty() || events.len() > EVENT_TYPES.len() + 1 {
        return Err(format!(
            "must list 1 to {} event types",
            EVENT_TYPES.len() + 1
        ));
    }
    for (i, e) in events.iter().enumerate() {
        if e != ALL_EVENTS && !EVENT_TYPES.contains(&e.as_str()) {
            return Err(format!(
                "unknown event type `{e}`: expected `{ALL_EVENTS}` or one of {}",
                EVENT_TYPES.join(", ")
            ));
        }
        if events[..i].contains(e) {
            return Err(format!("`{e}` is listed twice"));
        }
    }
    Ok(())
}

/// Checks a callback URL: absolute `http` or `https` with a host, no
/// credentials, at most [`MAX_URL_LEN`] characters, and written as it is
/// stored and sent: starting with `http://` or `https://` in lower case.
/// (The URL parser also accepts `HTTPS://h`, `https:h` and surrounding
/// blanks, which the stored URL's own check refuses.)
///
/// # Errors
///
/// What is wrong with it.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!("must be at most {MAX_URL_LEN} characters"));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("must start with `http://` or `https://`".to_owned());
    }
    // An http(s) URL parses only with a host.
    let parsed = url::Url::parse(url).map_err(|e| format!("must be an absolute URL: {e}"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials".to_owned());
    }
    Ok(())
}

/// When to try again after `attempts` failed attempts of a callback
/// created at `created_at`; `None` once 24 hours have passed.
pub fn next_attempt(
    attempts: i32,
    created_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    let delay = FIRST_DELAY
        .checked_mul(2_i32.saturating_pow(exp))
        .unwrap_or(MAX_DELAY)
        .min(MAX_DELAY);
    let at = now + delay;
    (at <= created_at + GIVE_UP_AFTER).then_some(at)
}

/// The Standard Webhooks headers for `body`: `webhook-id`,
/// `webhook-timestamp` and `webhook-signature` with one `v1,` signature
/// per key (the current secret first, then the previous one during a
/// rotation), space-separated.
pub fn signature_headers(
    message_id: &str,
    timestamp: i64,
    body: &[u8],
    keys: &[Vec<u8>],
) -> [(&'static str, String); 3] {
    let signatures: Vec<String> = keys
        .iter()
        .map(|k| webhook::sign_standard(k, message_id, timestamp, body))
        .collect();
    [
        ("webhook-id", message_id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signatures.join(" ")),
    ]
}

/// The JSON body of a callback: `type` (the event), `timestamp`, and the
/// execution summary as `data`.
pub fn payload(event: &str, at: DateTime<Utc>, execution: Value) -> Value {
    json!({"type": event, "timestamp": at, "data": execution})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_absolute_http_without_credentials() {
        let longest = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN - 20));
        assert_eq!(longest.len(), MAX_URL_LEN);
        for ok in [
            "https://example.com/hook",
            "http://10.0.0.1:8080/x?y=1",
            &longest,
        ] {
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "ftp://example.com",
            "/relative",
            "https://user:pw@example.com/",
            "https://user@example.com/",
            "https://:pw@example.com/",
            "https://",
            &format!("{longest}a"),
            // Parsed as https://example.com/, but not written so.
            "HTTPS://example.com/",
            "Http://example.com/",
            " https://example.com/",
            "https:example.com/",
            "https:\\\\example.com\\",
            "https:/example.com/",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_lists_name_known_types_once() {
        let list = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(check_events(&list(&["*"])), Ok(()));
        assert_eq!(check_events(&list(&EVENT_TYPES)), Ok(()));
        let mut all = list(&EVENT_TYPES);
        all.push("*".to_owned());
        assert_eq!(check_events(&all), Ok(()));
        for bad in [
            list(&[]),
            list(&["execution.started"]),
            list(&["execution.failed", "execution.failed"]),
            list(&["*", "*", "*", "*", "*", "*"]),
        ] {
            assert!(check_events(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn retries_back_off_exponentially_and_stop_after_a_day() {
        let t0 = Utc::now();
        let delays: Vec<i64> = (1..=4)
            .map(|n| next_attempt(n, t0, t0).map(|at| (at - t0).num_seconds()))
            .map(|d| d.expect("within a day"))
            .collect();
        assert_eq!(delays, [5, 10, 20, 40]);
        assert_eq!(next_attempt(30, t0, t0).map(|at| at - t0), Some(MAX_DELAY));
        assert_eq!(next_attempt(3, t0, t0 + Duration::hours(24)), None);
    }

    #[test]
    fn every_key_signs_and_the_signatures_are_space_separated() {
        let keys = vec![
            b"new-key-0123456789".to_vec(),
            b"old-key-0123456789".to_vec(),
        ];
        let [id, ts, sig] = signature_headers("msg_1", 1_700_000_000, b"{}", &keys);
        assert_eq!((id.1.as_str(), ts.1.as_str()), ("msg_1", "1700000000"));
        let parts: Vec<&str> = sig.1.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            parts[0],
            webhook::sign_standard(&keys[0], "msg_1", 1_700_000_000, b"{}")
        );
        assert_eq!(
            parts[1],
            webhook::sign_standard(&keys[1], "msg_1", 1_700_000_000, b"{}")
        );
    }
}
