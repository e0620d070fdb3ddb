//! Form bodies (`application/x-www-form-urlencoded`): a field whose value
//! renders to an object or an array is sent in the bracket convention of
//! Stripe, Rails and PHP (`metadata[plan]=pro`, `items[0][price]=p_1`), so
//! a provider's nested parameters need no hand-built raw body.
//!
//! The rules, which docs/connector-language.md states for users:
//!
//! - `null` sends nothing, at the top (omit on null) and inside a value;
//!   array items keep their index, so a left-out item leaves a gap rather
//!   than shifting the ones after it.
//! - Strings are sent as they are; numbers and booleans as their JSON text.
//! - An empty object or array sends the field with an empty value
//!   (`metadata=`), which is how Stripe clears a hash or a list.
//! - Members go out in the order of the rendered value.
//! - At most [`MAX_FORM_DEPTH`] bracket levels below the field; a deeper
//!   value, or an object key that is empty or holds `[` or `]` (which the
//!   receiver would read as more nesting), fails the step
//!   ([`StepErrorKind::FormEncoding`]). Messages name the field, never a
//!   key or a value, since either may come from a secret.

use serde_json::Value;

use super::{StepError, StepErrorKind};

/// How many bracket levels a form field's value may nest below the field
/// (`a[1][2][3][4][5]`).
pub const MAX_FORM_DEPTH: usize = 5;

/// The `(name, value)` pairs, not yet percent-encoded, that send the form
/// field `name` with the rendered `value`.
///
/// # Errors
///
/// [`StepErrorKind::FormEncoding`] (not retryable) when `value` nests deeper
/// than [`MAX_FORM_DEPTH`] or holds an object key that is empty or contains
/// `[` or `]`; `field` (`body.content.metadata`) starts the message.
pub(super) fn field_pairs(
    field: &str,
    name: &str,
    value: &Value,
) -> Result<Vec<(String, String)>, StepError> {
    let mut pairs = Vec::new();
    let mut key = name.to_owned();
    push_pairs(field, &mut key, value, 0, &mut pairs)?;
    Ok(pairs)
}

fn push_pairs(
    field: &str,
    key: &mut String,
    value: &Value,
    depth: usize,
    pairs: &mut Vec<(String, String)>,
) -> Result<(), StepError> {
    match value {
        Value::Null => {}
        Value::String(s) => pairs.push((key.clone(), s.clone())),
        Value::Bool(_) | Value::Number(_) => pairs.push((key.clone(), value.to_string())),
        Value::Array(items) if items.is_empty() => pairs.push((key.clone(), String::new())),
        Value::Object(map) if map.is_empty() => pairs.push((key.clone(), String::new())),
        Value::Array(items) => {
            too_deep(field, depth)?;
            for (index, item) in items.iter().enumerate() {
                let len = key.len();
                key.push_str(&format!("[{index}]"));
                push_pairs(field, key, item, depth + 1, pairs)?;
                key.truncate(len);
            }
        }
        Value::Object(map) => {
            too_deep(field, depth)?;
            for (name, item) in map {
                if name.is_empty() || name.contains(['[', ']']) {
                    return Err(StepError::fatal(
                        StepErrorKind::FormEncoding,
                        format!(
                            "{field}: an object key is empty or contains `[` or `]`, which a form field's bracket encoding cannot express"
                        ),
                    ));
                }
                let len = key.len();
                key.push('[');
                key.push_str(name);
                key.push(']');
                push_pairs(field, key, item, depth + 1, pairs)?;
                key.truncate(len);
            }
        }
    }
    Ok(())
}

/// Refuses to open one more bracket level below `depth`.
fn too_deep(field: &str, depth: usize) -> Result<(), StepError> {
    if depth >= MAX_FORM_DEPTH {
        return Err(StepError::fatal(
            StepErrorKind::FormEncoding,
            format!("{field}: the value nests deeper than {MAX_FORM_DEPTH} levels of brackets"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::http::Retry;

    /// The form body of one field, encoded as the step client sends it.
    fn encoded(name: &str, value: &Value) -> String {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in field_pairs("body.content.f", name, value).expect("encodable") {
            form.append_pair(&k, &v);
        }
        form.finish()
    }

    /// The pairs of one field, decoded back.
    fn pairs(name: &str, value: &Value) -> Vec<(String, String)> {
        field_pairs("body.content.f", name, value).expect("encodable")
    }

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn scalars_are_one_pair_and_null_is_none() {
        let cases: &[(Value, &[(&str, &str)])] = &[
            (json!("pro & annual"), &[("f", "pro & annual")]),
            (json!(42), &[("f", "42")]),
            (json!(1.5), &[("f", "1.5")]),
            (json!(true), &[("f", "true")]),
            (json!(false), &[("f", "false")]),
            (json!(""), &[("f", "")]),
            (Value::Null, &[]),
        ];
        for (value, want) in cases {
            assert_eq!(pairs("f", value), owned(want), "{value}");
        }
    }

    #[test]
    fn objects_and_arrays_nest_in_brackets_in_their_order() {
        let cases: &[(Value, &[(&str, &str)])] = &[
            (
                json!({"crm_id": "0035", "plan": "pro"}),
                &[("f[crm_id]", "0035"), ("f[plan]", "pro")],
            ),
            (json!(["a", "b"]), &[("f[0]", "a"), ("f[1]", "b")]),
            (
                json!([{"price": "p_1", "quantity": 2}, {"price": "p_2"}]),
                &[
                    ("f[0][price]", "p_1"),
                    ("f[0][quantity]", "2"),
                    ("f[1][price]", "p_2"),
                ],
            ),
            (
                json!({"address": {"city": "Paris", "line1": "1 rue"}, "vip": true}),
                &[
                    ("f[address][city]", "Paris"),
                    ("f[address][line1]", "1 rue"),
                    ("f[vip]", "true"),
                ],
            ),
            (json!({"tags": ["x"]}), &[("f[tags][0]", "x")]),
        ];
        for (value, want) in cases {
            assert_eq!(pairs("f", value), owned(want), "{value}");
        }
    }

    #[test]
    fn rendered_objects_go_out_in_key_order() {
        let r = crate::template::Renderer::new();
        let ctx = crate::template::Context::new(&json!({"input": {}}));
        let value = r
            .render_value_in("<<{'zone': 1, 'plan': {'b': 2, 'a': 3}}>>", &ctx)
            .expect("renders");
        assert_eq!(
            pairs("m", &value),
            owned(&[("m[plan][a]", "3"), ("m[plan][b]", "2"), ("m[zone]", "1")])
        );
    }

    #[test]
    fn nulls_inside_a_value_are_left_out_and_items_keep_their_index() {
        assert_eq!(
            pairs("f", &json!({"a": null, "b": "1", "c": {"d": null}})),
            owned(&[("f[b]", "1")])
        );
        assert_eq!(
            pairs("f", &json!(["a", null, "c"])),
            owned(&[("f[0]", "a"), ("f[2]", "c")])
        );
    }

    #[test]
    fn empty_objects_and_arrays_send_an_empty_value() {
        assert_eq!(pairs("f", &json!({})), owned(&[("f", "")]));
        assert_eq!(pairs("f", &json!([])), owned(&[("f", "")]));
        assert_eq!(pairs("f", &json!({"a": []})), owned(&[("f[a]", "")]));
        assert_eq!(encoded("metadata", &json!({})), "metadata=");
    }

    #[test]
    fn keys_and_values_are_percent_encoded() {
        assert_eq!(
            encoded("metadata", &json!({"plan": "pro & annual", "é/x": "a=b+c"})),
            "metadata%5Bplan%5D=pro+%26+annual&metadata%5B%C3%A9%2Fx%5D=a%3Db%2Bc"
        );
        // A field name written with brackets is sent as written.
        assert_eq!(
            encoded("items[0]", &json!({"id": 1})),
            "items%5B0%5D%5Bid%5D=1"
        );
        let decoded: Vec<(String, String)> =
            url::form_urlencoded::parse(encoded("m", &json!({"k&=": "v&=%"})).as_bytes())
                .into_owned()
                .collect();
        assert_eq!(decoded, owned(&[("m[k&=]", "v&=%")]));
    }

    #[test]
    fn five_levels_nest_and_a_sixth_fails_the_step() {
        let five = json!({"a": {"b": {"c": {"d": {"e": "deep"}}}}});
        assert_eq!(pairs("f", &five), owned(&[("f[a][b][c][d][e]", "deep")]));
        // Empty at the last level is a value, not another level.
        let five_empty = json!([[[[[[]]]]]]);
        assert_eq!(pairs("f", &five_empty), owned(&[("f[0][0][0][0][0]", "")]));
        for six in [
            json!({"a": {"b": {"c": {"d": {"e": {"f": "deeper"}}}}}}),
            json!([[[[[["x"]]]]]]),
        ] {
            let e = field_pairs("body.content.f", "f", &six).unwrap_err();
            assert_eq!(e.kind, StepErrorKind::FormEncoding, "{six}");
            assert_eq!(e.retry, Retry::Fatal);
            assert_eq!(
                e.message,
                "body.content.f: the value nests deeper than 5 levels of brackets"
            );
        }
    }

    #[test]
    fn keys_with_brackets_or_empty_keys_fail_without_naming_them() {
        for value in [
            json!({"sk_live_secret[x]": "v"}),
            json!({"a": {"b]": "v"}}),
            json!([{"[": "v"}]),
            json!({"": "v"}),
        ] {
            let e = field_pairs("body.content.metadata", "metadata", &value).unwrap_err();
            assert_eq!(e.kind, StepErrorKind::FormEncoding, "{value}");
            assert!(
                e.message.starts_with(
                    "body.content.metadata: an object key is empty or contains `[` or `]`"
                ),
                "{}",
                e.message
            );
            assert!(!e.message.contains("sk_live"), "{}", e.message);
        }
    }
}
