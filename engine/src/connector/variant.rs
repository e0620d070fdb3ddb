//! Per-kind request shapes: one step that serves credentials of different
//! kinds. A static Jira credential sends basic auth to the site URL, an
//! OAuth one a bearer token to `api.atlassian.com/ex/jira/{cloud_id}`; a
//! static Zoho token goes to the configured data center, an OAuth one to
//! the `api_domain` its token response named.
//!
//! A step's `variants` list such alternatives, each keyed by the kind of
//! one credential the step uses. At send time the first variant whose
//! credential is of one of its `kinds` replaces the step's `url`, `auth`,
//! `headers` and `query` (each only when the variant gives it); method,
//! body, `expect`, `extract` and retries stay the step's. No matching
//! variant (or a credential that does not exist) leaves the step as it is.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Auth, Connector, Step, StepKind, ValidationError, is_credential_name};
use crate::oauth::CredentialKind;

/// Most variants one step may list.
pub const MAX_VARIANTS: usize = 8;

/// How a step is sent when a credential is of certain kinds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// The credential (as the steps name it) whose kind picks this variant.
    #[schema(pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$", example = "jira")]
    pub credential: String,
    /// The kinds it applies to (at least one).
    #[schema(min_items = 1)]
    pub kinds: Vec<CredentialKind>,
    /// Replaces the step's URL template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Replaces the step's auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// Replaces the step's headers (all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// Replaces the step's query parameters (all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<BTreeMap<String, String>>,
}

impl Variant {
    /// Whether it changes nothing.
    fn is_empty(&self) -> bool {
        self.url.is_none() && self.auth.is_none() && self.headers.is_none() && self.query.is_none()
    }

    /// A step holding only what this variant gives (the step's method, a
    /// literal URL when it gives none), so the step rules can check the
    /// variant's parts under its own path without repeating the step's.
    pub(super) fn probe(&self, step: &Step) -> Step {
        Step {
            name: "variant".to_owned(),
            kind: StepKind::Http,
            method: step.method,
            url: self
                .url
                .clone()
                .unwrap_or_else(|| "https://variant.invalid/".to_owned()),
            headers: self.headers.clone().unwrap_or_default(),
            query: self.query.clone().unwrap_or_default(),
            body: None,
            auth: self.auth.clone().unwrap_or_default(),
            timeout_ms: super::DEFAULT_STEP_TIMEOUT_MS,
            expect: Vec::new(),
            extract: BTreeMap::new(),
            on_error: super::OnError::Fail,
            retry: None,
            rate_limit: None,
            concurrency: None,
            variants: Vec::new(),
            paginate: None,
            when: None,
            for_each: None,
        }
    }

    /// Calls `f(field, template)` for every template string it gives.
    pub(super) fn visit_templates(&self, path: &str, f: &mut impl FnMut(&str, &str)) {
        if let Some(url) = &self.url {
            f(&format!("{path}.url"), url);
        }
        for (name, value) in self.headers.iter().flatten() {
            f(&format!("{path}.headers.{name}"), value);
        }
        for (name, value) in self.query.iter().flatten() {
            f(&format!("{path}.query.{name}"), value);
        }
    }
}

impl Step {
    /// The step as sent when each credential (by the name the steps use)
    /// is of the kind `kind_of` says: the first matching variant applied,
    /// or the step itself.
    pub fn resolved(&self, kind_of: impl Fn(&str) -> Option<CredentialKind>) -> Cow<'_, Step> {
        let Some(v) = self
            .variants
            .iter()
            .find(|v| kind_of(&v.credential).is_some_and(|kind| v.kinds.contains(&kind)))
        else {
            return Cow::Borrowed(self);
        };
        let mut step = self.clone();
        step.variants = Vec::new();
        if let Some(url) = &v.url {
            step.url.clone_from(url);
        }
        if let Some(auth) = &v.auth {
            step.auth = auth.clone();
        }
        if let Some(headers) = &v.headers {
            step.headers.clone_from(headers);
        }
        if let Some(query) = &v.query {
            step.query.clone_from(query);
        }
        Cow::Owned(step)
    }
}

impl Connector {
    /// The connector as sent with credentials of the kinds `kind_of` says
    /// ([`Step::resolved`] for every step), without variants.
    pub fn resolved(&self, kind_of: impl Fn(&str) -> Option<CredentialKind>) -> Connector {
        let mut out = self.clone();
        for step in &mut out.steps {
            *step = step.resolved(&kind_of).into_owned();
            step.variants.clear();
        }
        out
    }
}

/// The problems of a step's variant list that the step rules cannot see
/// (its parts are checked through [`Variant::probe`]), under `path`
/// (`steps[0]`).
pub(super) fn problems(path: &str, step: &Step) -> Vec<ValidationError> {
    let mut out = Vec::new();
    let mut problem = |path: String, message: &str| {
        out.push(ValidationError {
            path,
            message: message.to_owned(),
        });
    };
    if step.variants.len() > MAX_VARIANTS {
        problem(format!("{path}.variants"), "must list at most 8 variants");
    }
    for (j, v) in step.variants.iter().enumerate() {
        let path = format!("{path}.variants[{j}]");
        if !is_credential_name(&v.credential) {
            problem(
                format!("{path}.credential"),
                "must be 1 to 64 characters of [A-Za-z0-9_.-], not starting with . or -",
            );
        }
        if v.kinds.is_empty() {
            problem(
                format!("{path}.kinds"),
                "must list at least one credential kind: static, oauth2_authorization_code, oauth2_client_credentials, nango",
            );
        }
        if v.is_empty() {
            problem(
                path,
                "must replace at least one of url, auth, headers, query",
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::connector::parse_and_validate;

    fn connector(variants: serde_json::Value) -> serde_json::Value {
        json!({"name": "Jira", "steps": [{
            "name": "create", "method": "POST",
            "url": "https://site.example/rest/api/3/issue",
            "auth": {"type": "basic", "credential": "jira"},
            "headers": {"Accept": "application/json"},
            "body": {"type": "json", "content": {"summary": "<<input.summary>>"}},
            "variants": variants
        }]})
    }

    fn oauth_variant() -> serde_json::Value {
        json!([{"credential": "jira", "kinds": ["oauth2_authorization_code", "nango"],
                "url": "https://api.example/ex/jira/<<settings.cloud_id>>/rest/api/3/issue",
                "auth": {"type": "oauth2", "credential": "jira"}}])
    }

    #[test]
    fn the_first_variant_of_the_credentials_kind_replaces_the_parts_it_gives() {
        let c = parse_and_validate(&connector(oauth_variant())).expect("valid");
        let step = &c.steps[0];
        let oauth = step.resolved(|_| Some(CredentialKind::AuthorizationCode));
        assert_eq!(
            oauth.url,
            "https://api.example/ex/jira/<<settings.cloud_id>>/rest/api/3/issue"
        );
        assert_eq!(oauth.auth.credential(), Some("jira"));
        assert!(matches!(oauth.auth, Auth::OAuth2 { .. }));
        assert_eq!(oauth.headers, step.headers, "headers not given stay");
        assert_eq!(oauth.body, step.body);
        assert!(oauth.variants.is_empty());
        for kind in [Some(CredentialKind::Static), None] {
            let plain = step.resolved(|_| kind);
            assert!(matches!(plain, Cow::Borrowed(_)), "{kind:?}");
            assert!(matches!(plain.auth, Auth::Basic { .. }));
        }
        let other = step.resolved(|name| (name != "jira").then_some(CredentialKind::Nango));
        assert!(
            matches!(other.auth, Auth::Basic { .. }),
            "keyed by its credential"
        );
    }

    #[test]
    fn variant_problems_carry_their_paths() {
        let errors = |variants| {
            parse_and_validate(&connector(variants))
                .expect_err("invalid")
                .0
                .into_iter()
                .map(|e| e.path)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            errors(json!([{"credential": "jira", "kinds": []}])),
            ["steps[0].variants[0].kinds", "steps[0].variants[0]"]
        );
        assert_eq!(
            errors(json!([{"credential": "-x", "kinds": ["nango"], "url": "ftp://x"}])),
            [
                "steps[0].variants[0].url",
                "steps[0].variants[0].credential"
            ]
        );
        assert_eq!(
            errors(json!([{"credential": "j", "kinds": ["nango"],
                           "headers": {"Host": "x", "A": "<<steps.later.body>>"}}])),
            [
                "steps[0].variants[0].headers.A",
                "steps[0].variants[0].headers.Host"
            ]
        );
        assert_eq!(
            errors(json!([{"credential": "j", "kinds": ["nango"],
                           "auth": {"type": "oauth2", "credential": "j", "scheme": "a b"}}])),
            ["steps[0].variants[0].auth.scheme"]
        );
        assert_eq!(
            errors(json!([{"credential": "j", "kinds": ["nango"],
                           "url": "https://<<input.host>>/x"}])),
            ["steps[0].variants[0].url"]
        );
        let unknown = parse_and_validate(&connector(
            json!([{"credential": "j", "kinds": ["oauth3"], "url": "https://x.example"}]),
        ))
        .expect_err("unknown kind")
        .0;
        assert_eq!(unknown[0].path, "steps[0].variants[0].kinds[0]");
        let many = serde_json::Value::Array(vec![oauth_variant()[0].clone(); MAX_VARIANTS + 1]);
        assert_eq!(errors(many), ["steps[0].variants"]);
    }

    #[test]
    fn names_used_include_what_variants_use() {
        let c = parse_and_validate(&connector(json!([{
            "credential": "jira", "kinds": ["nango"],
            "url": "<<settings.api_url>>/x",
            "headers": {"X-Site": "<<settings.site>>"},
            "auth": {"type": "oauth2", "credential": "jira_oauth"}
        }])))
        .expect("valid");
        let (credentials, settings) = c.names_used(&crate::template::Renderer::new());
        assert_eq!(credentials, ["jira", "jira_oauth"]);
        assert_eq!(settings, ["api_url", "site"]);
        let static_shape = c.resolved(|_| Some(CredentialKind::Static));
        assert_eq!(
            static_shape.names_used(&crate::template::Renderer::new()).1,
            Vec::<String>::new()
        );
    }
}
