//! What a template may name where it stands: the names in scope of a
//! step, of a `for_each` step (with `item` and `index`) and of the output,
//! and the check of one dotted reference against them.

use super::Step;

/// Which earlier steps a template may name.
pub(super) enum Scope<'a> {
    /// Inside a step: only the steps before it (the slice given).
    Step(&'a [Step]),
    /// Inside a `for_each` step: the steps before it, `item` and `index`.
    Each(&'a [Step]),
    /// The output template: every step.
    Output(&'a [Step]),
}

/// Checks one dotted reference (`steps.create.extract.id`) against the names
/// in scope.
pub(super) fn check_reference(reference: &str, scope: &Scope<'_>) -> Result<(), String> {
    let mut parts = reference.split('.');
    let root = parts.next().unwrap_or_default();
    match root {
        "input" | "credentials" | "settings" => Ok(()),
        "item" | "index" if matches!(scope, Scope::Each(_)) => Ok(()),
        "execution" => match parts.next() {
            None | Some("id" | "attempt") => Ok(()),
            Some(other) => Err(format!(
                "unknown name `execution.{other}` (use execution.id or execution.attempt)"
            )),
        },
        "connector" | "workspace" => match parts.next() {
            None | Some("id") => Ok(()),
            Some(other) => Err(format!("unknown name `{root}.{other}` (use {root}.id)")),
        },
        "steps" => {
            let Some(name) = parts.next() else {
                return Ok(());
            };
            let (steps, earlier_only) = match scope {
                Scope::Step(earlier) | Scope::Each(earlier) => (*earlier, true),
                Scope::Output(all) => (*all, false),
            };
            let Some(step) = steps.iter().find(|s| s.name == name) else {
                return Err(if earlier_only {
                    format!("`steps.{name}` does not name an earlier step")
                } else {
                    format!("`steps.{name}` does not name a step")
                });
            };
            match parts.next() {
                None | Some("status" | "headers" | "body" | "extract") => Ok(()),
                Some("paging") if step.paginate.is_some() => Ok(()),
                Some("for_each") if step.for_each.is_some() => Ok(()),
                Some(other) => Err(format!(
                    "unknown name `steps.{name}.{other}` (use status, headers, body or extract)"
                )),
            }
        }
        other => Err(format!(
            "unknown name `{other}` (names in scope: input, steps, credentials, settings, execution, connector, workspace)"
        )),
    }
}
