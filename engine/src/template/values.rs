//! Values: their text form, JSON conversion under a fuel budget, and the
//! `tojson`/`urlencode` filters.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{ErrorKind, Output, State, Value};
use percent_encoding::utf8_percent_encode;
use serde_json::Value as Json;

use super::{COMPONENT, MAX_DEPTH, NODE_UNITS, UNITS_PER_FUEL};

// ---------------------------------------------------------------------------
// Values: text form and JSON conversion
// ---------------------------------------------------------------------------

/// Why a value could not become JSON.
pub(super) enum ConvError {
    Undefined,
    OutOfFuel,
    Invalid(minijinja::Error),
    Unsupported(&'static str),
}

impl ConvError {
    fn into_minijinja(self) -> minijinja::Error {
        match self {
            ConvError::Undefined => minijinja::Error::from(ErrorKind::UndefinedError),
            ConvError::OutOfFuel => minijinja::Error::from(ErrorKind::OutOfFuel),
            ConvError::Invalid(e) => e,
            ConvError::Unsupported(what) => {
                minijinja::Error::new(ErrorKind::InvalidOperation, what)
            }
        }
    }
}

pub(super) fn charge(budget: &mut u64, units: u64) -> Result<(), ConvError> {
    if units >= *budget {
        *budget = 0;
        Err(ConvError::OutOfFuel)
    } else {
        *budget -= units;
        Ok(())
    }
}

/// Converts a template value to JSON, charging `budget` (fuel units) per
/// node and string byte so lazily huge values (`[1] * 10**8`) stay bounded.
pub(super) fn to_json(value: &Value, budget: &mut u64, depth: usize) -> Result<Json, ConvError> {
    charge(budget, NODE_UNITS)?;
    if depth > MAX_DEPTH {
        return Err(ConvError::Unsupported("the value is nested too deeply"));
    }
    Ok(match value.kind() {
        ValueKind::Undefined => return Err(ConvError::Undefined),
        ValueKind::None => Json::Null,
        ValueKind::Bool => Json::Bool(value.is_true()),
        ValueKind::Number => number_json(value)?,
        ValueKind::String => {
            let s = value.as_str().unwrap_or_default();
            charge(budget, s.len() as u64)?;
            Json::String(s.to_owned())
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items = value.try_iter().map_err(ConvError::Invalid)?;
            let mut out = Vec::with_capacity(value.len().unwrap_or(0).min(1024));
            for item in items {
                out.push(to_json(&item, budget, depth + 1)?);
            }
            Json::Array(out)
        }
        ValueKind::Map => {
            let keys = value.try_iter().map_err(ConvError::Invalid)?;
            let mut out = serde_json::Map::new();
            for key in keys {
                let item = value.get_item(&key).map_err(ConvError::Invalid)?;
                let name = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or_default().to_owned(),
                    ValueKind::Number | ValueKind::Bool => {
                        match to_json(&key, budget, depth + 1)? {
                            Json::String(s) => s,
                            other => other.to_string(),
                        }
                    }
                    _ => return Err(ConvError::Unsupported("object keys must be strings")),
                };
                charge(budget, name.len() as u64)?;
                out.insert(name, to_json(&item, budget, depth + 1)?);
            }
            Json::Object(out)
        }
        ValueKind::Bytes => {
            return Err(ConvError::Unsupported("bytes cannot be converted to JSON"));
        }
        ValueKind::Invalid => {
            return Err(ConvError::Unsupported("the value is invalid"));
        }
        _ => {
            return Err(ConvError::Unsupported(
                "this value cannot be converted to JSON",
            ));
        }
    })
}

pub(super) fn number_json(value: &Value) -> Result<Json, ConvError> {
    if value.is_integer() {
        if let Ok(i) = i64::try_from(value.clone()) {
            return Ok(Json::from(i));
        }
        if let Ok(u) = u64::try_from(value.clone()) {
            return Ok(Json::from(u));
        }
        return Err(ConvError::Unsupported("the integer is too large for JSON"));
    }
    let f = f64::try_from(value.clone()).map_err(ConvError::Invalid)?;
    serde_json::Number::from_f64(f)
        .map(Json::Number)
        .ok_or(ConvError::Unsupported("the number is not finite"))
}

/// Converts to JSON inside a render, paying with the render's fuel.
pub(super) fn json_in_state(state: &State, value: &Value) -> Result<Json, minijinja::Error> {
    let start = state.fuel_levels().map_or(u64::MAX, |(_, remaining)| {
        remaining.saturating_mul(UNITS_PER_FUEL)
    });
    let mut budget = start;
    let result = to_json(value, &mut budget, 0);
    state.consume_fuel((start - budget).div_ceil(UNITS_PER_FUEL))?;
    result.map_err(ConvError::into_minijinja)
}

/// The text form of a value (see the module docs).
pub(super) fn text_in_state(state: &State, value: &Value) -> Result<String, minijinja::Error> {
    Ok(match value.kind() {
        ValueKind::Undefined | ValueKind::None => String::new(),
        ValueKind::Bool => (if value.is_true() { "true" } else { "false" }).to_owned(),
        ValueKind::String => value.as_str().unwrap_or_default().to_owned(),
        ValueKind::Bytes => {
            String::from_utf8_lossy(value.as_bytes().unwrap_or_default()).into_owned()
        }
        // Integers print their digits, even beyond the JSON (64-bit) range.
        ValueKind::Number if value.is_integer() => value.to_string(),
        ValueKind::Number => match number_json(value) {
            Ok(json) => json.to_string(),
            Err(e) => return Err(e.into_minijinja()),
        },
        ValueKind::Seq | ValueKind::Iterable | ValueKind::Map => {
            json_in_state(state, value)?.to_string()
        }
        ValueKind::Invalid => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "the value is invalid",
            ));
        }
        // Functions and other opaque objects: their description.
        _ => value.to_string(),
    })
}

/// The formatter of every `<<...>>`: the text form, no escaping (that
/// happens per destination after rendering).
pub(super) fn format_value(
    out: &mut Output,
    state: &mut State,
    value: &Value,
) -> Result<(), minijinja::Error> {
    if super::meter::emitted(state, value) {
        return Ok(());
    }
    if let Some(s) = value.as_str() {
        return out.write_str(s).map_err(minijinja::Error::from);
    }
    let text = text_in_state(state, value)?;
    out.write_str(&text).map_err(minijinja::Error::from)
}

/// `tojson`: compact JSON, or indented with `indent` (a number of spaces, or
/// `true` for two).
pub(super) fn tojson_filter(
    state: &State,
    value: &Value,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> Result<Value, minijinja::Error> {
    let indent = match indent {
        Some(indent) => Some(indent),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.kind() == ValueKind::Bool => v.is_true().then_some(2),
        Some(v) => Some(usize::try_from(v)?.min(16)),
    };
    let json = json_in_state(state, value)?;
    let text = match indent {
        None => json.to_string(),
        Some(n) => {
            let spaces = vec![b' '; n];
            let mut buf = Vec::new();
            let formatter = serde_json::ser::PrettyFormatter::with_indent(&spaces);
            let mut ser = serde_json::Serializer::with_formatter(&mut buf, formatter);
            serde::Serialize::serialize(&json, &mut ser).map_err(|_| {
                minijinja::Error::new(ErrorKind::InvalidOperation, "cannot serialize to JSON")
            })?;
            String::from_utf8(buf).map_err(|_| {
                minijinja::Error::new(ErrorKind::InvalidOperation, "cannot serialize to JSON")
            })?
        }
    };
    Ok(Value::from(text))
}

/// `urlencode`: percent-encodes all but RFC 3986 unreserved characters; a
/// map becomes `k=v&k2=v2` (null and undefined members skipped).
pub(super) fn urlencode_filter(state: &State, value: &Value) -> Result<String, minijinja::Error> {
    if value.kind() == ValueKind::Map {
        let mut out = String::new();
        for key in value.try_iter()? {
            let item = value.get_item(&key)?;
            if item.is_none() || item.is_undefined() {
                continue;
            }
            if !out.is_empty() {
                out.push('&');
            }
            let k = text_in_state(state, &key)?;
            let v = text_in_state(state, &item)?;
            let _ = write!(
                out,
                "{}={}",
                utf8_percent_encode(&k, COMPONENT),
                utf8_percent_encode(&v, COMPONENT)
            );
        }
        return Ok(out);
    }
    let text = text_in_state(state, value)?;
    Ok(utf8_percent_encode(&text, COMPONENT).to_string())
}
