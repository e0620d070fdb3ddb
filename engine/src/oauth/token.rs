//! Calls to token endpoints (authorization code exchange, refresh, client
//! credentials) and to Nango's connection API, under the outbound address
//! policy of steps. Errors say whether the provider refused the grant for
//! good (`invalid_grant`), refused for another reason, or may succeed
//! later; no error message quotes a token or a client secret.

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{ClientAuth, OAuthConfig, public_fields};
use crate::credential_rules::{MAX_FIELD_BYTES, is_field_name};
use crate::net::{self, GuardedResolver, PrivateNetworkRefused};

/// Largest token endpoint response read.
pub const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// How long one token endpoint request may take.
pub const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Default Nango API root.
pub const NANGO_BASE_URL: &str = "https://api.nango.dev";

/// Why no token came back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The grant is gone (`invalid_grant`): a person must connect again.
    #[error("{0}")]
    Revoked(String),
    /// Refused for another reason (bad client, bad request, refused
    /// address, a response without a token): retrying will not help.
    #[error("{0}")]
    Refused(String),
    /// 5xx, 408, 429, a timeout or no connection: may work later.
    #[error("{0}")]
    Transient(String),
}

/// What a token endpoint (or Nango) returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSet {
    /// The access token.
    pub access_token: String,
    /// A new refresh token, when one came back.
    pub refresh_token: Option<String>,
    /// When the access token expires, when the provider said.
    pub expires_at: Option<DateTime<Utc>>,
    /// Extra response fields kept (`instance_url`, `api_domain`).
    pub extra: BTreeMap<String, String>,
}

impl TokenSet {
    /// Merges the tokens into a credential's fields. A response without a
    /// refresh token keeps the old one (providers that do not rotate send
    /// none).
    pub fn apply(self, fields: &mut BTreeMap<String, String>) {
        fields.insert("access_token".to_owned(), self.access_token);
        if let Some(refresh) = self.refresh_token {
            fields.insert("refresh_token".to_owned(), refresh);
        }
        fields.extend(self.extra);
    }
}

/// Sends token requests. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TokenClient {
    client: reqwest::Client,
    allow_private_networks: bool,
    timeout: Duration,
}

/// The grant of one token request.
enum GrantRequest<'a> {
    Code {
        code: &'a str,
        verifier: &'a str,
        redirect_uri: &'a str,
    },
    Refresh(&'a str),
    ClientCredentials,
}

impl TokenClient {
    /// A client that follows no redirect, ignores proxies from the
    /// environment and, unless `allow_private_networks`, refuses private
    /// addresses like the step client; each request is bounded by
    /// `timeout`.
    ///
    /// # Errors
    ///
    /// When the TLS backend cannot be initialised.
    pub fn new(allow_private_networks: bool, timeout: Duration) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("conveyor/", env!("CARGO_PKG_VERSION")));
        if !allow_private_networks {
            builder = builder.dns_resolver(Arc::new(GuardedResolver));
        }
        Ok(Self {
            client: builder.build()?,
            allow_private_networks,
            timeout,
        })
    }

    /// Exchanges an authorization code (with its PKCE verifier).
    ///
    /// # Errors
    ///
    /// See [`TokenError`].
    pub async fn exchange_code(
        &self,
        config: &OAuthConfig,
        fields: &BTreeMap<String, String>,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<TokenSet, TokenError> {
        let grant = GrantRequest::Code {
            code,
            verifier,
            redirect_uri,
        };
        self.token_request(config, fields, &grant).await
    }

    /// Gets a new access token: with the refresh token for the
    /// authorization code grant, else with the client credentials.
    ///
    /// # Errors
    ///
    /// See [`TokenError`]; [`TokenError::Revoked`] when an authorization
    /// code credential holds no refresh token.
    pub async fn renew(
        &self,
        config: &OAuthConfig,
        fields: &BTreeMap<String, String>,
        client_credentials: bool,
    ) -> Result<TokenSet, TokenError> {
        if client_credentials {
            return self
                .token_request(config, fields, &GrantRequest::ClientCredentials)
                .await;
        }
        let refresh = fields.get("refresh_token").ok_or_else(|| {
            TokenError::Revoked("the provider gave no refresh token: connect again".to_owned())
        })?;
        self.token_request(config, fields, &GrantRequest::Refresh(refresh))
            .await
    }

    async fn token_request(
        &self,
        config: &OAuthConfig,
        fields: &BTreeMap<String, String>,
        grant: &GrantRequest<'_>,
    ) -> Result<TokenSet, TokenError> {
        let client_id = fields.get("client_id").map_or("", String::as_str);
        let secret = fields.get("client_secret").map(String::as_str);
        let mut form: Vec<(&str, &str)> = Vec::new();
        match grant {
            GrantRequest::Code {
                code,
                verifier,
                redirect_uri,
            } => form.extend([
                ("grant_type", "authorization_code"),
                ("code", code),
                ("code_verifier", verifier),
                ("redirect_uri", redirect_uri),
            ]),
            GrantRequest::Refresh(token) => {
                form.extend([("grant_type", "refresh_token"), ("refresh_token", token)]);
            }
            GrantRequest::ClientCredentials => form.push(("grant_type", "client_credentials")),
        }
        let scope = config.scopes.join(&config.scope_separator);
        if matches!(grant, GrantRequest::ClientCredentials) && !scope.is_empty() {
            form.push(("scope", &scope));
        }
        let url = self.checked_url(&config.token_url)?;
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::ACCEPT, "application/json");
        match config.client_auth {
            ClientAuth::Basic => request = request.basic_auth(client_id, secret),
            ClientAuth::Body => {
                form.push(("client_id", client_id));
                if let Some(secret) = secret {
                    form.push(("client_secret", secret));
                }
            }
        }
        let (status, body) = self.send(request.form(&form), "token endpoint").await?;
        parse_token_response(status, &body, &config.response_fields, Utc::now())
    }

    /// The current access token of a Nango connection:
    /// `GET {base_url}/connection/{connection_id}?provider_config_key=...`
    /// with the secret key as a Bearer token. String values of the
    /// connection's `connection_config` (and an `instance_url` or
    /// `api_domain` in the raw token response) join the fields.
    ///
    /// # Errors
    ///
    /// See [`TokenError`].
    pub async fn nango(&self, fields: &BTreeMap<String, String>) -> Result<TokenSet, TokenError> {
        let field = |name: &str| fields.get(name).map_or("", String::as_str);
        let base = fields
            .get("base_url")
            .map_or(NANGO_BASE_URL, String::as_str);
        let mut url = self.checked_url(base)?;
        url.path_segments_mut()
            .map_err(|()| TokenError::Refused("nango base_url cannot take a path".to_owned()))?
            .pop_if_empty()
            .extend(["connection", field("connection_id")]);
        url.query_pairs_mut()
            .append_pair("provider_config_key", field("provider_config_key"));
        let request = self.client.get(url).bearer_auth(field("secret_key"));
        let (status, body) = self.send(request, "nango").await?;
        if status == 404 {
            return Err(TokenError::Revoked(
                "nango knows no such connection: connect again".to_owned(),
            ));
        }
        let json = status_and_json(status, &body, "nango")?;
        let credentials = &json["credentials"];
        let access_token = credentials["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                TokenError::Refused("nango returned no access_token for the connection".to_owned())
            })?
            .to_owned();
        let expires_at = credentials["expires_at"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        let mut extra = string_fields(&json["connection_config"], None);
        extra.extend(string_fields(&credentials["raw"], Some(&public_fields())));
        Ok(TokenSet {
            access_token,
            refresh_token: None,
            expires_at,
            extra,
        })
    }

    fn checked_url(&self, text: &str) -> Result<url::Url, TokenError> {
        let url = url::Url::parse(text)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| TokenError::Refused("the token URL is not an http(s) URL".to_owned()))?;
        if !self.allow_private_networks
            && let Some(host) = url.host()
            && let Err(e) = net::check_host(&host)
        {
            return Err(TokenError::Refused(e.to_string()));
        }
        Ok(url)
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<(u16, Vec<u8>), TokenError> {
        let response = request
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| send_error(&e, what))?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        let mut response = response;
        while let Some(chunk) = response.chunk().await.map_err(|e| send_error(&e, what))? {
            if body.len() + chunk.len() > MAX_TOKEN_RESPONSE_BYTES {
                return Err(TokenError::Refused(format!(
                    "{what}: the response exceeds {MAX_TOKEN_RESPONSE_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }
}

fn send_error(e: &reqwest::Error, what: &str) -> TokenError {
    let mut source: Option<&dyn StdError> = Some(e);
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<PrivateNetworkRefused>() {
            return TokenError::Refused(format!("{what}: {refused}"));
        }
        source = s.source();
    }
    if e.is_timeout() {
        TokenError::Transient(format!("{what}: no response in time"))
    } else if e.is_connect() {
        TokenError::Transient(format!("{what}: could not connect"))
    } else {
        TokenError::Transient(format!("{what}: the request failed"))
    }
}

/// The JSON of a 2xx response, or the error its status and `error` field
/// mean (Slack answers errors with 200 and `"ok": false`).
fn status_and_json(status: u16, body: &[u8], what: &str) -> Result<Value, TokenError> {
    if status >= 500 || status == 408 || status == 429 {
        return Err(TokenError::Transient(format!("{what} answered {status}")));
    }
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    // The error code is ASCII from a fixed vocabulary (RFC 6749 §5.2);
    // descriptions are free text and are not quoted.
    if let Some(code) = json["error"].as_str() {
        let code: String = code
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect();
        let message = format!("{what} refused the request: {code}");
        return Err(if code == "invalid_grant" {
            TokenError::Revoked(message)
        } else {
            TokenError::Refused(message)
        });
    }
    if !(200..300).contains(&status) {
        return Err(TokenError::Refused(format!("{what} answered {status}")));
    }
    Ok(json)
}

/// Parses a token endpoint's response (RFC 6749 §5.1; `token_type` is not
/// required, since some providers omit it).
///
/// # Errors
///
/// The endpoint's refusal, or a response without an access token.
pub fn parse_token_response(
    status: u16,
    body: &[u8],
    response_fields: &[String],
    now: DateTime<Utc>,
) -> Result<TokenSet, TokenError> {
    let json = status_and_json(status, body, "token endpoint")?;
    let access_token = json["access_token"]
        .as_str()
        .filter(|t| !t.is_empty() && t.len() <= MAX_FIELD_BYTES)
        .ok_or_else(|| TokenError::Refused("the token response has no access_token".to_owned()))?
        .to_owned();
    let refresh_token = json["refresh_token"]
        .as_str()
        .filter(|t| !t.is_empty() && t.len() <= MAX_FIELD_BYTES)
        .map(str::to_owned);
    let expires_in = match &json["expires_in"] {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    let expires_at = expires_in
        .filter(|s| *s > 0)
        .map(|s| now + chrono::Duration::seconds(s.min(10 * 365 * 86_400)));
    let wanted: Vec<&str> = response_fields.iter().map(String::as_str).collect();
    Ok(TokenSet {
        access_token,
        refresh_token,
        expires_at,
        extra: string_fields(&json, Some(&wanted)),
    })
}

/// The string members of an object that may be credential fields, only
/// those named in `only` when given.
fn string_fields(value: &Value, only: Option<&[&str]>) -> BTreeMap<String, String> {
    let Value::Object(map) = value else {
        return BTreeMap::new();
    };
    map.iter()
        .filter(|(k, _)| is_field_name(k) && only.is_none_or(|o| o.contains(&k.as_str())))
        .filter(|(k, _)| !matches!(k.as_str(), "access_token" | "refresh_token"))
        .filter_map(|(k, v)| {
            v.as_str()
                .filter(|s| s.len() <= MAX_FIELD_BYTES)
                .map(|s| (k.clone(), s.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(status: u16, body: Value) -> Result<TokenSet, TokenError> {
        let now = DateTime::from_timestamp(1_000_000, 0).expect("time");
        parse_token_response(
            status,
            body.to_string().as_bytes(),
            &["instance_url".to_owned()],
            now,
        )
    }

    #[test]
    fn token_responses_are_classified_without_quoting_secrets() {
        let ok = parse(
            200,
            json!({"access_token": "at", "expires_in": "3600", "instance_url": "https://i.example",
                   "id": "x", "refresh_token": "rt"}),
        )
        .expect("ok");
        assert_eq!(ok.access_token, "at");
        assert_eq!(ok.refresh_token.as_deref(), Some("rt"));
        assert_eq!(ok.expires_at.map(|t| t.timestamp()), Some(1_000_000 + 3600));
        assert_eq!(ok.extra.len(), 1, "only the wanted fields: {:?}", ok.extra);
        let no_type = parse(200, json!({"access_token": "at"})).expect("no token_type needed");
        assert_eq!((no_type.expires_at, no_type.refresh_token), (None, None));
        let cases = [
            (
                400,
                json!({"error": "invalid_grant", "error_description": "secret-rt"}),
                "revoked",
            ),
            (
                200,
                json!({"ok": false, "error": "invalid_grant"}),
                "revoked",
            ),
            (401, json!({"error": "invalid_client"}), "refused"),
            (200, json!({"token_type": "bearer"}), "refused"),
            (403, json!("nope"), "refused"),
            (
                503,
                json!({"error": "temporarily_unavailable"}),
                "transient",
            ),
            (429, json!({}), "transient"),
        ];
        for (status, body, want) in cases {
            let e = parse(status, body.clone()).expect_err("an error");
            let got = match &e {
                TokenError::Revoked(_) => "revoked",
                TokenError::Refused(_) => "refused",
                TokenError::Transient(_) => "transient",
            };
            assert_eq!(got, want, "{status} {body}");
            assert!(!e.to_string().contains("secret-rt"), "{e}");
        }
    }

    #[test]
    fn a_response_without_refresh_token_keeps_the_old_one() {
        let mut fields = BTreeMap::from([
            ("client_id".to_owned(), "c".to_owned()),
            ("refresh_token".to_owned(), "old".to_owned()),
        ]);
        parse(200, json!({"access_token": "new"}))
            .expect("ok")
            .apply(&mut fields);
        assert_eq!(fields["refresh_token"], "old");
        assert_eq!(fields["access_token"], "new");
        parse(
            200,
            json!({"access_token": "n2", "refresh_token": "rotated"}),
        )
        .expect("ok")
        .apply(&mut fields);
        assert_eq!(fields["refresh_token"], "rotated");
    }
}
