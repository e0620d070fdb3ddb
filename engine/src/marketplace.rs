//! Connector templates: a connector definition plus what a workspace needs
//! to install it (the credentials it uses, the settings it accepts) and
//! marketplace metadata. Official templates ship as files in `templates/`,
//! in the same JSON the API accepts.
//!
//! Installing a template yields a plain [`Connector`] whose `settings` hold
//! the template's defaults overridden by the installer's values, and whose
//! `credential_bindings` map each template credential to a workspace
//! credential.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::connector::{self, Connector, ValidationError, ValidationErrors, is_credential_name};
use crate::oauth::{self, CredentialKind};
use crate::template::Renderer;

include!(concat!(env!("OUT_DIR"), "/official_templates.rs"));

/// The official templates shipped in `templates/`, parsed.
///
/// # Errors
///
/// A file that is not a valid template, named with its problems (the
/// test suite keeps this from shipping).
pub fn official() -> Result<Vec<Template>, String> {
    OFFICIAL_TEMPLATES
        .iter()
        .map(|(file, text)| {
            let json: Value =
                serde_json::from_str(text).map_err(|e| format!("templates/{file}: {e}"))?;
            Template::parse(&json).map_err(|e| format!("templates/{file}: {e}"))
        })
        .collect()
}

/// Categories a template may be filed under.
pub const CATEGORIES: [&str; 8] = [
    "crm",
    "communication",
    "database",
    "productivity",
    "e-commerce",
    "payments",
    "marketing",
    "developer-tools",
];

/// A connector template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Unique id, `[a-z0-9][a-z0-9-]{0,63}`.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,63}$", example = "slack-post-message")]
    pub slug: String,
    /// Display name.
    #[schema(min_length = 1, pattern = r"\S")]
    pub name: String,
    /// What it does, in a sentence or two.
    pub description: String,
    /// One of [`CATEGORIES`].
    #[schema(example = "communication")]
    pub category: String,
    /// The third party, e.g. `hubspot`.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,63}$")]
    pub provider: String,
    /// The provider's API documentation the requests follow.
    #[schema(pattern = "^https?://")]
    pub docs_url: String,
    /// Semantic version (`MAJOR.MINOR.PATCH`).
    #[schema(
        pattern = r"^(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})$",
        example = "1.0.0"
    )]
    pub version: String,
    /// Credentials the steps use.
    #[serde(default)]
    pub credentials: Vec<TemplateCredential>,
    /// Settings the steps read as `<<settings.x>>`.
    #[serde(default)]
    pub settings: Vec<TemplateSetting>,
    /// The connector itself.
    pub connector: Connector,
}

/// A credential a template needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateCredential {
    /// The name the steps use.
    pub name: String,
    /// `bearer`, `api_key`, `basic`, `custom` or `oauth2`.
    pub auth: String,
    /// The fields the credential holds (e.g. `token`).
    pub fields: Vec<String>,
    /// Where to get it, in one line.
    pub hint: String,
    /// The credential kinds it accepts (`static`, `oauth2_authorization_code`,
    /// `oauth2_client_credentials`, `nango`); `["static"]` when absent. A
    /// `bearer` step sends an OAuth credential's access token.
    #[serde(default = "static_kind")]
    pub kinds: Vec<String>,
    /// The OAuth provider preset to connect it with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

fn static_kind() -> Vec<String> {
    vec!["static".to_owned()]
}

/// A setting a template accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateSetting {
    /// The name steps read as `<<settings.name>>`.
    pub name: String,
    /// What it means.
    pub description: String,
    /// The default; a setting without one must be given at install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
}

/// What an installer provides.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallRequest {
    /// The connector's name (default: the template's).
    #[serde(default)]
    pub name: Option<String>,
    /// Setting values overriding the defaults.
    #[serde(default)]
    pub settings: Map<String, Value>,
    /// Template credential name → workspace credential name.
    #[serde(default)]
    pub credentials: BTreeMap<String, String>,
}

fn err(path: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError {
        path: path.into(),
        message: message.into(),
    }
}

fn is_slug(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Parses `MAJOR.MINOR.PATCH` into a comparable triple.
pub fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((major, minor, patch))
}

impl Template {
    /// Deserialises and validates a template.
    ///
    /// # Errors
    ///
    /// Every problem, each with its JSON path (connector problems under
    /// `connector.`).
    pub fn parse(json: &Value) -> Result<Template, ValidationErrors> {
        let template: Template = crate::json::from_value(json)
            .map_err(|e| ValidationErrors(vec![err(e.path, e.message)]))?;
        template.validate()?;
        Ok(template)
    }

    /// Checks metadata, the connector, and that every credential and
    /// setting the steps use is declared (and every declared one is used).
    ///
    /// # Errors
    ///
    /// Every problem, with its JSON path.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = Vec::new();
        if !is_slug(&self.slug) {
            errors.push(err(
                "slug",
                "must be 1 to 64 characters of [a-z0-9-], starting with a letter or digit",
            ));
        }
        if self.name.trim().is_empty() {
            errors.push(err("name", "must not be empty"));
        }
        if !CATEGORIES.contains(&self.category.as_str()) {
            errors.push(err(
                "category",
                format!("must be one of {}", CATEGORIES.join(", ")),
            ));
        }
        if !is_slug(&self.provider) {
            errors.push(err("provider", "must be a lowercase id such as `hubspot`"));
        }
        if !(self.docs_url.starts_with("https://") || self.docs_url.starts_with("http://")) {
            errors.push(err("docs_url", "must be an http(s) URL"));
        }
        if parse_version(&self.version).is_none() {
            errors.push(err(
                "version",
                "must be a semantic version MAJOR.MINOR.PATCH",
            ));
        }
        if let Err(e) = connector::validate(&self.connector) {
            errors.extend(e.0.into_iter().map(|e| ValidationError {
                path: if e.path.is_empty() {
                    "connector".into()
                } else {
                    format!("connector.{}", e.path)
                },
                message: e.message,
            }));
        }
        let (used_credentials, used_settings) = self.connector.names_used(&Renderer::new());
        for (i, c) in self.credentials.iter().enumerate() {
            if !is_credential_name(&c.name) {
                errors.push(err(
                    format!("credentials[{i}].name"),
                    "is not a valid credential name",
                ));
            }
            if !matches!(
                c.auth.as_str(),
                "bearer" | "api_key" | "basic" | "custom" | "oauth2"
            ) {
                errors.push(err(
                    format!("credentials[{i}].auth"),
                    "must be bearer, api_key, basic, custom or oauth2",
                ));
            }
            let known = |k: &String| CredentialKind::ALL.iter().any(|c| c.as_str() == k);
            if c.kinds.is_empty() || !c.kinds.iter().all(known) {
                errors.push(err(
                    format!("credentials[{i}].kinds"),
                    "must list credential kinds: static, oauth2_authorization_code, oauth2_client_credentials, nango",
                ));
            }
            if c.provider
                .as_deref()
                .is_some_and(|p| oauth::preset(p).is_none())
            {
                errors.push(err(
                    format!("credentials[{i}].provider"),
                    "is not a known OAuth provider preset",
                ));
            }
            if c.fields.is_empty() {
                errors.push(err(
                    format!("credentials[{i}].fields"),
                    "must name at least one field",
                ));
            }
            if !used_credentials.contains(&c.name) {
                errors.push(err(
                    format!("credentials[{i}].name"),
                    format!("`{}` is not used by any step", c.name),
                ));
            }
        }
        for (i, step) in self.connector.steps.iter().enumerate() {
            for (j, v) in step.variants.iter().enumerate() {
                let Some(c) = self.credentials.iter().find(|c| c.name == v.credential) else {
                    continue;
                };
                for (k, kind) in v.kinds.iter().enumerate() {
                    if !c.kinds.iter().any(|accepted| accepted == kind.as_str()) {
                        errors.push(err(
                            format!("connector.steps[{i}].variants[{j}].kinds[{k}]"),
                            format!("credential `{}` does not accept {}", c.name, kind.as_str()),
                        ));
                    }
                }
            }
        }
        for name in &used_credentials {
            if !self.credentials.iter().any(|c| &c.name == name) {
                errors.push(err(
                    "credentials",
                    format!("the steps use credential `{name}`, which is not declared"),
                ));
            }
        }
        for (i, s) in self.settings.iter().enumerate() {
            if s.name.is_empty()
                || !s
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                errors.push(err(
                    format!("settings[{i}].name"),
                    "must be 1 or more characters of [A-Za-z0-9_]",
                ));
            }
        }
        for name in &used_settings {
            if !self.settings.iter().any(|s| &s.name == name) {
                errors.push(err(
                    "settings",
                    format!("the steps use setting `{name}`, which is not declared"),
                ));
            }
        }
        if !self.connector.settings.is_empty() {
            errors.push(err(
                "connector.settings",
                "declare settings in the template's `settings` list, not in the connector",
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(errors))
        }
    }

    /// The problems of mapping template credentials to workspace
    /// credentials of the wrong kind, each under `prefix` and the template
    /// credential's name (`credentials.zoho`). `bound` maps a template
    /// credential to a workspace credential; `kinds` holds the kinds of
    /// the workspace's credentials (one that does not exist yet is not
    /// checked).
    pub fn kind_problems(
        &self,
        prefix: &str,
        bound: impl Fn(&str) -> Option<String>,
        kinds: &BTreeMap<String, CredentialKind>,
    ) -> Vec<ValidationError> {
        let mut errors = Vec::new();
        for c in &self.credentials {
            let Some(target) = bound(&c.name) else {
                continue;
            };
            if let Some(kind) = kinds.get(&target)
                && !c.kinds.iter().any(|k| k == kind.as_str())
            {
                errors.push(err(
                    format!("{prefix}.{}", c.name),
                    format!(
                        "`{target}` is a {} credential; `{}` accepts {}",
                        kind.as_str(),
                        c.name,
                        c.kinds.join(", ")
                    ),
                ));
            }
        }
        errors
    }

    /// The connector an install creates. `kinds` holds the kinds of the
    /// workspace's credentials: a mapped credential must be of a kind the
    /// template's credential accepts, and a setting without a default is
    /// required only when the steps, as sent with those kinds (their
    /// `variants`), use it.
    ///
    /// # Errors
    ///
    /// 422-style problems: a required setting or a credential mapping is
    /// missing, an unknown setting or credential is given, a mapped
    /// credential is of a kind the template does not accept.
    pub fn install(
        &self,
        request: &InstallRequest,
        kinds: &BTreeMap<String, CredentialKind>,
    ) -> Result<Connector, ValidationErrors> {
        let mut errors = Vec::new();
        let mut settings = Map::new();
        let kind_of = |name: &str| {
            request
                .credentials
                .get(name)
                .and_then(|b| kinds.get(b))
                .copied()
        };
        let (_, needed) = self
            .connector
            .resolved(kind_of)
            .names_used(&Renderer::new());
        for s in &self.settings {
            match request.settings.get(&s.name).or(s.default.as_ref()) {
                Some(v) => {
                    settings.insert(s.name.clone(), v.clone());
                }
                None if !needed.contains(&s.name) => {}
                None => errors.push(err(
                    format!("settings.{}", s.name),
                    format!("required: {}", s.description),
                )),
            }
        }
        for name in request.settings.keys() {
            if !self.settings.iter().any(|s| &s.name == name) {
                errors.push(err(
                    format!("settings.{name}"),
                    "this template has no such setting",
                ));
            }
        }
        let mut bindings = BTreeMap::new();
        for c in &self.credentials {
            match request.credentials.get(&c.name) {
                Some(bound) if is_credential_name(bound) => {
                    bindings.insert(c.name.clone(), bound.clone());
                }
                Some(_) => errors.push(err(
                    format!("credentials.{}", c.name),
                    "is not a valid credential name",
                )),
                None => errors.push(err(
                    format!("credentials.{}", c.name),
                    format!(
                        "map it to one of your credentials ({} auth with {}): {}",
                        c.auth,
                        c.fields.join(", "),
                        c.hint
                    ),
                )),
            }
        }
        errors.extend(self.kind_problems(
            "credentials",
            |name| request.credentials.get(name).cloned(),
            kinds,
        ));
        for name in request.credentials.keys() {
            if !self.credentials.iter().any(|c| &c.name == name) {
                errors.push(err(
                    format!("credentials.{name}"),
                    "this template uses no such credential",
                ));
            }
        }
        if let Some(name) = &request.name {
            // The connector's own limits: an installed connector must stay
            // one that a save would accept.
            if name.trim().is_empty() {
                errors.push(err("name", "must not be empty"));
            } else if name.chars().count() > 200 {
                errors.push(err("name", "must be at most 200 characters"));
            }
        }
        if !errors.is_empty() {
            return Err(ValidationErrors(errors));
        }
        let mut connector = self.connector.clone();
        if let Some(name) = &request.name {
            connector.name.clone_from(name);
        }
        connector.settings = settings;
        connector.credential_bindings = bindings;
        Ok(connector)
    }
}

/// Moves an installed connector to a newer template version, keeping its
/// name, settings (new settings take their defaults) and bindings.
///
/// # Errors
///
/// When the new version needs a setting or credential the connector lacks,
/// or does not accept the kind of a mapped credential (`kinds`, as for
/// [`Template::install`]).
pub fn upgrade(
    installed: &Connector,
    template: &Template,
    kinds: &BTreeMap<String, CredentialKind>,
) -> Result<Connector, ValidationErrors> {
    let request = InstallRequest {
        name: Some(installed.name.clone()),
        settings: installed
            .settings
            .iter()
            .filter(|(k, _)| template.settings.iter().any(|s| &s.name == *k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        credentials: installed
            .credential_bindings
            .iter()
            .filter(|(k, _)| template.credentials.iter().any(|c| &c.name == *k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    template.install(&request, kinds)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn template() -> Value {
        json!({
            "slug": "slack-post-message", "name": "Slack: post a message",
            "description": "Posts a message to a channel.", "category": "communication",
            "provider": "slack", "docs_url": "https://api.slack.com/methods/chat.postMessage",
            "version": "1.0.0",
            "credentials": [{"name": "slack", "auth": "bearer", "fields": ["token"], "hint": "A bot token"}],
            "settings": [{"name": "base_url", "description": "API root", "default": "https://slack.com/api"},
                         {"name": "channel", "description": "Default channel"}],
            "connector": {"name": "Slack", "steps": [{"name": "post", "method": "POST",
                "url": "<<settings.base_url>>/chat.postMessage",
                "auth": {"type": "bearer", "credential": "slack"},
                "body": {"type": "json", "content": {"channel": "<<settings.channel>>", "text": "<<input.text>>"}}}]}
        })
    }

    #[test]
    fn a_valid_template_installs_with_defaults_overrides_and_bindings() {
        let t = Template::parse(&template()).expect("valid");
        let request = InstallRequest {
            name: None,
            settings: Map::from_iter([("channel".to_owned(), json!("#ops"))]),
            credentials: BTreeMap::from([("slack".to_owned(), "acme-bot".to_owned())]),
        };
        let c = t.install(&request, &BTreeMap::new()).expect("install");
        assert_eq!(c.settings["base_url"], json!("https://slack.com/api"));
        assert_eq!(c.settings["channel"], json!("#ops"));
        assert_eq!(c.bound_credential("slack"), "acme-bot");
        assert_eq!(c.name, "Slack");
    }

    #[test]
    fn install_names_each_missing_setting_and_credential() {
        let t = Template::parse(&template()).expect("valid");
        let errors = t
            .install(&InstallRequest::default(), &BTreeMap::new())
            .expect_err("missing")
            .0;
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["settings.channel", "credentials.slack"]);
    }

    #[test]
    fn install_refuses_a_name_a_connector_could_not_have() {
        let t = Template::parse(&template()).expect("valid");
        let request = |name: String| InstallRequest {
            name: Some(name),
            settings: Map::from_iter([("channel".to_owned(), json!("#team"))]),
            credentials: BTreeMap::from([("slack".to_owned(), "bot".to_owned())]),
        };
        for bad in [" ".to_owned(), "é".repeat(201)] {
            let errors = t
                .install(&request(bad), &BTreeMap::new())
                .expect_err("invalid name")
                .0;
            assert_eq!(errors[0].path, "name");
        }
        let installed = t
            .install(&request("é".repeat(200)), &BTreeMap::new())
            .expect("200 characters");
        assert_eq!(installed.name.chars().count(), 200);
    }

    #[test]
    fn templates_must_declare_what_their_steps_use() {
        let mut json = template();
        json["settings"] = json!([{"name": "base_url", "description": "API root", "default": "x"}]);
        json["credentials"] = json!([]);
        let errors = Template::parse(&json).expect_err("undeclared").0;
        let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
        assert!(
            messages.iter().any(|m| m.contains("setting `channel`")),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.contains("credential `slack`")),
            "{messages:?}"
        );
    }

    #[test]
    fn bad_metadata_is_reported_with_paths() {
        let mut json = template();
        json["slug"] = json!("Bad Slug");
        json["version"] = json!("1.0");
        json["category"] = json!("toys");
        let errors = Template::parse(&json).expect_err("bad").0;
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert!(
            paths.contains(&"slug") && paths.contains(&"version") && paths.contains(&"category"),
            "{paths:?}"
        );
    }

    #[test]
    fn upgrade_keeps_settings_and_bindings_and_adds_new_defaults() {
        let t1 = Template::parse(&template()).expect("valid");
        let installed = t1
            .install(
                &InstallRequest {
                    name: Some("Team bot".into()),
                    settings: Map::from_iter([("channel".to_owned(), json!("#team"))]),
                    credentials: BTreeMap::from([("slack".to_owned(), "bot".to_owned())]),
                },
                &BTreeMap::new(),
            )
            .expect("install");
        let mut json = template();
        json["version"] = json!("1.1.0");
        json["settings"]
            .as_array_mut()
            .expect("list")
            .push(json!({"name": "icon", "description": "Emoji", "default": ":robot:"}));
        json["connector"]["steps"][0]["body"]["content"]["icon_emoji"] = json!("<<settings.icon>>");
        let t2 = Template::parse(&json).expect("valid");
        let upgraded = upgrade(&installed, &t2, &BTreeMap::new()).expect("upgrade");
        assert_eq!(upgraded.name, "Team bot");
        assert_eq!(upgraded.settings["channel"], json!("#team"));
        assert_eq!(upgraded.settings["icon"], json!(":robot:"));
        assert_eq!(upgraded.bound_credential("slack"), "bot");
    }

    fn two_kind_template() -> Value {
        let mut json = template();
        json["credentials"][0]["kinds"] = json!(["static", "oauth2_authorization_code"]);
        json["settings"]
            .as_array_mut()
            .expect("list")
            .push(json!({"name": "team", "description": "Workspace id for OAuth"}));
        json["connector"]["steps"][0]["variants"] = json!([{
            "credential": "slack", "kinds": ["oauth2_authorization_code"],
            "url": "<<settings.base_url>>/<<settings.team>>/chat.postMessage",
            "auth": {"type": "oauth2", "credential": "slack"}
        }]);
        json
    }

    #[test]
    fn a_mapped_credential_of_a_kind_the_template_refuses_is_named_with_the_accepted_kinds() {
        let t = Template::parse(&two_kind_template()).expect("valid");
        let request = InstallRequest {
            name: None,
            settings: Map::from_iter([("channel".to_owned(), json!("#ops"))]),
            credentials: BTreeMap::from([("slack".to_owned(), "bot".to_owned())]),
        };
        let kinds = BTreeMap::from([("bot".to_owned(), CredentialKind::Nango)]);
        let errors = t.install(&request, &kinds).expect_err("wrong kind").0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "credentials.slack");
        assert_eq!(
            errors[0].message,
            "`bot` is a nango credential; `slack` accepts static, oauth2_authorization_code"
        );
        let unknown = BTreeMap::from([("other".to_owned(), CredentialKind::Nango)]);
        assert!(
            t.install(&request, &unknown).is_ok(),
            "a credential that does not exist yet is not checked"
        );
    }

    #[test]
    fn a_variant_for_a_kind_the_credential_does_not_accept_is_refused() {
        let mut json = two_kind_template();
        json["connector"]["steps"][0]["variants"][0]["kinds"] =
            json!(["oauth2_authorization_code", "nango"]);
        let errors = Template::parse(&json).expect_err("nango not accepted").0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "connector.steps[0].variants[0].kinds[1]");
        assert_eq!(
            errors[0].message,
            "credential `slack` does not accept nango"
        );
    }

    #[test]
    fn a_setting_without_default_is_required_only_by_the_kind_that_uses_it() {
        let t = Template::parse(&two_kind_template()).expect("valid");
        let request = InstallRequest {
            name: None,
            settings: Map::from_iter([("channel".to_owned(), json!("#ops"))]),
            credentials: BTreeMap::from([("slack".to_owned(), "bot".to_owned())]),
        };
        let kinds = |kind| BTreeMap::from([("bot".to_owned(), kind)]);
        let installed = t
            .install(&request, &kinds(CredentialKind::Static))
            .expect("static needs no team");
        assert!(!installed.settings.contains_key("team"));
        assert_eq!(installed.steps[0].variants.len(), 1, "the variant stays");
        let errors = t
            .install(&request, &kinds(CredentialKind::AuthorizationCode))
            .expect_err("OAuth needs the team")
            .0;
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["settings.team"]);
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(parse_version("1.10.0") > parse_version("1.9.3"));
        assert_eq!(parse_version("1.2"), None);
        assert_eq!(parse_version("1.2.3.4"), None);
    }
}
