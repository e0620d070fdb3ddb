//! What a stored credential may hold: its name, its field names and their
//! values. Pure; no message quotes a submitted value (it may be a secret,
//! or a secret typed into the wrong place).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::connector::{ValidationError, ValidationErrors, is_credential_name};

/// Largest value of one credential field, in bytes.
pub const MAX_FIELD_BYTES: usize = 8 * 1024;
/// Most fields in one credential.
pub const MAX_FIELDS: usize = 32;

/// Whether `name` may name a credential field: `[A-Za-z0-9_]{1,64}`.
pub fn is_field_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn problem(path: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError {
        path: path.into(),
        message: message.into(),
    }
}

/// Checks a credential named `name` with the submitted `data` (an object
/// of string fields) and returns its fields.
///
/// # Errors
///
/// Every problem, with its path (`name`, `data`, `data.<field>`).
pub fn check(name: &str, data: Value) -> Result<BTreeMap<String, String>, ValidationErrors> {
    let mut errors = Vec::new();
    if !is_credential_name(name) {
        errors.push(problem(
            "name",
            "must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,63}",
        ));
    }
    match check_data(data) {
        Ok(fields) if errors.is_empty() => Ok(fields),
        Ok(_) => Err(ValidationErrors(errors)),
        Err(mut more) => {
            errors.append(&mut more);
            Err(ValidationErrors(errors))
        }
    }
}

/// The credential's fields, or every problem.
fn check_data(data: Value) -> Result<BTreeMap<String, String>, Vec<ValidationError>> {
    let Value::Object(map) = data else {
        return Err(vec![problem("data", "must be an object of string fields")]);
    };
    let mut errors = Vec::new();
    if map.is_empty() {
        errors.push(problem("data", "must hold at least one field"));
    }
    if map.len() > MAX_FIELDS {
        errors.push(problem(
            "data",
            format!("must hold at most {MAX_FIELDS} fields"),
        ));
    }
    let mut fields = BTreeMap::new();
    for (name, value) in map {
        if !is_field_name(&name) {
            // The name may be mistyped data: do not echo it either.
            errors.push(problem(
                "data",
                "field names must be 1 to 64 characters of A-Z, a-z, 0-9 and _",
            ));
            continue;
        }
        let path = format!("data.{name}");
        match value {
            Value::String(s) if s.len() > MAX_FIELD_BYTES => errors.push(problem(
                path,
                format!("must be at most {MAX_FIELD_BYTES} bytes"),
            )),
            Value::String(s) => {
                fields.insert(name, s);
            }
            _ => errors.push(problem(path, "must be a string")),
        }
    }
    if errors.is_empty() {
        Ok(fields)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn data_errors_name_the_field_and_never_quote_a_value() {
        let secret = "planted-secret-value";
        let cases = [
            (json!(secret), "data"),
            (json!({}), "data"),
            (json!({"token": 5}), "data.token"),
            (json!({"token": [secret]}), "data.token"),
            (
                json!({"token": "x".repeat(MAX_FIELD_BYTES + 1)}),
                "data.token",
            ),
            (json!({ secret: "x", "bad-name": "y" }), "data"),
        ];
        for (data, path) in cases {
            let errors = check("crm", data.clone()).expect_err("invalid");
            assert_eq!(errors.0[0].path, path, "{data}");
            assert!(!errors.to_string().contains(secret));
        }
        let ok = check("crm", json!({"token": "t", "api_key_2": "k"})).expect("valid");
        assert_eq!(ok.len(), 2);
        assert!(check("crm", json!({"token": "x".repeat(MAX_FIELD_BYTES)})).is_ok());
    }

    #[test]
    fn a_bad_name_is_reported_before_the_data_problems() {
        let errors = check("no spaces", json!({})).expect_err("invalid");
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["name", "data"]);
        let errors = check("no spaces", json!({"token": "t"})).expect_err("invalid");
        assert_eq!(errors.0.len(), 1);
    }
}
