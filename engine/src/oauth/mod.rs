//! OAuth2 and Nango credentials: the credential kinds, provider presets
//! (data, in `presets.json`), a credential's provider settings, PKCE and
//! the authorization URL. Pure; the token endpoint calls are in [`token`]
//! and the refresh that never races is in [`refresh`].
//!
//! An OAuth credential's sealed fields hold the client id and secret the
//! workspace gave, plus what the token endpoint returned: `access_token`,
//! `refresh_token` and the [`OAuthConfig::response_fields`] (Salesforce's
//! `instance_url`, Zoho's `api_domain`), which templates read as
//! `<<credentials.NAME.FIELD>>`.

pub mod connect;
pub mod refresh;
pub mod token;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// How a credential gets the secret a step sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// Fields as given (token, key, username and password, ...).
    Static,
    /// OAuth2 client credentials grant: fetched when needed, cached sealed.
    #[serde(rename = "oauth2_client_credentials")]
    ClientCredentials,
    /// OAuth2 authorization code grant with PKCE, refreshed when expiring.
    #[serde(rename = "oauth2_authorization_code")]
    AuthorizationCode,
    /// The access token of a Nango connection, fetched from Nango's API.
    Nango,
}

impl CredentialKind {
    /// Every kind, as stored.
    pub const ALL: [CredentialKind; 4] = [
        CredentialKind::Static,
        CredentialKind::ClientCredentials,
        CredentialKind::AuthorizationCode,
        CredentialKind::Nango,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Static => "static",
            CredentialKind::ClientCredentials => "oauth2_client_credentials",
            CredentialKind::AuthorizationCode => "oauth2_authorization_code",
            CredentialKind::Nango => "nango",
        }
    }

    /// The kind a stored name means (unknown names read as static).
    pub fn parse(s: &str) -> CredentialKind {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .unwrap_or(CredentialKind::Static)
    }

    /// The fields the workspace must give for this kind.
    pub fn required_fields(self) -> &'static [&'static str] {
        match self {
            CredentialKind::Static => &[],
            CredentialKind::ClientCredentials | CredentialKind::AuthorizationCode => &["client_id"],
            CredentialKind::Nango => &["connection_id", "provider_config_key", "secret_key"],
        }
    }

    /// Whether steps get a token through the OAuth machinery.
    pub fn is_oauth(self) -> bool {
        self != CredentialKind::Static
    }
}

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body.
    #[default]
    Body,
    /// HTTP basic auth with the client id and secret.
    Basic,
}

/// A credential's provider settings: not secret, stored beside the sealed
/// fields and shown by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// The preset it came from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Where the person grants access (authorization code grant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorize_url: Option<String>,
    /// The token endpoint.
    pub token_url: String,
    /// Scopes asked for.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Joins the scopes (a space by the standard; Slack and Zoho use `,`).
    #[serde(default = "space")]
    pub scope_separator: String,
    /// How the client authenticates at the token endpoint.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Extra authorization URL parameters (Google's `access_type=offline`).
    #[serde(default)]
    pub authorize_params: BTreeMap<String, String>,
    /// Token response fields kept as credential fields (`instance_url`).
    #[serde(default)]
    pub response_fields: Vec<String>,
}

fn space() -> String {
    " ".to_owned()
}

/// The grant a preset is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// Authorization code with PKCE.
    AuthorizationCode,
    /// Client credentials.
    ClientCredentials,
}

/// A provider preset: one entry of `presets.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// The name a credential names it by.
    pub name: String,
    /// The grant it is for.
    pub grant: Grant,
    /// The provider settings it stands for (`provider` is its name).
    #[serde(flatten)]
    pub config: PresetConfig,
}

/// The settings part of a preset, as in `presets.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct PresetConfig {
    /// Authorization URL (authorization code presets).
    #[serde(default)]
    pub authorize_url: Option<String>,
    /// Token URL.
    pub token_url: String,
    /// Default scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Scope separator.
    #[serde(default = "space")]
    pub scope_separator: String,
    /// Client auth style.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Extra authorization URL parameters.
    #[serde(default)]
    pub authorize_params: BTreeMap<String, String>,
    /// Token response fields kept.
    #[serde(default)]
    pub response_fields: Vec<String>,
}

impl Preset {
    /// The credential settings this preset gives, with `scopes` instead of
    /// the defaults when some are given.
    pub fn config(&self, scopes: Option<Vec<String>>) -> OAuthConfig {
        let c = &self.config;
        OAuthConfig {
            provider: Some(self.name.clone()),
            authorize_url: c.authorize_url.clone(),
            token_url: c.token_url.clone(),
            scopes: scopes.unwrap_or_else(|| c.scopes.clone()),
            scope_separator: c.scope_separator.clone(),
            client_auth: c.client_auth,
            authorize_params: c.authorize_params.clone(),
            response_fields: c.response_fields.clone(),
        }
    }
}

/// Every provider preset, parsed once from the embedded `presets.json`.
pub fn presets() -> &'static [Preset] {
    static PRESETS: OnceLock<Vec<Preset>> = OnceLock::new();
    // The file is checked by a unit test; a broken one yields no presets.
    PRESETS.get_or_init(|| serde_json::from_str(include_str!("presets.json")).unwrap_or_default())
}

/// The preset named `name`.
pub fn preset(name: &str) -> Option<&'static Preset> {
    presets().iter().find(|p| p.name == name)
}

/// Token response fields that are not secret (an instance URL, an API
/// domain): every preset's `response_fields`.
pub fn public_fields() -> Vec<&'static str> {
    let mut out: Vec<&str> = presets()
        .iter()
        .flat_map(|p| p.config.response_fields.iter().map(String::as_str))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// A fresh random value for `state` or a PKCE verifier: 32 random bytes,
/// base64url without padding (43 characters).
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The PKCE S256 challenge of a verifier (RFC 7636 §4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The URL the person is sent to, or `None` when the credential has no
/// authorization URL (or it does not parse).
pub fn authorization_url(
    config: &OAuthConfig,
    client_id: &str,
    redirect_uri: &str,
    state: &str,
    verifier: &str,
) -> Option<String> {
    let mut url = url::Url::parse(config.authorize_url.as_deref()?).ok()?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("state", state)
            .append_pair("code_challenge", &pkce_challenge(verifier))
            .append_pair("code_challenge_method", "S256");
        if !config.scopes.is_empty() {
            q.append_pair("scope", &config.scopes.join(&config.scope_separator));
        }
        for (name, value) in &config.authorize_params {
            q.append_pair(name, value);
        }
    }
    Some(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_provider_has_a_well_formed_preset() {
        let raw: Vec<serde_json::Value> =
            serde_json::from_str(include_str!("presets.json")).expect("presets.json is JSON");
        assert_eq!(presets().len(), raw.len(), "every preset parses");
        for name in [
            "salesforce",
            "hubspot",
            "zoho",
            "zoho_eu",
            "google",
            "slack",
            "microsoft",
            "asana",
            "atlassian",
            "monday",
            "pipedrive",
            "paypal",
        ] {
            assert!(preset(name).is_some(), "preset {name}");
        }
        let mut names: Vec<&str> = presets().iter().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), presets().len(), "names are unique");
        for p in presets() {
            let https = |u: &str| url::Url::parse(u).is_ok_and(|u| u.scheme() == "https");
            assert!(https(&p.config.token_url), "{}: token_url", p.name);
            match p.grant {
                Grant::AuthorizationCode => assert!(
                    p.config.authorize_url.as_deref().is_some_and(https),
                    "{}: authorize_url",
                    p.name
                ),
                Grant::ClientCredentials => {
                    assert!(p.config.authorize_url.is_none(), "{}", p.name);
                }
            }
        }
        assert_eq!(
            preset("google").expect("google").config.authorize_params["access_type"],
            "offline"
        );
        assert_eq!(
            preset("paypal").expect("paypal").config.client_auth,
            ClientAuth::Basic
        );
        assert_eq!(public_fields(), ["api_domain", "instance_url"]);
    }

    #[test]
    fn pkce_challenge_is_unpadded_base64url_of_sha256() {
        // Computed independently: Python's hashlib and base64.urlsafe_b64encode.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r7wW1gFWFOEjXk"),
            "bwWFMyPfdG9qreDhH2lmftFx_dFeLDalzcT1gb_j68g"
        );
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
    }

    #[test]
    fn authorization_url_carries_pkce_state_scopes_and_extra_parameters() {
        let config = preset("google").expect("google").config(None);
        let url =
            authorization_url(&config, "cid", "https://c.example/cb", "st", "ver").expect("url");
        let parsed = url::Url::parse(&url).expect("parses");
        let q: BTreeMap<String, String> = parsed.query_pairs().into_owned().collect();
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], "cid");
        assert_eq!(q["redirect_uri"], "https://c.example/cb");
        assert_eq!(q["state"], "st");
        assert_eq!(q["code_challenge"], pkce_challenge("ver"));
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["access_type"], "offline");
        assert_eq!(q["prompt"], "consent");
        assert!(q["scope"].contains("spreadsheets"));
        let slack = preset("slack")
            .expect("slack")
            .config(Some(vec!["a".into(), "b".into()]));
        let url = authorization_url(&slack, "c", "r", "s", "v").expect("url");
        assert!(url.contains("scope=a%2Cb"), "{url}");
        let paypal = preset("paypal").expect("paypal").config(None);
        assert!(authorization_url(&paypal, "c", "r", "s", "v").is_none());
    }
}
