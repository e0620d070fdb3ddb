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

use std::fmt::Write as _;

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
    // Most documents fit as they are: read them without tracking where the
    // reader is, and read again, tracking it, only to name a failure's
    // field (or to read whole floats as integers).
    let value = match T::deserialize(json) {
        Ok(value) => value,
        Err(_) => read_tracked(json)?,
    };
    // A struct written as a sequence needs an array somewhere.
    if !contains_array(json) {
        return Ok(value);
    }
    // What was read as a struct serialises as an object: an array there in
    // the input was a struct written as a sequence.
    let written = serde_json::to_value(&value).map_err(|e| ShapeError {
        path: String::new(),
        message: e.to_string(),
    })?;
    let mut path = String::new();
    if array_for_object(json, &written, &mut path) {
        return Err(ShapeError {
            path,
            message: "invalid type: sequence, expected an object".to_owned(),
        });
    }
    Ok(value)
}

/// [`from_value`]'s read with the path of a failure, whole floats read
/// as integers when a strict read fails because of one.
fn read_tracked<T: DeserializeOwned>(json: &Value) -> Result<T, ShapeError> {
    let read = match serde_path_to_error::deserialize(json) {
        Err(e) if is_whole_float_refused(e.inner()) => {
            let mut whole = json.clone();
            whole_floats_as_integers(&mut whole);
            serde_path_to_error::deserialize(&whole)
        }
        other => other,
    };
    read.map_err(|e| {
        let path = e.path().to_string();
        ShapeError {
            path: if path == "." { String::new() } else { path },
            message: e.into_inner().to_string(),
        }
    })
}

fn contains_array(value: &Value) -> bool {
    match value {
        Value::Array(_) => true,
        Value::Object(map) => map.values().any(contains_array),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => false,
    }
}

/// Appends `key` to `path`, a path in the API's notation
/// (`items[0].input`; the root is empty).
pub fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

/// Appends `[index]` to `path` (see [`push_key`]).
pub fn push_index(path: &mut String, index: usize) {
    let _ = write!(path, "[{index}]");
}

/// Whether `input` holds an array where `written` holds an object; `path`
/// then ends where (it holds no meaning otherwise).
fn array_for_object(input: &Value, written: &Value, path: &mut String) -> bool {
    let len = path.len();
    match (input, written) {
        (Value::Array(_), Value::Object(_)) => true,
        (Value::Array(a), Value::Array(b)) => a.iter().zip(b).enumerate().any(|(i, (a, b))| {
            path.truncate(len);
            push_index(path, i);
            array_for_object(a, b, path)
        }),
        (Value::Object(a), Value::Object(b)) => a.iter().any(|(key, a)| {
            b.get(key).is_some_and(|b| {
                path.truncate(len);
                push_key(path, key);
                array_for_object(a, b, path)
            })
        }),
        _ => false,
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

    #[test]
    fn the_path_of_a_struct_written_as_an_array_leaves_out_the_siblings_looked_at_first() {
        #[derive(Debug, serde::Deserialize, Serialize)]
        struct Pair {
            first: Item,
            second: Item,
        }
        let e = from_value::<Pair>(&json!({"first": {"input": {"a": [1, {"b": [2]}]}},
                                           "second": [null, "k"]}))
        .expect_err("the second item as an array");
        assert_eq!(e.path, "second");
        let e = from_value::<Batch>(&json!({"items": [{"input": [1]}, {"input": {"a": [2]}},
                                                      {"input": null, "key": "k"}, [null, null]]}))
        .expect_err("the fourth item as an array");
        assert_eq!(e.path, "items[3]");
        let e = from_value::<Pair>(&json!({"first": {"input": 1}, "second": {"key": 7}}))
            .expect_err("a number for a string");
        assert_eq!(e.path, "second.key");
        assert!(e.message.starts_with("invalid type: integer"), "{e}");
    }

    #[test]
    fn paths_name_keys_after_a_dot_and_indexes_in_brackets() {
        let mut path = String::new();
        push_key(&mut path, "items");
        push_index(&mut path, 12);
        push_key(&mut path, "input");
        assert_eq!(path, "items[12].input");
        let mut root = String::new();
        push_index(&mut root, 0);
        assert_eq!(root, "[0]");
    }
}
