//! The connector language's uses of templates: conditions and omit on null.
//!
//! A step's `when` is one placeholder that must evaluate to `true` or
//! `false` ([`Renderer::condition`]); any other value is an error naming
//! its type, never the value.
//!
//! A JSON body member, form field, query parameter or header whose template
//! is exactly one placeholder evaluating to `null` (a null input field, or a
//! missing one with `| default(omit)`; `omit` is a global holding `null`) is
//! not sent at all, so optional provider fields need no workarounds. Text
//! around a placeholder (`"Bearer <<x>>"`) always renders, `null` as the
//! empty string, and a literal `null` written in a JSON body is kept.

use serde_json::Value as Json;

use super::inspect::{finish_literal, finish_literal_owned, is_literal, single_placeholder};
use super::{Context, Dest, Renderer, TemplateError};

impl Renderer {
    /// Whether `template` is exactly one placeholder holding one expression
    /// (`<<a == 1>>`; not `<<a>> <<b>>`, not `x <<a>>`).
    pub fn is_expression(&self, template: &str) -> bool {
        single_placeholder(template)
            .is_some_and(|(expr, _)| self.env.compile_expression(expr).is_ok())
    }

    /// Evaluates a condition (a step's `when`) against `ctx`.
    ///
    /// # Errors
    ///
    /// Any render error (a missing name is [`TemplateError::Undefined`]), and
    /// [`TemplateError::Render`] when the value is not a boolean.
    pub fn condition(&self, template: &str, ctx: &Json) -> Result<bool, TemplateError> {
        let value = if self.is_expression(template) {
            self.value_with_root(template, &Context::new(ctx))?
        } else {
            return Err(TemplateError::Render(
                "a condition must be exactly one `<<expr>>` placeholder".to_owned(),
            ));
        };
        match value {
            Json::Bool(b) => Ok(b),
            other => Err(TemplateError::Render(format!(
                "a condition must be true or false, not {}",
                type_name(&other)
            ))),
        }
    }

    /// Renders a request value that may be left out: `None` when `template`
    /// is exactly one placeholder whose value is `null`, else the rendered
    /// text as [`render_str_in`](Self::render_str_in) gives it.
    ///
    /// Only [`Dest::Text`] and [`Dest::Header`] values may be left out; the
    /// other destinations always render.
    ///
    /// # Errors
    ///
    /// As [`render_str_in`](Self::render_str_in).
    pub fn render_optional_in(
        &self,
        template: &str,
        ctx: &Context,
        dest: Dest,
    ) -> Result<Option<String>, TemplateError> {
        if is_literal(template) {
            return finish_literal(template, dest).map(Some);
        }
        if !matches!(dest, Dest::Text | Dest::Header) || single_placeholder(template).is_none() {
            return self.render_with_root(template, ctx, dest).map(Some);
        }
        let text = match self.value_with_root(template, ctx)? {
            Json::Null => return Ok(None),
            Json::String(s) => s,
            // Numbers, booleans, arrays and objects in their JSON form, as
            // the text form of a value has them.
            other => other.to_string(),
        };
        finish_literal_owned(text, dest).map(Some)
    }

    /// Renders a JSON request body like
    /// [`render_json_in`](Self::render_json_in), but leaves out every object
    /// member whose value is a template that renders to `null`, at any depth.
    /// Array items and literal `null`s are kept.
    ///
    /// # Errors
    ///
    /// As [`render_json_in`](Self::render_json_in).
    pub fn render_body_in(&self, value: &Json, ctx: &Context) -> Result<Json, TemplateError> {
        let mut path = String::new();
        self.render_json_at(value, ctx, &mut path, 0, true)
    }
}

/// A JSON value's type, for messages that must not quote the value.
fn type_name(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ctx() -> Context {
        Context::new(&json!({
            "input": {"name": "Ada", "age": 36, "nothing": null, "tags": ["a"]},
        }))
    }

    #[test]
    fn a_lone_placeholder_that_renders_null_is_left_out() {
        let r = Renderer::new();
        let cases: &[(&str, Option<&str>)] = &[
            ("<<input.nothing>>", None),
            ("<<input.missing | default(omit)>>", None),
            ("<<input.name if input.age > 40 else omit>>", None),
            ("<<input.name if input.age > 30 else omit>>", Some("Ada")),
            ("<<input.age>>", Some("36")),
            ("<<input.tags>>", Some(r#"["a"]"#)),
            ("<<input.age > 30>>", Some("true")),
            ("id <<input.nothing>>", Some("id ")),
            ("plain", Some("plain")),
        ];
        for (template, want) in cases {
            for dest in [Dest::Text, Dest::Header] {
                let got = r.render_optional_in(template, &ctx(), dest).unwrap();
                assert_eq!(got.as_deref(), *want, "{template} {dest:?}");
            }
        }
    }

    #[test]
    fn optional_values_keep_the_header_and_undefined_rules() {
        let r = Renderer::new();
        let c = Context::new(&json!({"input": {"crlf": "a\r\nb"}}));
        assert_eq!(
            r.render_optional_in("<<input.crlf>>", &c, Dest::Header),
            Err(TemplateError::HeaderNewline)
        );
        assert_eq!(
            r.render_optional_in("<<input.missing>>", &c, Dest::Text)
                .unwrap_err()
                .to_string(),
            "`input.missing` is not defined"
        );
    }

    #[test]
    fn body_members_rendering_null_are_left_out_at_any_depth() {
        let r = Renderer::new();
        let body = json!({
            "name": "<<input.name>>",
            "nickname": "<<input.nickname | default(omit)>>",
            "cleared": null,
            "profile": {"age": "<<input.age>>", "bio": "<<input.nothing>>"},
            "list": ["<<input.nothing>>", 1],
        });
        assert_eq!(
            r.render_body_in(&body, &ctx()).unwrap(),
            json!({
                "name": "Ada",
                "cleared": null,
                "profile": {"age": 36},
                "list": [null, 1],
            })
        );
        // The plain JSON render (outputs) keeps them.
        assert_eq!(
            r.render_json_in(&json!({"bio": "<<input.nothing>>"}), &ctx())
                .unwrap(),
            json!({"bio": null})
        );
    }

    #[test]
    fn conditions_compare_and_combine_numbers_strings_booleans_and_null() {
        let r = Renderer::new();
        let c = json!({
            "input": {"n": 0, "s": "pro", "b": true, "z": null, "f": 1.5},
            "steps": {"find": {"status": 200, "extract": {"count": 0, "id": null}}},
        });
        let cases: &[(&str, bool)] = &[
            ("<<steps.find.extract.count == 0>>", true),
            ("<<input.n != 0>>", false),
            ("<<input.f < 2>>", true),
            ("<<input.f <= 1.5>>", true),
            ("<<input.f > 1.5>>", false),
            ("<<input.f >= 1>>", true),
            ("<<input.s == 'pro'>>", true),
            ("<<input.s < 'qro'>>", true),
            ("<<input.b and input.n == 0>>", true),
            ("<<input.b and input.n == 1>>", false),
            ("<<input.n == 1 or input.s == 'pro'>>", true),
            ("<<not input.b>>", false),
            ("<<input.z is none>>", true),
            ("<<input.z == none>>", true),
            (
                "<<steps.find.extract.id is none and not (input.s != 'pro')>>",
                true,
            ),
            ("<<input.missing is defined>>", false),
        ];
        for (template, want) in cases {
            assert_eq!(r.condition(template, &c), Ok(*want), "{template}");
        }
    }

    #[test]
    fn conditions_that_are_not_booleans_or_not_one_placeholder_are_errors() {
        let r = Renderer::new();
        let c = json!({"input": {"n": 3, "secret": "hunter2"}});
        let err = |t: &str| r.condition(t, &c).unwrap_err().to_string();
        assert_eq!(
            err("<<input.n>>"),
            "a condition must be true or false, not a number"
        );
        assert_eq!(
            err("<<input.secret>>"),
            "a condition must be true or false, not a string"
        );
        assert_eq!(
            err("<<input.missing == 1>>"),
            "`input.missing` is not defined"
        );
        assert!(err("x <<input.n == 3>>").contains("exactly one"));
        assert!(err("<<input.n>> <<input.n>>").contains("exactly one"));
        // Ordering values of different types does not fail (minijinja
        // orders types), as docs/connector-language.md warns.
        assert!(r.condition("<<'1' < 2>>", &c).is_ok());
        assert!(r.is_expression("<< input.n == 3 >>"));
        assert!(!r.is_expression("<<input.n ==>>"));
    }

    #[test]
    fn omit_is_not_a_context_reference() {
        let r = Renderer::new();
        assert_eq!(
            r.references("<<input.x | default(omit)>>").unwrap(),
            ["input.x"]
        );
    }
}
