//! RFC 9535 JSONPath extraction of fields from response bodies.
//!
//! A step's `extract` map names fields and gives each a JSONPath query over
//! the parsed response body. A *singular* query (RFC 9535 §2.3.5.1: `$`
//! followed only by name selectors `.a` / `['a']` and index selectors `[0]` /
//! `[-1]`) yields the selected value, or `null` when nothing is there; any
//! other query yields the array of all matches, in document order as the RFC
//! defines it (possibly empty). A field marked `required` that selects
//! nothing is an error ([`ExtractError::MissingRequired`]).
//!
//! Queries are parsed once, when a connector is deserialized: an invalid
//! query fails there, with the parser's message and position, and a parsed
//! [`Query`] is reused for every execution.
//!
//! # Why `serde_json_path`
//!
//! The product brief named `jsonpath-rust`. On the RFC 9535 compliance test
//! suite (`jsonpath-compliance-test-suite`, 703 cases; a copy lives in
//! `tests/data/jsonpath-cts/` and `tests/jsonpath_cts.rs` runs it through
//! [`query_json`]), `serde_json_path` passed 703/703 and `jsonpath-rust`
//! 694/703: `jsonpath-rust` accepts ill-typed function calls that RFC 9535
//! requires to be rejected, such as `$[?length(@.*)<3]` (a non-singular
//! query as the argument of `length`), so a broken connector would pass
//! save-time validation; and it returns the results of `$..['a','d']` in the
//! wrong order. `serde_json_path` was also 7–9× faster on typical paths, and
//! its parsed `JsonPath` is `Clone + Send + Sync`.
//!
//! # Singularity
//!
//! `serde_json_path` 0.7 does not expose whether a parsed query is singular
//! (its query type is private). Rather than parse a second time with a
//! JSONPath grammar of our own, [`Query::parse`] asks the same parser: RFC
//! 9535 only allows singular queries as operands of a comparison, so a valid
//! query `q` is singular exactly when `$[?q==null]` parses.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use serde_json_path::JsonPath;

/// Errors of JSONPath parsing and extraction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    /// The query is not valid RFC 9535 JSONPath.
    #[error("invalid JSONPath `{path}`: {message}")]
    InvalidPath {
        /// The query text as given.
        path: String,
        /// 1-based character position of the error within the query.
        position: usize,
        /// The parser's message, including the position.
        message: String,
    },
    /// A field marked `required` selected nothing.
    #[error("required field `{field}` not found: `{path}` selected nothing")]
    MissingRequired {
        /// The name of the field in the `extract` map.
        field: String,
        /// The field's query.
        path: String,
    },
    /// The fields of one step selected more than [`MAX_EXTRACTED_NODES`]
    /// nodes or about [`MAX_EXTRACTED_BYTES`] of JSON together (`$..*` on a
    /// large body); `field` is the one that went past the limit.
    #[error(
        "field `{field}`: `{path}` takes the step's extracted fields past {MAX_EXTRACTED_NODES} nodes or {MAX_EXTRACTED_BYTES} bytes; select less"
    )]
    TooLarge {
        /// The name of the field in the `extract` map.
        field: String,
        /// The field's query.
        path: String,
    },
}

/// Most nodes the extracted fields of one step may select together.
pub const MAX_EXTRACTED_NODES: usize = 10_000;
/// Most JSON (roughly, in bytes) the extracted fields of one step may
/// select together.
pub const MAX_EXTRACTED_BYTES: usize = 1024 * 1024;

/// What the fields of one step may still select.
#[derive(Debug, Clone, Copy)]
struct Budget {
    nodes: usize,
    bytes: usize,
}

impl Budget {
    const FULL: Budget = Budget {
        nodes: MAX_EXTRACTED_NODES,
        bytes: MAX_EXTRACTED_BYTES,
    };

    /// Pays for `nodes`, or `None` when they do not fit.
    fn pay(self, nodes: &[&Value]) -> Option<Budget> {
        Some(Budget {
            nodes: self.nodes.checked_sub(nodes.len())?,
            bytes: nodes
                .iter()
                .try_fold(self.bytes, |left, node| fits(node, left))?,
        })
    }
}

/// Roughly the serialised size of `v`, giving up past `budget`: whether it
/// fits in `budget`, and what is left of it.
fn fits(v: &Value, budget: usize) -> Option<usize> {
    let own = match v {
        Value::String(s) => s.len() + 2,
        Value::Null | Value::Bool(_) | Value::Number(_) => 8,
        Value::Array(_) | Value::Object(_) => 2,
    };
    let mut left = budget.checked_sub(own)?;
    match v {
        Value::Array(items) => {
            for item in items {
                left = fits(item, left)?;
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                left = left.checked_sub(k.len() + 4)?;
                left = fits(item, left)?;
            }
        }
        _ => {}
    }
    Some(left)
}

/// A parsed RFC 9535 JSONPath query.
///
/// Serializes as, and deserializes from, its query string (the original
/// text is kept, so a connector round-trips unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    text: String,
    path: JsonPath,
    singular: bool,
}

impl Query {
    /// Parses a JSONPath query.
    ///
    /// # Errors
    ///
    /// [`ExtractError::InvalidPath`] with the parser's message and the
    /// 1-based position of the error.
    pub fn parse(text: &str) -> Result<Query, ExtractError> {
        let path = JsonPath::parse(text).map_err(|err| ExtractError::InvalidPath {
            path: text.to_owned(),
            position: err.position(),
            message: err.to_string(),
        })?;
        // See the module docs: comparison operands must be singular queries.
        let singular = JsonPath::parse(&format!("$[?{text}==null]")).is_ok();
        Ok(Query {
            text: text.to_owned(),
            path,
            singular,
        })
    }

    /// The query text as it was given.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the query is singular per RFC 9535 (selects at most one node).
    #[must_use]
    pub fn is_singular(&self) -> bool {
        self.singular
    }

    /// The underlying parsed `serde_json_path` query.
    #[must_use]
    pub fn json_path(&self) -> &JsonPath {
        &self.path
    }

    /// The full node list selected from `doc`, cloned, in result order.
    #[must_use]
    pub fn nodes(&self, doc: &Value) -> Vec<Value> {
        self.path.query(doc).into_iter().cloned().collect()
    }

    /// The extracted value: for a singular query the selected value, or
    /// `null` when absent; otherwise an array of all matches (possibly
    /// empty).
    #[must_use]
    pub fn extract(&self, doc: &Value) -> Value {
        let nodes = self.path.query(doc);
        if self.singular {
            nodes.first().cloned().unwrap_or(Value::Null)
        } else {
            Value::Array(nodes.into_iter().cloned().collect())
        }
    }

    /// Like [`Query::extract`], but `None` when nothing was selected: no node
    /// for a singular query, an empty list otherwise. (A selected JSON `null`
    /// is present.)
    #[must_use]
    pub fn extract_present(&self, doc: &Value) -> Option<Value> {
        let nodes = self.path.query(doc);
        if self.singular {
            nodes.first().cloned()
        } else if nodes.is_empty() {
            None
        } else {
            Some(Value::Array(nodes.into_iter().cloned().collect()))
        }
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Query {
    type Err = ExtractError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Query::parse(s)
    }
}

impl Serialize for Query {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Query {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct QueryVisitor;

        impl Visitor<'_> for QueryVisitor {
            type Value = Query;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSONPath query string")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Query, E> {
                Query::parse(v).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(QueryVisitor)
    }
}

/// One entry of a step's `extract` map: a query and whether the field is
/// required.
///
/// Deserializes from either a bare query string (`"$.id"`, not required) or
/// an object `{"path": "$.id", "required": true, "secret": true}` (unknown
/// keys rejected, `required` and `secret` default to `false`). The query is
/// parsed during deserialization, so an invalid query fails there.
/// Serializes back to the bare string when neither required nor secret, to
/// the object form otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extraction {
    /// The parsed query.
    pub path: Query,
    /// Whether selecting nothing is an error.
    pub required: bool,
    /// Whether the value is a secret (an access token, a session id):
    /// usable by later steps, stored only sealed, redacted in history.
    pub secret: bool,
}

impl Extraction {
    /// An optional extraction of `path`.
    #[must_use]
    pub fn optional(path: Query) -> Extraction {
        Extraction {
            path,
            required: false,
            secret: false,
        }
    }

    /// A required extraction of `path`.
    #[must_use]
    pub fn required(path: Query) -> Extraction {
        Extraction {
            path,
            required: true,
            secret: false,
        }
    }

    /// Extracts this field from `doc` (see [`Query::extract`]).
    ///
    /// # Errors
    ///
    /// [`ExtractError::MissingRequired`] (naming `field`) if the field is
    /// required and the query selected nothing; [`ExtractError::TooLarge`]
    /// if it selected too much.
    pub fn apply(&self, field: &str, doc: &Value) -> Result<Value, ExtractError> {
        let mut budget = Budget::FULL;
        self.apply_within(field, doc, &mut budget)
    }

    /// [`Extraction::apply`], paying the selected nodes from `budget`.
    fn apply_within(
        &self,
        field: &str,
        doc: &Value,
        budget: &mut Budget,
    ) -> Result<Value, ExtractError> {
        // Measured on the borrowed nodes, before anything is cloned.
        let nodes = self.path.path.query(doc).all();
        *budget = budget.pay(&nodes).ok_or_else(|| ExtractError::TooLarge {
            field: field.to_owned(),
            path: self.path.text.clone(),
        })?;
        if self.required {
            self.path
                .extract_present(doc)
                .ok_or_else(|| ExtractError::MissingRequired {
                    field: field.to_owned(),
                    path: self.path.text.clone(),
                })
        } else {
            Ok(self.path.extract(doc))
        }
    }
}

// Written by hand: serde's custom (de)serialisation above takes either a
// bare query string or the object form, which a derive cannot see.
impl utoipa::PartialSchema for Extraction {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Type};
        let query = || {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .description(Some("An RFC 9535 JSONPath query over the response body"))
                .examples([Value::from("$.id")])
        };
        let object = ObjectBuilder::new()
            .property("path", query())
            .required("path")
            .property(
                "required",
                ObjectBuilder::new()
                    .schema_type(Type::Boolean)
                    .default(Some(Value::Bool(false)))
                    .description(Some("Whether selecting nothing fails the step")),
            )
            .property(
                "secret",
                ObjectBuilder::new()
                    .schema_type(Type::Boolean)
                    .default(Some(Value::Bool(false)))
                    .description(Some(
                        "Whether the value is a secret: usable by later steps, stored sealed, redacted in history",
                    )),
            )
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        OneOfBuilder::new()
            .item(query())
            .item(object)
            .description(Some(
                "A JSONPath query, or `{\"path\", \"required\", \"secret\"}`: a singular query yields the value (null when absent), any other the array of matches",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Extraction {}

/// The object form of an [`Extraction`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtractionObject {
    path: Query,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    required: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    secret: bool,
}

impl Serialize for Extraction {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.required || self.secret {
            ExtractionObject {
                path: self.path.clone(),
                required: self.required,
                secret: self.secret,
            }
            .serialize(serializer)
        } else {
            self.path.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Extraction {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ExtractionVisitor;

        impl<'de> Visitor<'de> for ExtractionVisitor {
            type Value = Extraction;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a JSONPath query string or an object {\"path\": ..., \"required\": ...}",
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Extraction, E> {
                Query::parse(v).map(Extraction::optional).map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Extraction, A::Error> {
                let object =
                    ExtractionObject::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Extraction {
                    path: object.path,
                    required: object.required,
                    secret: object.secret,
                })
            }
        }

        deserializer.deserialize_any(ExtractionVisitor)
    }
}

/// Extracts every field of an `extract` map from `doc`; together the
/// fields may select [`MAX_EXTRACTED_NODES`] nodes and about
/// [`MAX_EXTRACTED_BYTES`] of JSON.
///
/// # Errors
///
/// [`ExtractError::MissingRequired`] for the first (by field name) required
/// field that selected nothing; [`ExtractError::TooLarge`] for the field
/// that went past the limits.
pub fn extract_all(
    specs: &BTreeMap<String, Extraction>,
    doc: &Value,
) -> Result<Map<String, Value>, ExtractError> {
    let mut budget = Budget::FULL;
    specs
        .iter()
        .map(|(field, spec)| Ok((field.clone(), spec.apply_within(field, doc, &mut budget)?)))
        .collect()
}

/// Runs `query` against `doc` and returns the full node list as a JSON
/// array. This is what `conveyor-api jsonpath '<query>'` prints.
///
/// # Errors
///
/// [`ExtractError::InvalidPath`] if `query` is not valid RFC 9535 JSONPath.
pub fn query_json(query: &str, doc: &Value) -> Result<Value, ExtractError> {
    Ok(Value::Array(Query::parse(query)?.nodes(doc)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc() -> Value {
        json!({
            "id": 42,
            "name": "Ada",
            "nothing": null,
            "tags": ["a", "b", "c"],
            "contacts": [
                {"email": "a@example.com", "primary": true},
                {"email": "b@example.com", "primary": false}
            ],
            "odd key": {"x": 1}
        })
    }

    #[test]
    fn singularity() {
        for q in [
            "$",
            "$.id",
            "$['id']",
            "$[0]",
            "$[-1]",
            "$.contacts[0].email",
            "$['odd key'].x",
            "$.a['b'][1]",
            "$ .a [0]",
        ] {
            assert!(Query::parse(q).unwrap().is_singular(), "{q}");
        }
        for q in [
            "$.*",
            "$[*]",
            "$..id",
            "$..[0]",
            "$[0,1]",
            "$['a','b']",
            "$[0:1]",
            "$[::-1]",
            "$[?@.primary]",
            "$.contacts[*].email",
            "$.contacts[?@.email=='x'].email",
            "$.a.*.b",
        ] {
            assert!(!Query::parse(q).unwrap().is_singular(), "{q}");
        }
    }

    #[test]
    fn singular_extract() {
        let doc = doc();
        let q = |s: &str| Query::parse(s).unwrap().extract(&doc);
        assert_eq!(q("$.id"), json!(42));
        assert_eq!(q("$['name']"), json!("Ada"));
        assert_eq!(q("$.tags[-1]"), json!("c"));
        assert_eq!(q("$.contacts[1].email"), json!("b@example.com"));
        assert_eq!(q("$.missing"), Value::Null);
        assert_eq!(q("$.tags[10]"), Value::Null);
        assert_eq!(q("$.nothing"), Value::Null);
        assert_eq!(q("$"), doc);
    }

    #[test]
    fn non_singular_extract() {
        let doc = doc();
        let q = |s: &str| Query::parse(s).unwrap().extract(&doc);
        assert_eq!(
            q("$.contacts[*].email"),
            json!(["a@example.com", "b@example.com"])
        );
        assert_eq!(
            q("$.contacts[?@.primary==true].email"),
            json!(["a@example.com"])
        );
        // A bare query in a filter tests existence, not truthiness (RFC 9535).
        assert_eq!(
            q("$.contacts[?@.primary].email"),
            json!(["a@example.com", "b@example.com"])
        );
        assert_eq!(q("$.tags[0:2]"), json!(["a", "b"]));
        assert_eq!(q("$.missing[*]"), json!([]));
        assert_eq!(q("$..x"), json!([1]));
    }

    #[test]
    fn nodes_and_query_json() {
        let doc = doc();
        assert_eq!(
            Query::parse("$.tags[*]").unwrap().nodes(&doc),
            vec![json!("a"), json!("b"), json!("c")]
        );
        // query_json always returns the node list, even for singular queries.
        assert_eq!(query_json("$.id", &doc).unwrap(), json!([42]));
        assert_eq!(query_json("$.missing", &doc).unwrap(), json!([]));
        assert_eq!(query_json("$.tags[1:]", &doc).unwrap(), json!(["b", "c"]));
    }

    #[test]
    fn parse_errors_are_clear() {
        let err = Query::parse("$.tags[").unwrap_err();
        let ExtractError::InvalidPath {
            path,
            position,
            message,
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(path, "$.tags[");
        assert!(*position >= 1);
        assert!(message.contains("position"), "{message}");
        assert!(err.to_string().contains("$.tags["), "{err}");

        // Ill-typed function calls are rejected (RFC 9535 §2.4.3).
        assert!(Query::parse("$[?length(@.*)<3]").is_err());
        assert!(Query::parse("id").is_err());
        assert!(Query::parse("$.a ").is_err());
        assert!(query_json("$[", &json!({})).is_err());
    }

    #[test]
    fn extraction_deserializes_both_forms() {
        let specs: BTreeMap<String, Extraction> = serde_json::from_value(json!({
            "id": "$.id",
            "email": {"path": "$.contacts[0].email", "required": true},
            "tags": {"path": "$.tags[*]"}
        }))
        .unwrap();
        assert!(!specs["id"].required);
        assert!(specs["email"].required);
        assert!(!specs["tags"].required);
        assert_eq!(specs["tags"].path.as_str(), "$.tags[*]");

        // Serializes back to the original forms.
        assert_eq!(
            serde_json::to_value(&specs).unwrap(),
            json!({
                "email": {"path": "$.contacts[0].email", "required": true},
                "id": "$.id",
                "tags": "$.tags[*]"
            })
        );
    }

    #[test]
    fn extraction_rejects_bad_input_at_deserialization() {
        let err = serde_json::from_value::<Extraction>(json!("$.a[")).unwrap_err();
        assert!(err.to_string().contains("invalid JSONPath `$.a[`"), "{err}");

        let err = serde_json::from_value::<Extraction>(json!({"path": "$..", "required": true}))
            .unwrap_err();
        assert!(err.to_string().contains("invalid JSONPath"), "{err}");

        let err = serde_json::from_value::<Extraction>(json!({"path": "$.a", "requird": true}))
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `requird`"), "{err}");

        let err = serde_json::from_value::<Extraction>(json!({"required": true})).unwrap_err();
        assert!(err.to_string().contains("missing field `path`"), "{err}");

        assert!(serde_json::from_value::<Extraction>(json!(3)).is_err());

        // The field path is reported by serde_path_to_error.
        let mut de = serde_json::Deserializer::from_str(r#"{"ok": "$.a", "bad": "$$"}"#);
        let err = serde_path_to_error::deserialize::<_, BTreeMap<String, Extraction>>(&mut de)
            .unwrap_err();
        assert_eq!(err.path().to_string(), "bad");
    }

    #[test]
    fn extract_all_fields() {
        let doc = doc();
        let specs: BTreeMap<String, Extraction> = serde_json::from_value(json!({
            "id": {"path": "$.id", "required": true},
            "maybe": "$.missing",
            "emails": "$.contacts[*].email",
            "none": "$.missing[*]",
            "nothing": {"path": "$.nothing", "required": true}
        }))
        .unwrap();
        let out = extract_all(&specs, &doc).unwrap();
        assert_eq!(
            Value::Object(out),
            json!({
                "id": 42,
                "maybe": null,
                "emails": ["a@example.com", "b@example.com"],
                "none": [],
                "nothing": null
            })
        );
    }

    #[test]
    fn extract_all_missing_required() {
        let doc = doc();
        for (spec, path) in [
            (json!({"path": "$.missing", "required": true}), "$.missing"),
            (
                json!({"path": "$.tags[?@=='z']", "required": true}),
                "$.tags[?@=='z']",
            ),
        ] {
            let specs: BTreeMap<String, Extraction> =
                serde_json::from_value(json!({ "field": spec })).unwrap();
            assert_eq!(
                extract_all(&specs, &doc),
                Err(ExtractError::MissingRequired {
                    field: "field".to_owned(),
                    path: path.to_owned(),
                })
            );
        }
    }

    #[test]
    fn query_serde_roundtrip_keeps_text() {
        let q: Query = serde_json::from_value(json!("$.a['b'] [0]")).unwrap();
        assert_eq!(serde_json::to_value(&q).unwrap(), json!("$.a['b'] [0]"));
        assert_eq!(q.to_string(), "$.a['b'] [0]");
        assert_eq!("$.a".parse::<Query>().unwrap().as_str(), "$.a");
    }

    #[test]
    fn a_field_selecting_too_much_is_refused_before_anything_is_cloned() {
        let wide = Value::Array((0..MAX_EXTRACTED_NODES + 1).map(Value::from).collect());
        let big = json!({"s": "x".repeat(MAX_EXTRACTED_BYTES)});
        let small = json!({"a": [1, 2, {"b": "c"}]});
        let all = Extraction::optional(Query::parse("$..*").expect("query"));
        let whole = Extraction::optional(Query::parse("$").expect("query"));
        for (doc, extraction, ok) in [
            (&wide, &all, false),
            (&big, &whole, false),
            (&big, &all, false),
            (&small, &all, true),
            (&small, &whole, true),
        ] {
            let got = extraction.apply("f", doc);
            match got {
                Ok(_) => assert!(ok, "{}", extraction.path),
                Err(e) => {
                    assert!(!ok, "{e}");
                    assert!(matches!(e, ExtractError::TooLarge { .. }), "{e}");
                    assert!(e.to_string().contains("field `f`"), "{e}");
                }
            }
        }
    }

    #[test]
    fn the_fields_of_a_step_share_one_extraction_limit() {
        let half = "x".repeat(MAX_EXTRACTED_BYTES * 2 / 3);
        let doc = json!({"a": half, "b": half});
        let field = |path: &str| Extraction::optional(Query::parse(path).expect("query"));
        let one = BTreeMap::from([("a".to_owned(), field("$.a"))]);
        assert!(extract_all(&one, &doc).is_ok());
        let both = BTreeMap::from([
            ("a".to_owned(), field("$.a")),
            ("b".to_owned(), field("$.b")),
        ]);
        match extract_all(&both, &doc) {
            Err(ExtractError::TooLarge { field, .. }) => assert_eq!(field, "b"),
            other => panic!("expected the second field to be refused, got {other:?}"),
        }
        let nodes = Value::Array((0..MAX_EXTRACTED_NODES * 2 / 3).map(Value::from).collect());
        let doc = json!({"a": nodes, "b": nodes});
        let wide = BTreeMap::from([
            ("a".to_owned(), field("$.a[*]")),
            ("b".to_owned(), field("$.b[*]")),
        ]);
        assert!(matches!(
            extract_all(&wide, &doc),
            Err(ExtractError::TooLarge { .. })
        ));
    }
}
