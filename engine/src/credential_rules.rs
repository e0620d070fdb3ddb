//! What a stored credential may hold: its name, its field names and their
//! values. Pure; no message quotes a submitted value (it may be a secret,
//! or a secret typed into the wrong place).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::connector::{ValidationError, ValidationErrors, is_credential_name};
use crate::oauth::{self, ClientAuth, CredentialKind, Grant, OAuthConfig};

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

/// Most scopes in one credential.
pub const MAX_SCOPES: usize = 50;
/// Longest URL, scope or parameter in a credential's OAuth settings.
pub const MAX_OAUTH_TEXT: usize = 2048;

/// The `oauth` member of a credential: a preset, or the endpoints of any
/// standards-compliant provider.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuthInput {
    /// A provider preset (see README.md): `salesforce`, `hubspot`, `zoho`,
    /// `google`, `slack`, `microsoft`, `asana`, `atlassian`, `monday`,
    /// `pipedrive`, `paypal`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Authorization URL (authorization code kind, without a preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorize_url: Option<String>,
    /// Token URL (without a preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    /// Scopes; a preset's defaults when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// `body` (default) or `basic`: how the client authenticates at the
    /// token endpoint (without a preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, pattern = "^(body|basic)$")]
    pub client_auth: Option<ClientAuth>,
    /// Extra authorization URL parameters (without a preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorize_params: Option<BTreeMap<String, String>>,
}

/// Checks a credential's kind against its fields and OAuth settings;
/// returns the settings to store (OAuth kinds only).
///
/// # Errors
///
/// Every problem, with its path (`kind`, `data.<field>`, `oauth.<field>`).
pub fn check_kind(
    kind: CredentialKind,
    fields: &BTreeMap<String, String>,
    input: Option<OAuthInput>,
) -> Result<Option<OAuthConfig>, ValidationErrors> {
    let mut errors = Vec::new();
    for field in kind.required_fields() {
        if !fields.contains_key(*field) {
            errors.push(problem(
                format!("data.{field}"),
                format!("is required for kind `{}`", kind.as_str()),
            ));
        }
    }
    let config = match (kind, input) {
        (CredentialKind::Static | CredentialKind::Nango, Some(_)) => {
            errors.push(problem(
                "oauth",
                "is only for the oauth2_client_credentials and oauth2_authorization_code kinds",
            ));
            None
        }
        (CredentialKind::Static, None) => None,
        (CredentialKind::Nango, None) => {
            if let Some(base) = fields.get("base_url")
                && !is_http_url(base)
            {
                errors.push(problem("data.base_url", "must be an http(s) URL"));
            }
            None
        }
        (_, None) => {
            errors.push(problem(
                "oauth",
                "is required: {\"provider\": PRESET} or {\"token_url\", \"authorize_url\", \"scopes\"}",
            ));
            None
        }
        (kind, Some(input)) => oauth_config(kind, input, &mut errors),
    };
    if kind == CredentialKind::ClientCredentials && !fields.contains_key("client_secret") {
        errors.push(problem(
            "data.client_secret",
            "is required for kind `oauth2_client_credentials`",
        ));
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ValidationErrors(errors))
    }
}

fn is_http_url(text: &str) -> bool {
    text.len() <= MAX_OAUTH_TEXT
        && url::Url::parse(text)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
}

fn oauth_config(
    kind: CredentialKind,
    input: OAuthInput,
    errors: &mut Vec<ValidationError>,
) -> Option<OAuthConfig> {
    let grant = if kind == CredentialKind::ClientCredentials {
        Grant::ClientCredentials
    } else {
        Grant::AuthorizationCode
    };
    if let Some(scopes) = &input.scopes
        && (scopes.len() > MAX_SCOPES
            || scopes.iter().any(|s| {
                s.is_empty() || s.len() > MAX_OAUTH_TEXT || s.contains(char::is_whitespace)
            }))
    {
        errors.push(problem(
            "oauth.scopes",
            format!("must hold at most {MAX_SCOPES} non-empty scopes without spaces"),
        ));
    }
    if let Some(name) = &input.provider {
        if input.token_url.is_some()
            || input.authorize_url.is_some()
            || input.client_auth.is_some()
            || input.authorize_params.is_some()
        {
            errors.push(problem(
                "oauth",
                "give a provider preset or the endpoints, not both (scopes may override a preset's)",
            ));
        }
        let Some(preset) = oauth::preset(name) else {
            let known: Vec<&str> = oauth::presets().iter().map(|p| p.name.as_str()).collect();
            errors.push(problem(
                "oauth.provider",
                format!("unknown provider preset; known: {}", known.join(", ")),
            ));
            return None;
        };
        if preset.grant != grant {
            errors.push(problem(
                "oauth.provider",
                format!("preset `{name}` is not for kind `{}`", kind.as_str()),
            ));
        }
        return Some(preset.config(input.scopes));
    }
    let token_url = input.token_url.unwrap_or_default();
    if !is_http_url(&token_url) {
        errors.push(problem("oauth.token_url", "must be an http(s) URL"));
    }
    match (&input.authorize_url, grant) {
        (Some(u), Grant::AuthorizationCode) if !is_http_url(u) => {
            errors.push(problem("oauth.authorize_url", "must be an http(s) URL"));
        }
        (None, Grant::AuthorizationCode) => errors.push(problem(
            "oauth.authorize_url",
            "is required for kind `oauth2_authorization_code`",
        )),
        (Some(_), Grant::ClientCredentials) => errors.push(problem(
            "oauth.authorize_url",
            "is not used by kind `oauth2_client_credentials`",
        )),
        _ => {}
    }
    let params = input.authorize_params.unwrap_or_default();
    if params
        .iter()
        .any(|(k, v)| k.is_empty() || k.len() + v.len() > MAX_OAUTH_TEXT)
    {
        errors.push(problem(
            "oauth.authorize_params",
            "names must be non-empty and each parameter short",
        ));
    }
    Some(OAuthConfig {
        provider: None,
        authorize_url: input.authorize_url,
        token_url,
        scopes: input.scopes.unwrap_or_default(),
        scope_separator: " ".to_owned(),
        client_auth: input.client_auth.unwrap_or_default(),
        authorize_params: params,
        // A provider without a preset keeps the fields a preset may keep.
        response_fields: oauth::public_fields()
            .into_iter()
            .map(str::to_owned)
            .collect(),
    })
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
    fn kinds_need_their_fields_and_oauth_settings() {
        let fields = |pairs: &[&str]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|f| ((*f).to_owned(), "v".to_owned()))
                .collect()
        };
        let preset = |p: &str| {
            Some(OAuthInput {
                provider: Some(p.to_owned()),
                ..OAuthInput::default()
            })
        };
        let ok = check_kind(
            CredentialKind::AuthorizationCode,
            &fields(&["client_id", "client_secret"]),
            preset("salesforce"),
        )
        .expect("valid")
        .expect("settings");
        assert_eq!(ok.response_fields, ["instance_url"]);
        let custom = OAuthInput {
            token_url: Some("http://127.0.0.1:9/token".into()),
            scopes: Some(vec!["read".into()]),
            ..OAuthInput::default()
        };
        let cc = check_kind(
            CredentialKind::ClientCredentials,
            &fields(&["client_id", "client_secret"]),
            Some(custom.clone()),
        )
        .expect("valid")
        .expect("settings");
        assert_eq!(cc.scopes, ["read"]);
        assert_eq!(
            check_kind(CredentialKind::Static, &fields(&["token"]), None).expect("static"),
            None
        );
        let cases = [
            (
                CredentialKind::AuthorizationCode,
                fields(&["client_id"]),
                None,
                "oauth",
            ),
            (
                CredentialKind::AuthorizationCode,
                fields(&[]),
                preset("google"),
                "data.client_id",
            ),
            (
                CredentialKind::AuthorizationCode,
                fields(&["client_id"]),
                preset("nope"),
                "oauth.provider",
            ),
            (
                CredentialKind::AuthorizationCode,
                fields(&["client_id"]),
                preset("paypal"),
                "oauth.provider",
            ),
            (
                CredentialKind::AuthorizationCode,
                fields(&["client_id"]),
                Some(custom.clone()),
                "oauth.authorize_url",
            ),
            (
                CredentialKind::ClientCredentials,
                fields(&["client_id"]),
                Some(custom.clone()),
                "data.client_secret",
            ),
            (
                CredentialKind::Static,
                fields(&["token"]),
                Some(custom),
                "oauth",
            ),
            (
                CredentialKind::Nango,
                fields(&["connection_id", "secret_key"]),
                None,
                "data.provider_config_key",
            ),
        ];
        for (kind, data, input, path) in cases {
            let errors = check_kind(kind, &data, input).expect_err("invalid");
            assert_eq!(errors.0[0].path, path, "{kind:?} {data:?}: {errors}");
        }
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
