//! Extractors whose rejections use the API's error shape: JSON bodies (400
//! malformed, 413 too large, 415 not JSON, 422 with the field's path),
//! raw bodies (413), query strings (400 naming the parameter) and path
//! ids (404: an id that cannot exist is not found); and the bound on the
//! days and times the API reads ([`YEARS`]).

use std::ops::RangeInclusive;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, RawPathParams, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use base64::Engine as _;
use chrono::{DateTime, Datelike, Utc};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::ApiError;

/// A JSON request body deserialised strictly.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned + Serialize, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                let ct = ct.to_ascii_lowercase();
                ct.starts_with("application/json")
                    || (ct.starts_with("application/") && ct.contains("+json"))
            });
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the request body must be JSON (Content-Type: application/json)",
            ));
        }
        let ApiBytes(bytes) = ApiBytes::from_request(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// A request body as it came, within `CONVEYOR_MAX_REQUEST_BYTES`.
#[derive(Debug)]
pub struct ApiBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(ApiBytes)
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        "the request body exceeds the size limit (CONVEYOR_MAX_REQUEST_BYTES)",
                    )
                } else {
                    ApiError::bad_request(format!("could not read the request body: {e}"))
                }
            })
    }
}

/// Deserialises JSON bytes: syntax errors are 400, shape errors 422 naming
/// the field. A whole number written with a fraction (`3.0`) is read as
/// the integer it is where an integer is expected, and a struct written as
/// an array is refused (see [`conveyor_engine::json`]).
///
/// # Errors
///
/// As above; also 422 for a string or key holding the NUL character
/// (`\u0000`), which PostgreSQL cannot store.
pub fn parse_json<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Result<T, ApiError> {
    // Syntax first: a shape error before a syntax error must not hide that
    // the body is not JSON at all.
    let value: Value = serde_json::from_slice(bytes).map_err(|e| malformed(&e))?;
    refuse_nul(&value, "request body")?;
    conveyor_engine::json::from_value(&value).map_err(|e| {
        ApiError::validation(
            format!("invalid request body: {e}"),
            json!([{"path": e.path, "message": e.message}]),
        )
    })
}

fn malformed(e: &serde_json::Error) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "malformed_json",
        format!("the request body is not valid JSON: {e}"),
    )
}

/// 422 naming the first string or key of `value` (`what`: "request body")
/// that holds the NUL character (`\u0000`), which PostgreSQL cannot store.
///
/// # Errors
///
/// As above.
pub fn refuse_nul(value: &Value, what: &str) -> Result<(), ApiError> {
    match nul_at(value) {
        Some(path) => {
            let message = "must not contain the NUL character (\\u0000)";
            Err(ApiError::validation(
                format!("invalid {what}: {}", message_at(&path, message)),
                json!([{"path": path, "message": message}]),
            ))
        }
        None => Ok(()),
    }
}

/// The path (in the API's notation) of the first string or key holding a
/// NUL character.
fn nul_at(value: &Value) -> Option<String> {
    fn walk(value: &Value, path: &mut String) -> bool {
        let len = path.len();
        match value {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
                path.truncate(len);
                conveyor_engine::json::push_index(path, i);
                walk(item, path)
            }),
            Value::Object(map) => map.iter().any(|(key, item)| {
                path.truncate(len);
                key.contains('\0') || {
                    conveyor_engine::json::push_key(path, key);
                    walk(item, path)
                }
            }),
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
    }
    let mut path = String::new();
    walk(value, &mut path).then_some(path)
}

fn message_at(path: &str, message: &str) -> String {
    if path.is_empty() {
        message.to_owned()
    } else {
        format!("{path}: {message}")
    }
}

/// A query string deserialised strictly; problems are 400 naming the
/// parameter, and so is a parameter holding the NUL character (`%00`):
/// PostgreSQL can neither store nor compare text holding one.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        // Only `%00` decodes to NUL; most query strings skip the second read.
        if parts.uri.query().is_some_and(|q| q.contains("%00"))
            && let Ok(Query(pairs)) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            && let Some((name, _)) = pairs
                .iter()
                .find(|(name, value)| name.contains('\0') || value.contains('\0'))
        {
            return Err(ApiError::bad_request(format!(
                "invalid query string: `{}` must not contain the NUL character (%00)",
                name.replace('\0', "%00")
            )));
        }
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {}", e.body_text())))
    }
}

/// A path parameter; one that does not parse, or holds the NUL character
/// (`%00`), names nothing that exists.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let not_found = || ApiError::not_found("resource");
        // PostgreSQL cannot compare text holding NUL: no stored id holds one.
        let raw = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| not_found())?;
        if raw.iter().any(|(_, value)| value.contains('\0')) {
            return Err(not_found());
        }
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|_| not_found())
    }
}

/// A keyset pagination position: the last row's `created_at` and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// `created_at` of the last row returned.
    pub created_at: DateTime<Utc>,
    /// Id of the last row returned.
    pub id: Uuid,
}

impl Cursor {
    /// The opaque form handed to callers.
    pub fn encode(&self) -> String {
        let raw = format!("{}|{}", self.created_at.timestamp_micros(), self.id);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// Parses a cursor from a previous page.
    ///
    /// # Errors
    ///
    /// 400 when the cursor was not produced by this API.
    pub fn decode(text: &str) -> Result<Self, ApiError> {
        let bad =
            || ApiError::bad_request("invalid `cursor`: pass the `next_cursor` of a previous page");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let (micros, id) = raw.split_once('|').ok_or_else(bad)?;
        let micros: i64 = micros.parse().map_err(|_| bad())?;
        Ok(Self {
            created_at: DateTime::from_timestamp_micros(micros)
                .filter(in_years)
                .ok_or_else(bad)?,
            id: id.parse().map_err(|_| bad())?,
        })
    }
}

/// The years a day or time the API reads may fall in: RFC 3339's
/// four-digit years. PostgreSQL stores no time before 4713 BC (nor after
/// 294276 AD) and chrono's day arithmetic panics at its own ends (years
/// -262143 and 262142), so input bounded where it is read reaches
/// neither.
pub const YEARS: RangeInclusive<i32> = 1..=9999;

/// Whether `t` falls in [`YEARS`].
pub(crate) fn in_years(t: &impl Datelike) -> bool {
    YEARS.contains(&t.year())
}

/// Reads an optional day or time (`NaiveDate`, `DateTime<Utc>`) and
/// refuses one outside [`YEARS`], so the refusal names its field: for
/// `#[serde(default, deserialize_with = "crate::extract::bounded")]`.
///
/// # Errors
///
/// The value's own errors; a day or time outside [`YEARS`].
pub fn bounded<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Datelike,
{
    match Option::<T>::deserialize(d)? {
        Some(t) if !in_years(&t) => Err(D::Error::custom(format!(
            "must fall in the years {} to {}",
            YEARS.start(),
            YEARS.end()
        ))),
        read => Ok(read),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_rejected() {
        let c = Cursor {
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).expect("time"),
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&c.encode()).expect("decode"), c);
        // Years -5000 and 10000: chrono has them, PostgreSQL not the first.
        let forged = |year: i32| {
            let micros = chrono::NaiveDate::from_ymd_opt(year, 1, 1)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .expect("day")
                .and_utc()
                .timestamp_micros();
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{micros}|{}", c.id))
        };
        let (before, after) = (forged(-5000), forged(10_000));
        for bad in [
            "",
            "!!!",
            "bm9waXBl",
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("1|x"),
            &before,
            &after,
        ] {
            assert_eq!(
                Cursor::decode(bad).expect_err(bad).status(),
                StatusCode::BAD_REQUEST
            );
        }
    }

    #[test]
    fn days_and_times_outside_the_years_1_to_9999_are_refused_naming_the_field() {
        #[derive(Debug, serde::Deserialize, Serialize)]
        struct Body {
            #[serde(default, deserialize_with = "bounded")]
            at: Option<DateTime<Utc>>,
            #[serde(default, deserialize_with = "bounded")]
            day: Option<chrono::NaiveDate>,
        }
        for ok in [
            json!({}),
            json!({"at": null, "day": null}),
            json!({"at": "0001-01-01T00:00:00Z", "day": "9999-12-31"}),
            json!({"at": "9999-12-31T23:59:59.999999Z", "day": "0001-01-01"}),
        ] {
            parse_json::<Body>(ok.to_string().as_bytes()).expect("within the years");
        }
        for (bad, field) in [
            (json!({"at": "-5000-01-01T00:00:00Z"}), "at"),
            (json!({"at": "0000-12-31T23:59:59Z"}), "at"),
            // 10000-01-01 in UTC.
            (json!({"at": "9999-12-31T23:30:00-01:00"}), "at"),
            (json!({"day": "+10000-01-01"}), "day"),
            (json!({"day": "-262143-01-01"}), "day"),
        ] {
            let err = parse_json::<Body>(bad.to_string().as_bytes()).expect_err("outside");
            assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
            assert_eq!(err.details()["errors"][0]["path"], field, "{bad}: {err}");
            assert!(err.to_string().contains("years 1 to 9999"), "{err}");
        }
    }

    #[test]
    fn shape_errors_name_the_field_and_syntax_errors_are_400() {
        #[derive(Debug, serde::Deserialize, Serialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            items: Vec<Item>,
        }
        #[derive(Debug, serde::Deserialize, Serialize)]
        #[serde(deny_unknown_fields)]
        struct Item {
            n: u32,
        }
        let ok = parse_json::<Body>(br#"{"items":[{"n":7}]}"#).expect("valid");
        assert_eq!(ok.items.iter().map(|i| i.n).collect::<Vec<_>>(), [7]);
        let err = parse_json::<Body>(br#"{"items":[{"n":1},{"n":"x"}]}"#).expect_err("422");
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(err.to_string().contains("items[1].n"), "{err}");
        let err = parse_json::<Body>(br#"{"items":[], "extra": 1}"#).expect_err("422");
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        for malformed in [&br#"{"items": ["#[..], br#"{"extra": 1, "#, b"[1, 2"] {
            let err = parse_json::<Body>(malformed).expect_err("400");
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn whole_floats_are_integers_and_nul_characters_are_refused() {
        #[derive(Debug, serde::Deserialize, Serialize)]
        struct Body {
            n: u32,
            data: Value,
        }
        let ok = parse_json::<Body>(br#"{"n": 7.0, "data": {"x": 1.0}}"#).expect("7.0 is 7");
        assert_eq!(ok.n, 7);
        let err = parse_json::<Body>(br#"{"n": 7.5, "data": null}"#).expect_err("422");
        assert!(err.to_string().contains("n: invalid type"), "{err}");
        let err =
            parse_json::<Body>(br#"{"n": 1, "data": {"a": ["ok", "b\u0000"]}}"#).expect_err("NUL");
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            err.to_string().contains("data.a[1]: must not contain"),
            "{err}"
        );
        let err = parse_json::<Body>(
            br#"{"n": 1, "data": {"a": {"x": ["ok", {"y": "ok"}]}, "b": ["ok", "\u0000"]}}"#,
        )
        .expect_err("NUL after clean siblings");
        assert!(
            err.to_string()
                .contains("invalid request body: data.b[1]: must not"),
            "{err}"
        );
        let err = parse_json::<Body>(br#"{"n": 1, "data": {"k\u0000": 1}}"#).expect_err("NUL key");
        assert!(err.to_string().contains("data: must not contain"), "{err}");
        let ok = parse_json::<Body>(br#"{"n": 1, "data": "a\\u0000"}"#)
            .expect("an escaped backslash before u0000 is no NUL");
        assert_eq!(ok.data, Value::String("a\\u0000".into()));
    }
}
