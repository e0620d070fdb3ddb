//! From a webhook delivery to an execution input: the delivery as a JSON
//! document `{"body", "headers", "query"}` (a JSON or form body; header
//! names lowercase), and the trigger's mapping of input fields to a
//! JSONPath (`$.body.data.object.email`) or a `<<...>>` template
//! (`<<body.user.first>> <<body.user.last>>`) over it. Pure.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde_json::{Map, Value};

use crate::connector::ValidationError;
use crate::extract::Query;
use crate::template::Renderer;

/// Most fields a mapping may hold.
pub const MAX_FIELDS: usize = 64;
/// Longest expression of one field.
pub const MAX_EXPRESSION: usize = 1024;

static RENDERER: LazyLock<Renderer> = LazyLock::new(Renderer::new);

/// One field's source.
#[derive(Debug, Clone)]
enum Source {
    Path(Query),
    Template(String),
}

/// A parsed mapping; none means the input is the JSON body itself.
#[derive(Debug, Clone, Default)]
pub struct Mapping(Option<BTreeMap<String, Source>>);

impl Mapping {
    /// Parses a mapping (`null` or absent: the body is the input); each
    /// problem names its field as `input.<field>`.
    ///
    /// # Errors
    ///
    /// Not an object, too many fields, an expression that is neither a
    /// valid JSONPath nor a valid template, or a template naming anything
    /// but `body`, `headers` and `query`.
    pub fn parse(value: Option<&Value>) -> Result<Self, Vec<ValidationError>> {
        let Some(value) = value.filter(|v| !v.is_null()) else {
            return Ok(Self(None));
        };
        let Some(fields) = value.as_object() else {
            return Err(vec![problem(
                "input",
                "must be an object of field: expression",
            )]);
        };
        if fields.is_empty() || fields.len() > MAX_FIELDS {
            return Err(vec![problem(
                "input",
                format!("must map 1 to {MAX_FIELDS} fields"),
            )]);
        }
        let mut out = BTreeMap::new();
        let mut errors = Vec::new();
        for (field, expr) in fields {
            let at = format!("input.{field}");
            let Some(expr) = expr
                .as_str()
                .filter(|e| !e.is_empty() && e.len() <= MAX_EXPRESSION)
            else {
                errors.push(problem(&at, format!("must be a JSONPath (`$...`) or a `<<...>>` template of 1 to {MAX_EXPRESSION} characters")));
                continue;
            };
            if expr.starts_with('$') {
                match Query::parse(expr) {
                    Ok(q) => {
                        out.insert(field.clone(), Source::Path(q));
                    }
                    Err(e) => errors.push(problem(&at, e.to_string())),
                }
                continue;
            }
            match RENDERER.references(expr) {
                Ok(refs) => {
                    let stray: Vec<String> = refs
                        .into_iter()
                        .filter(|r| {
                            let root = r.split('.').next().unwrap_or_default();
                            !matches!(root, "body" | "headers" | "query")
                        })
                        .collect();
                    if stray.is_empty() {
                        out.insert(field.clone(), Source::Template(expr.to_owned()));
                    } else {
                        errors.push(problem(
                            &at,
                            format!(
                                "a template may use only `body`, `headers` and `query`, not {}",
                                stray.join(", ")
                            ),
                        ));
                    }
                }
                Err(e) => errors.push(problem(&at, e.to_string())),
            }
        }
        if errors.is_empty() {
            Ok(Self(Some(out)))
        } else {
            Err(errors)
        }
    }

    /// The input for a delivery `doc` (see [`document`]).
    ///
    /// # Errors
    ///
    /// A JSONPath that selects nothing, a template that fails (a missing
    /// name), or, without a mapping, a body that is not a JSON object;
    /// each names the input field.
    pub fn apply(&self, doc: &Value) -> Result<Value, Vec<ValidationError>> {
        let Some(fields) = &self.0 else {
            return match &doc["body"] {
                Value::Object(_) => Ok(doc["body"].clone()),
                _ => Err(vec![problem(
                    "body",
                    "without an input mapping the body must be a JSON object",
                )]),
            };
        };
        let mut input = Map::new();
        let mut errors = Vec::new();
        for (field, source) in fields {
            let at = format!("input.{field}");
            match source {
                Source::Path(q) => match q.extract_present(doc) {
                    Some(v) => {
                        input.insert(field.clone(), v);
                    }
                    None => errors.push(problem(
                        &at,
                        format!("`{}` selects nothing in this delivery", q.as_str()),
                    )),
                },
                Source::Template(t) => match RENDERER.render_value(t, doc) {
                    Ok(v) => {
                        input.insert(field.clone(), v);
                    }
                    Err(e) => errors.push(problem(&at, e.to_string())),
                },
            }
        }
        if errors.is_empty() {
            Ok(Value::Object(input))
        } else {
            Err(errors)
        }
    }
}

/// The delivery as a document: `body` (parsed JSON; a form body as an
/// object of strings; otherwise the text), `headers` (lowercase names; a
/// repeated header's values joined by `, `), `query` (an object of
/// strings).
///
/// # Errors
///
/// A JSON body that does not parse, or a body that is not UTF-8.
pub fn document<'a>(
    body: &[u8],
    content_type: Option<&str>,
    headers: impl Iterator<Item = (&'a str, &'a str)>,
    query: Option<&str>,
) -> Result<Value, String> {
    let ct = content_type.unwrap_or("").to_ascii_lowercase();
    let parsed = if body.is_empty() {
        Value::Null
    } else if ct.starts_with("application/x-www-form-urlencoded") {
        Value::Object(pairs(body))
    } else if ct.is_empty() || ct.contains("json") {
        serde_json::from_slice(body).map_err(|e| format!("the body is not valid JSON: {e}"))?
    } else {
        Value::String(
            String::from_utf8(body.to_vec()).map_err(|_| "the body is not UTF-8".to_owned())?,
        )
    };
    let mut hs: Map<String, Value> = Map::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        match hs.get_mut(&name) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(value);
            }
            _ => {
                hs.insert(name, Value::String(value.to_owned()));
            }
        }
    }
    let query = query.map(|q| pairs(q.as_bytes())).unwrap_or_default();
    let mut doc = Map::new();
    doc.insert("body".to_owned(), parsed);
    doc.insert("headers".to_owned(), Value::Object(hs));
    doc.insert("query".to_owned(), Value::Object(query));
    Ok(Value::Object(doc))
}

fn pairs(bytes: &[u8]) -> Map<String, Value> {
    url::form_urlencoded::parse(bytes)
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect()
}

fn problem(path: &str, message: impl Into<String>) -> ValidationError {
    ValidationError {
        path: path.to_owned(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc(body: &[u8], ct: &str) -> Value {
        document(
            body,
            Some(ct),
            [("X-Event", "push"), ("x-event", "again")].into_iter(),
            Some("source=gh&n=2"),
        )
        .expect("document")
    }

    #[test]
    fn json_form_headers_and_query_become_one_document() {
        let d = doc(br#"{"user": {"first": "Ada"}}"#, "application/json");
        assert_eq!(d["body"]["user"]["first"], "Ada");
        assert_eq!(d["headers"]["x-event"], "push, again");
        assert_eq!(d["query"], json!({"source": "gh", "n": "2"}));
        let f = doc(
            b"text=hi+there&user_id=U1",
            "application/x-www-form-urlencoded",
        );
        assert_eq!(f["body"], json!({"text": "hi there", "user_id": "U1"}));
        assert!(document(b"{", Some("application/json"), [].into_iter(), None).is_err());
    }

    #[test]
    fn paths_and_templates_map_fields_keeping_types() {
        let m = Mapping::parse(Some(&json!({
            "email": "$.body.data.email",
            "count": "$.body.data.count",
            "greeting": "Hi <<body.data.name>> from <<query.source>>",
            "event": "<<headers[\"x-event\"]>>",
        })))
        .expect("valid");
        let d = document(
            br#"{"data": {"email": "a@b.c", "count": 3, "name": "Ada"}}"#,
            Some("application/json"),
            [("X-Event", "push")].into_iter(),
            Some("source=gh"),
        )
        .expect("doc");
        assert_eq!(
            m.apply(&d),
            Ok(
                json!({"email": "a@b.c", "count": 3, "greeting": "Hi Ada from gh", "event": "push"})
            )
        );
        let errors = m
            .apply(&doc(br#"{"data": {}}"#, "application/json"))
            .expect_err("missing");
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["input.count", "input.email", "input.greeting"]);
    }

    #[test]
    fn bad_mappings_name_the_field() {
        for (mapping, path) in [
            (json!({"a": "$.body[?"}), "input.a"),
            (json!({"a": "<<body.x"}), "input.a"),
            (json!({"a": "<<input.x>>"}), "input.a"),
            (json!({"a": 5}), "input.a"),
            (json!({}), "input"),
            (json!("$.body"), "input"),
        ] {
            let errors = Mapping::parse(Some(&mapping)).expect_err("invalid");
            assert_eq!(errors[0].path, path, "{mapping}");
        }
    }

    #[test]
    fn without_a_mapping_the_json_body_is_the_input() {
        let m = Mapping::parse(None).expect("none");
        assert_eq!(
            m.apply(&doc(br#"{"a": 1}"#, "application/json")),
            Ok(json!({"a": 1}))
        );
        assert!(m.apply(&doc(b"[1]", "application/json")).is_err());
    }
}
