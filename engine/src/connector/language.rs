//! Save-time checks of the connector language's step fields: `when`
//! conditions and secret extracts.
//!
//! A condition is exactly one `<<expr>>` over the names a step may use
//! (`input`, `settings`, earlier `steps`, `execution`, `connector`,
//! `workspace`), never `credentials`: it is evaluated before the step's
//! credentials are opened, and its outcome is stored in plain sight.
//!
//! A secret extract (`"secret": true`) may not appear in the connector's
//! `output`, which is stored and returned as is; the worker redacts it there
//! too, should a whole-object reference (`<<steps>>`) carry it. Nor may it
//! be a `for_each` step's `items`, which are stored in plain text with the
//! loop's progress and its item rows.

use serde_json::Value;

use super::scope::{Scope, check_reference};
use super::validate::ValidationError;
use super::{Step, visit_json};
use crate::template::Renderer;

/// The problems of `step`'s `when` (at `path`, e.g. `steps[2]`), whose
/// earlier steps are `earlier`.
pub(super) fn problems(
    renderer: &Renderer,
    path: &str,
    step: &Step,
    earlier: &[Step],
) -> Vec<ValidationError> {
    let mut out = secret_items(renderer, path, step, earlier);
    out.extend(secret_loop_extracts(path, step));
    let Some(when) = &step.when else {
        return out;
    };
    let path = format!("{path}.when");
    let mut err = |message: String| {
        out.push(ValidationError {
            path: path.clone(),
            message,
        });
    };
    let refs = match renderer.references(when) {
        Ok(refs) => refs,
        Err(e) => {
            err(format!("template error: {e}"));
            return out;
        }
    };
    if !renderer.is_expression(when) {
        err(
            "must be exactly one `<<expr>>` placeholder, e.g. `<<steps.find.extract.count == 0>>`"
                .to_owned(),
        );
        return out;
    }
    for r in refs {
        if r == "credentials" || r.starts_with("credentials.") {
            err("a condition may not use credentials".to_owned());
        } else if let Err(message) = check_reference(&r, &Scope::Step(earlier)) {
            err(message);
        }
    }
    out
}

/// A `for_each` step whose `items` name a secret extract of `earlier`.
fn secret_items(
    renderer: &Renderer,
    path: &str,
    step: &Step,
    earlier: &[Step],
) -> Vec<ValidationError> {
    let Some(each) = &step.for_each else {
        return Vec::new();
    };
    let refs = renderer.references(&each.items).unwrap_or_default();
    refs.iter()
        .find_map(|r| secret_in(r, earlier))
        .map(|secret| ValidationError {
            path: format!("{path}.for_each.items"),
            message: format!(
                "`{secret}` is a secret extract and may not be looped over: items are stored in plain text"
            ),
        })
        .into_iter()
        .collect()
}

/// Secret extracts of a `for_each` or `paginate` step: each item's or
/// page's extracted values are kept in the loop's stored progress (to
/// resume it after a crash) in plain text, so none may be secret.
fn secret_loop_extracts(path: &str, step: &Step) -> Vec<ValidationError> {
    let kind = match (&step.for_each, &step.paginate) {
        (Some(_), _) => "for_each",
        (None, Some(_)) => "paginate",
        (None, None) => return Vec::new(),
    };
    step.extract
        .iter()
        .filter(|(_, e)| e.secret)
        .map(|(name, _)| ValidationError {
            path: format!("{path}.extract.{name}.secret"),
            message: format!(
                "a {kind} step's extracts may not be secret: each one's values are stored with the loop's progress in plain text; extract the secret in a step of its own"
            ),
        })
        .collect()
}

/// The places where `output` names a secret extract of `steps`.
pub(super) fn output_problems(
    renderer: &Renderer,
    output: &Value,
    steps: &[Step],
) -> Vec<ValidationError> {
    let mut out = Vec::new();
    visit_json("output", output, &mut |path, template| {
        for r in renderer.references(template).unwrap_or_default() {
            if let Some(secret) = secret_in(&r, steps) {
                out.push(ValidationError {
                    path: path.to_owned(),
                    message: format!("`{secret}` is a secret extract and may not be in the output"),
                });
            }
        }
    });
    out
}

/// The first secret extract (`steps.login.extract.token`) the dotted
/// reference `r` would show, whole or inside a larger value.
fn secret_in(r: &str, steps: &[Step]) -> Option<String> {
    let mut parts = r.split('.');
    if parts.next() != Some("steps") {
        return None;
    }
    let name = parts.next();
    let part = parts.next();
    let field = parts.next();
    steps
        .iter()
        .filter(|s| name.is_none_or(|n| s.name == n))
        .find_map(|s| {
            if part.is_some_and(|p| p != "extract") {
                return None;
            }
            s.extract
                .iter()
                .find(|(f, e)| e.secret && field.is_none_or(|want| want == f.as_str()))
                .map(|(f, _)| format!("steps.{}.extract.{f}", s.name))
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::connector::parse_and_validate;

    fn errors(json: serde_json::Value) -> Vec<(String, String)> {
        match parse_and_validate(&json) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|e| (e.path, e.message)).collect(),
        }
    }

    fn connector(when: &str, output: serde_json::Value) -> serde_json::Value {
        json!({
            "name": "c",
            "steps": [
                {"name": "login", "method": "POST", "url": "https://x.test/login",
                 "extract": {"token": {"path": "$.token", "secret": true}, "count": "$.count"}},
                {"name": "find", "method": "GET", "url": "https://x.test/find", "when": when},
            ],
            "output": output,
        })
    }

    #[test]
    fn valid_conditions_and_secret_extracts_are_accepted() {
        assert_eq!(
            errors(connector(
                "<<steps.login.extract.count == 0 and input.x is defined>>",
                json!({"n": "<<steps.login.extract.count>>"})
            )),
            []
        );
    }

    #[test]
    fn bad_conditions_are_refused_with_the_field_path() {
        let cases: &[(&str, &str)] = &[
            (
                "<<steps.find.status == 200>>",
                "does not name an earlier step",
            ),
            ("<<credentials.x.token == 'a'>>", "may not use credentials"),
            ("steps.login.status == 200", "exactly one"),
            ("<<input.a>> <<input.b>>", "exactly one"),
            ("<<input.a ==>>", "template error"),
            ("<<nope == 1>>", "unknown name `nope`"),
        ];
        for (when, want) in cases {
            let got = errors(connector(when, json!(null)));
            assert_eq!(got.len(), 1, "{when}: {got:?}");
            assert_eq!(got[0].0, "steps[1].when", "{when}");
            assert!(got[0].1.contains(want), "{when}: {}", got[0].1);
        }
    }

    #[test]
    fn secret_extracts_may_not_be_in_the_output() {
        for reference in [
            "<<steps.login.extract.token>>",
            "<<steps.login.extract>>",
            "<<steps.login>>",
            "<<steps>>",
        ] {
            let got = errors(connector("<<true>>", json!({"t": reference})));
            assert_eq!(
                got,
                [(
                    "output.t".to_owned(),
                    "`steps.login.extract.token` is a secret extract and may not be in the output"
                        .to_owned()
                )],
                "{reference}"
            );
        }
        let fine = errors(connector(
            "<<true>>",
            json!({"s": "<<steps.login.status>>", "c": "<<steps.login.extract.count>>"}),
        ));
        assert_eq!(fine, []);
    }

    #[test]
    fn secret_extracts_may_not_be_looped_over() {
        let with_items = |items: &str| {
            json!({
                "name": "c",
                "steps": [
                    {"name": "login", "method": "POST", "url": "https://x.test/login",
                     "extract": {"token": {"path": "$.token", "secret": true}, "ids": "$.ids"}},
                    {"name": "each", "method": "GET", "url": "https://x.test/<<item>>",
                     "for_each": {"items": items}},
                ],
            })
        };
        assert_eq!(
            errors(with_items("<<steps.login.extract.token>>")),
            [(
                "steps[1].for_each.items".to_owned(),
                "`steps.login.extract.token` is a secret extract and may not be looped over: items are stored in plain text".to_owned()
            )]
        );
        assert_eq!(errors(with_items("<<steps.login.extract.ids>>")), []);
    }

    #[test]
    fn loop_steps_may_not_extract_secrets() {
        let with_loop = |looping: serde_json::Value| {
            let mut step = json!({"name": "each", "method": "GET", "url": "https://x.test/list",
                "extract": {"token": {"path": "$.token", "secret": true}, "id": "$.id"}});
            step.as_object_mut()
                .expect("object")
                .extend(looping.as_object().expect("object").clone());
            json!({"name": "c", "steps": [step]})
        };
        let message = |kind: &str| {
            format!(
                "a {kind} step's extracts may not be secret: each one's values are stored with the loop's progress in plain text; extract the secret in a step of its own"
            )
        };
        assert_eq!(
            errors(with_loop(json!({"for_each": {"items": "<<input.ids>>"}}))),
            [(
                "steps[0].extract.token.secret".to_owned(),
                message("for_each")
            )]
        );
        assert_eq!(
            errors(with_loop(
                json!({"paginate": {"next": {"type": "cursor", "path": "$.next", "param": "after"}}})
            )),
            [(
                "steps[0].extract.token.secret".to_owned(),
                message("paginate")
            )]
        );
        assert_eq!(errors(with_loop(json!({}))), []);
    }
}
