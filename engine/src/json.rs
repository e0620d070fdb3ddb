//! Reading JSON into typed values the way JSON (and JSON Schema, which the
//! API document uses) means it.
//!
//! - JSON has a single number type, and JSON Schema counts `3.0` as an
//!   integer; serde refuses it where an integer is expected. [`from_value`]
//!   reads such whole numbers as the integers they are, but only when a
//!   strict read fails because of one, so a document that reads as it is
//!   keeps every number exactly as sent.
//! - serde reads a struct from an array of its fields in order (`[null,
//!   null]`); an object is the only form the API documents, so
//!   [`from_value`] refuses the array, naming where it was.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Number, Value};

/// Whether `value` is small: about `budget` bytes of JSON or less. Looks
/// at no more of it than that (each node counts at least one byte), so
/// asking is cheap whatever the value's size.
#[must_use]
pub fn within(value: &Value, budget: usize) -> bool {
    fn spend(value: &Value, left: &mut usize) -> bool {
        let own = match value {
            Value::String(s) => s.len() + 2,
            Value::Array(a) => a.len() + 2,
            Value::Object(m) => m.len() + 2,
            Value::Number(_) | Value::Bool(_) | Value::Null => 4,
        };
        let Some(rest) = left.checked_sub(own) else {
            return false;
        };
        *left = rest;
        match value {
            Value::Array(a) => a.iter().all(|v| spend(v, left)),
            Value::Object(m) => m.iter().all(|(k, v)| {
                left.checked_sub(k.len() + 3)
                    .map(|rest| *left = rest)
                    .is_some()
                    && spend(v, left)
            }),
            _ => true,
        }
    }
    let mut left = budget;
    spend(value, &mut left)
}

/// Largest magnitude below which every whole `f64` is exactly an integer.
const EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

/// Why a JSON value does not fit a type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct ShapeError {
    /// Path of the field at fault (`items[0].input`); empty for the root.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

/// Deserialises `T` from `json` (see the module docs).
///
/// # Errors
///
/// The first field that does not fit `T`, with its path.
pub fn from_value<T: DeserializeOwned + Serialize>(json: &Value) -> Result<T, ShapeError> {
    let read = match serde_path_to_error::deserialize(json) {
        Err(e) if is_whole_float_refused(e.inner()) => {
            let mut whole = json.clone();
            whole_floats_as_integers(&mut whole);
            serde_path_to_error::deserialize(&whole)
        }
        other => other,
    };
    let value: T = read.map_err(|e| {
        let path = e.path().to_string();
        ShapeError {
            path: if path == "." { String::new() } else { path },
            message: e.into_inner().to_string(),
        }
    })?;
    // What was read as a struct serialises as an object: an array there in
    // the input was a struct written as a sequence.
    let written = serde_json::to_value(&value).map_err(|e| ShapeError {
        path: String::new(),
        message: e.to_string(),
    })?;
    match array_for_object(json, &written, "") {
        Some(path) => Err(ShapeError {
            path,
            message: "invalid type: sequence, expected an object".to_owned(),
        }),
        None => Ok(value),
    }
}

fn array_for_object(input: &Value, written: &Value, path: &str) -> Option<String> {
    match (input, written) {
        (Value::Array(_), Value::Object(_)) => Some(path.to_owned()),
        (Value::Array(a), Value::Array(b)) => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (a, b))| array_for_object(a, b, &format!("{path}[{i}]"))),
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(key, a)| {
            let child = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            b.get(key).and_then(|b| array_for_object(a, b, &child))
        }),
        _ => None,
    }
}

/// Whether serde refused a float where it wanted another type (an integer,
/// when the float is whole).
fn is_whole_float_refused(e: &serde_json::Error) -> bool {
    e.is_data() && e.to_string().starts_with("invalid type: floating point")
}

/// Rewrites every whole float (`3.0`) of `value` as an integer.
fn whole_floats_as_integers(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64())
                && f.fract() == 0.0
                && f.abs() < EXACT_INTEGER
            {
                // In range and whole, so the conversion is exact.
                *n = Number::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_floats_as_integers),
        Value::Object(map) => map.values_mut().for_each(whole_floats_as_integers),
        Value::Null | Value::Bool(_) | Value::String(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[derive(Debug, serde::Deserialize, Serialize)]
    struct Rating {
        stars: i16,
        weight: f64,
        note: Value,
    }

    #[derive(Debug, serde::Deserialize, Serialize)]
    struct Batch {
        items: Vec<Item>,
    }

    #[derive(Debug, serde::Deserialize, Serialize)]
    struct Item {
        input: Option<Value>,
        key: Option<String>,
    }

    #[test]
    fn whole_floats_read_as_integers_only_when_needed() {
        let r: Rating = from_value(&json!({"stars": 3.0, "weight": 2.0, "note": [1.0]}))
            .expect("3.0 is the integer 3");
        assert_eq!(r.stars, 3);
        assert_eq!(r.weight, 2.0);
        let r: Rating =
            from_value(&json!({"stars": 3, "weight": 2.0, "note": [1.0]})).expect("strict read");
        assert_eq!(r.note, json!([1.0]), "a strict read keeps numbers as sent");
        for bad in [json!(3.5), json!(1e300), json!("3")] {
            let e = from_value::<Rating>(&json!({"stars": bad, "weight": 1, "note": null}))
                .expect_err("not an i16");
            assert_eq!(e.path, "stars");
        }
    }

    #[test]
    fn within_tells_small_values_from_large_ones_by_their_json_size() {
        let v = json!({"input": {"email": "ada@example.com", "tags": ["a", "bb", null]},
                       "steps": {"s0": {"status": 1200, "ok": true}}});
        let size = serde_json::to_vec(&v).expect("serialises").len();
        assert!(within(&v, size + 8), "{size} bytes fit in {}", size + 8);
        assert!(
            !within(&v, size - 8),
            "{size} bytes do not fit in {}",
            size - 8
        );
        assert!(within(&json!(null), 4));
        assert!(!within(&json!(null), 3));
        let long = json!({"body": "x".repeat(100_000)});
        assert!(!within(&long, 64 * 1024));
        assert!(within(&long, 200_000));
        let many = Value::Array(vec![json!(1); 100_000]);
        assert!(!within(&many, 64 * 1024), "each element counts");
        assert!(
            !within(&json!({"k".repeat(70_000): 1}), 64 * 1024),
            "keys count"
        );
    }

    #[test]
    fn structs_written_as_arrays_are_refused_where_they_are() {
        let e = from_value::<Batch>(&json!({"items": [{"input": [1, 2]}, [null, null]]}))
            .expect_err("an item as an array");
        assert_eq!(e.path, "items[1]");
        assert_eq!(
            e.to_string(),
            "items[1]: invalid type: sequence, expected an object"
        );
        let e = from_value::<Batch>(&json!([[]])).expect_err("the body as an array");
        assert_eq!(e.path, "");
        let ok: Batch = from_value(&json!({"items": [{"input": [[1], {"a": []}]}]})).expect("ok");
        assert_eq!(ok.items[0].input, Some(json!([[1], {"a": []}])));
    }
}
