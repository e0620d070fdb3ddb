//! OAuth2 and Nango credentials end to end: through the API, a real worker
//! and the harness's OAuth2 server on loopback. Every test also checks
//! that no token or client secret reached step history, executions,
//! events, the audit log or an API response.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use conveyor_api::ApiConfig;
use conveyor_engine::state::ExecutionStatus;
use conveyor_tests::api::{Reply, TestApi};
use conveyor_tests::oauth_server::{CLIENT_ID, CLIENT_SECRET, NANGO_SECRET, OAuthServer};
use conveyor_tests::{Harness, WS};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

const PUBLIC_URL: &str = "https://conveyor.test";
const WAIT: Duration = Duration::from_secs(30);

struct Setup {
    h: Harness,
    api: TestApi,
    token: String,
    server: OAuthServer,
}

impl Setup {
    async fn new(pool: PgPool) -> Self {
        let h = Harness::new(pool.clone());
        let config = ApiConfig {
            rate_limit_per_sec: 0,
            public_url: PUBLIC_URL.to_owned(),
            allow_private_networks: true,
            ..ApiConfig::default()
        };
        let api = TestApi::with_keyring(pool, h.keyring.clone(), config);
        let token = api.token(WS, "tester");
        let server = OAuthServer::start().await;
        Self {
            h,
            api,
            token,
            server,
        }
    }

    async fn put(&self, name: &str, body: Value) -> Reply {
        let path = format!("/api/v1/credentials/{name}");
        self.api
            .call(Method::PUT, &path, Some(&self.token), Some(body))
            .await
    }

    /// An authorization code credential against the test server.
    async fn put_code_credential(&self, name: &str) -> Reply {
        let reply = self
            .put(
                name,
                json!({"kind": "oauth2_authorization_code",
                       "data": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
                       "oauth": {"authorize_url": format!("{}/authorize", self.server.uri),
                                 "token_url": format!("{}/token", self.server.uri),
                                 "scopes": ["read", "write"]}}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        reply
    }

    /// Starts a connection and lets the test server authorize it: the
    /// callback path with `code` and `state` the provider redirects to.
    async fn authorize(&self, name: &str) -> String {
        let path = format!("/api/v1/credentials/{name}/oauth/start");
        let reply = self.api.post(&path, &self.token, json!({})).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let url = reply.json["authorization_url"].as_str().expect("url");
        let parsed = url::Url::parse(url).expect("an absolute URL");
        let q: std::collections::BTreeMap<String, String> =
            parsed.query_pairs().into_owned().collect();
        assert_eq!(
            q["redirect_uri"],
            format!("{PUBLIC_URL}/api/v1/oauth/callback")
        );
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["scope"], "read write");
        assert_eq!(q["state"].len(), 43);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let response = client.get(url).send().await.expect("authorize");
        assert_eq!(response.status().as_u16(), 303, "the server redirects back");
        let location = response.headers()["location"].to_str().expect("location");
        location
            .strip_prefix(PUBLIC_URL)
            .expect("back to the public URL")
            .to_owned()
    }

    async fn callback(&self, path_and_query: &str) -> Reply {
        self.api.call(Method::GET, path_and_query, None, None).await
    }

    async fn credential(&self, name: &str) -> Value {
        let reply = self
            .api
            .get(&format!("/api/v1/credentials/{name}"), &self.token)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        self.assert_no_secret(&reply.text);
        reply.json
    }

    /// A connector whose one step calls the protected resource, at the
    /// credential's `instance_url`, with the OAuth token.
    async fn connector(&self, credential: &str) -> String {
        self.api
            .create_connector(
                &self.token,
                json!({"name": format!("OAuth {credential}"),
                       "retry": {"max_attempts": 2, "initial_delay_ms": 10, "max_delay_ms": 10},
                       "steps": [{"name": "call", "method": "GET",
                                  "url": format!("<<credentials.{credential}.instance_url>>/resource"),
                                  "auth": {"type": "oauth2", "credential": credential}}]}),
            )
            .await
    }

    async fn run(&self, connector: &str) -> Value {
        let id = self.api.execute(&self.token, connector, json!({})).await;
        let uuid: Uuid = id.parse().expect("uuid");
        let e = self.h.run_until_final(uuid, WAIT).await;
        assert!(e.status.is_final());
        let reply = self
            .api
            .get(&format!("/api/v1/executions/{id}"), &self.token)
            .await;
        self.assert_no_secret(&reply.text);
        reply.json
    }

    fn secrets(&self) -> Vec<String> {
        let mut out = self.server.issued_secrets();
        out.push(CLIENT_SECRET.to_owned());
        out.push(NANGO_SECRET.to_owned());
        out
    }

    fn assert_no_secret(&self, text: &str) {
        for secret in self.secrets() {
            assert!(!text.contains(&secret), "a secret leaked into: {text}");
        }
    }

    /// Nothing stored outside the sealed credential holds a secret.
    async fn assert_nothing_stored_leaks(&self) {
        let dump: String = sqlx::query_scalar(
            "SELECT concat_ws(' ',
                 (SELECT string_agg(s::text, ' ') FROM execution_steps s),
                 (SELECT string_agg(e::text, ' ') FROM connector_executions e),
                 (SELECT string_agg(v::text, ' ') FROM execution_events v),
                 (SELECT string_agg(a::text, ' ') FROM audit_log a),
                 (SELECT string_agg(o::text, ' ') FROM oauth_states o))",
        )
        .fetch_one(&self.h.pool)
        .await
        .expect("dump");
        self.assert_no_secret(&dump);
        let list = self.api.get("/api/v1/credentials", &self.token).await;
        self.assert_no_secret(&list.text);
    }

    async fn expire_access_token(&self, name: &str) {
        sqlx::query(
            "UPDATE workspace_api_credentials SET access_token_expires_at = now() - interval '1 second'
             WHERE workspace_id = $1 AND name = $2",
        )
        .bind(WS)
        .bind(name)
        .execute(&self.h.pool)
        .await
        .expect("expire");
    }
}

/// The value of `name` in the query of a callback path from
/// [`Setup::authorize`].
fn query_param(callback: &str, name: &str) -> String {
    url::Url::parse(&format!("{PUBLIC_URL}{callback}"))
        .expect("url")
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no {name} in {callback}"))
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn authorization_code_with_pkce_connects_and_steps_use_and_refresh_the_token(pool: PgPool) {
    let s = Setup::new(pool).await;
    let created = s.put_code_credential("crm").await;
    assert_eq!(created.json["kind"], "oauth2_authorization_code");
    assert_eq!(created.json["status"], "needs_reconnect");
    let callback = s.authorize("crm").await;
    let page = s.callback(&callback).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert!(page.text.contains("connected"), "{}", page.text);
    let meta = s.credential("crm").await;
    assert_eq!(meta["status"], "connected");
    assert!(meta["access_token_expires_at"].is_string(), "{meta}");
    assert!(meta["last_refreshed_at"].is_string(), "{meta}");
    assert!(
        meta["fields"]
            .as_array()
            .expect("fields")
            .contains(&json!("refresh_token"))
    );
    assert_eq!(s.server.count("authorization_code"), 1);

    // The state is single-use: the same redirect again stores nothing.
    let replay = s.callback(&callback).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST);
    assert!(replay.text.contains("already used"), "{}", replay.text);
    assert_eq!(s.server.count("authorization_code"), 1);

    let connector = s.connector("crm").await;
    let done = s.run(&connector).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        s.server.count("refresh_token"),
        0,
        "a fresh token is not refreshed"
    );

    // Expiring within the margin: refreshed once, before the step.
    s.expire_access_token("crm").await;
    let done = s.run(&connector).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(s.server.count("refresh_token"), 1);
    let done = s.run(&connector).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        s.server.count("refresh_token"),
        1,
        "the new token is reused"
    );
    assert_eq!(s.server.old_refresh_uses(), 0, "rotation respected");
    s.assert_nothing_stored_leaks().await;
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_401_refreshes_once_and_resends_the_same_attempt(pool: PgPool) {
    let s = Setup::new(pool).await;
    s.put_code_credential("crm").await;
    let callback = s.authorize("crm").await;
    assert_eq!(s.callback(&callback).await.status, StatusCode::OK);
    let connector = s.connector("crm").await;
    s.server.invalidate_access_tokens();
    let done = s.run(&connector).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(s.server.count("refresh_token"), 1);
    let keys = s.server.resource_keys();
    assert_eq!(keys.len(), 2, "one send and one re-send: {keys:?}");
    assert_eq!(keys[0], keys[1], "the re-send keeps the Idempotency-Key");
    let steps: i64 = sqlx::query_scalar("SELECT count(*) FROM execution_steps")
        .fetch_one(&s.h.pool)
        .await
        .expect("count");
    assert_eq!(steps, 1, "the re-send is not a retry");
    s.assert_nothing_stored_leaks().await;
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn items_in_flight_refused_with_401_share_one_refresh_and_resend_their_attempts(
    pool: PgPool,
) {
    let s = Setup::new(pool).await;
    s.put_code_credential("crm").await;
    let callback = s.authorize("crm").await;
    assert_eq!(s.callback(&callback).await.status, StatusCode::OK);
    let connector = s
        .api
        .create_connector(
            &s.token,
            json!({"name": "OAuth loop",
                   "steps": [{"name": "call", "method": "GET",
                              "url": "<<credentials.crm.instance_url>>/resource",
                              "for_each": {"items": "<<input.ids>>", "concurrency": 3},
                              "auth": {"type": "oauth2", "credential": "crm"}}]}),
        )
        .await;
    s.server.invalidate_access_tokens();
    let id = s
        .api
        .execute(&s.token, &connector, json!({"ids": [1, 2, 3]}))
        .await;
    let e = s.h.run_until_final(id.parse().expect("uuid"), WAIT).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);
    assert_eq!(s.server.count("refresh_token"), 1, "one refresh for all");
    let mut keys = s.server.resource_keys();
    keys.sort();
    assert_eq!(keys.len(), 6, "each item sent and re-sent once: {keys:?}");
    for pair in keys.chunks(2) {
        assert_eq!(pair[0], pair[1], "a re-send keeps its item's key");
    }
    keys.dedup();
    assert_eq!(keys.len(), 3, "one key per item");
    let steps: i64 = sqlx::query_scalar("SELECT count(*) FROM execution_steps")
        .fetch_one(&s.h.pool)
        .await
        .expect("count");
    assert_eq!(steps, 3, "a re-send is not a retry");
    s.assert_nothing_stored_leaks().await;
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn callback_refuses_unknown_expired_reused_code_and_provider_errors(pool: PgPool) {
    let s = Setup::new(pool).await;
    s.put_code_credential("crm").await;
    let unknown = s.callback("/api/v1/oauth/callback?state=nope&code=x").await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert!(unknown.text.contains("unknown"), "{}", unknown.text);
    let missing = s.callback("/api/v1/oauth/callback").await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);

    // The provider's error: nothing stored, the state is used up.
    let callback = s.authorize("crm").await;
    let state = query_param(&callback, "state");
    let denied = s
        .callback(&format!(
            "/api/v1/oauth/callback?state={state}&error=access_denied&error_description=%3Cb%3E"
        ))
        .await;
    assert_eq!(denied.status, StatusCode::BAD_REQUEST);
    assert!(denied.text.contains("access_denied"), "{}", denied.text);
    assert_eq!(s.credential("crm").await["status"], "needs_reconnect");
    assert_eq!(s.server.count("authorization_code"), 0);

    // Whoever crafts the link chooses the provider's error code: the page
    // shows it as text, never as markup.
    let callback = s.authorize("crm").await;
    let state = query_param(&callback, "state");
    let crafted = s
        .callback(&format!(
            "/api/v1/oauth/callback?state={state}&error=%3Cscript%3Ealert('x%22%26')%3C/script%3E"
        ))
        .await;
    assert_eq!(crafted.status, StatusCode::BAD_REQUEST);
    assert!(!crafted.text.contains("<script"), "{}", crafted.text);
    assert!(
        crafted.text.contains(
            "the provider refused: &#60;script&#62;alert(&#39;x&#34;&#38;&#39;)&#60;/script&#62;"
        ),
        "{}",
        crafted.text
    );
    assert_eq!(s.credential("crm").await["status"], "needs_reconnect");

    // Expired: refused without calling the provider.
    let callback = s.authorize("crm").await;
    sqlx::query("UPDATE oauth_states SET expires_at = now() - interval '1 second' WHERE consumed_at IS NULL")
        .execute(&s.h.pool)
        .await
        .expect("expire");
    let expired = s.callback(&callback).await;
    assert_eq!(expired.status, StatusCode::BAD_REQUEST);
    assert!(expired.text.contains("expired"), "{}", expired.text);
    assert_eq!(s.server.count("authorization_code"), 0);
    assert_eq!(s.credential("crm").await["status"], "needs_reconnect");

    // A code used once is refused by the provider the second time.
    let first = s.authorize("crm").await;
    assert_eq!(s.callback(&first).await.status, StatusCode::OK);
    let code = query_param(&first, "code");
    let second = s.authorize("crm").await;
    let state = query_param(&second, "state");
    let before = s.credential("crm").await;
    let reused = s
        .callback(&format!("/api/v1/oauth/callback?state={state}&code={code}"))
        .await;
    assert_eq!(reused.status, StatusCode::BAD_REQUEST);
    assert!(reused.text.contains("invalid_grant"), "{}", reused.text);
    let after = s.credential("crm").await;
    assert_eq!(
        before["last_refreshed_at"], after["last_refreshed_at"],
        "nothing stored"
    );
    s.assert_nothing_stored_leaks().await;
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn invalid_grant_marks_the_credential_and_fails_with_credential_revoked(pool: PgPool) {
    let s = Setup::new(pool).await;
    s.put_code_credential("crm").await;
    let callback = s.authorize("crm").await;
    assert_eq!(s.callback(&callback).await.status, StatusCode::OK);
    let connector = s.connector("crm").await;
    let client = reqwest::Client::new();
    client
        .post(format!("{}/revoke", s.server.uri))
        .send()
        .await
        .expect("revoke");
    s.expire_access_token("crm").await;
    let done = s.run(&connector).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["kind"], "credential_revoked", "{done}");
    let meta = s.credential("crm").await;
    assert_eq!(meta["status"], "needs_reconnect");
    assert!(
        meta["status_reason"]
            .as_str()
            .is_some_and(|r| r.contains("invalid_grant"))
    );
    // Later runs fail at once, without asking the provider again.
    let refreshes = s.server.count("refresh_token");
    let done = s.run(&connector).await;
    assert_eq!(done["error"]["kind"], "credential_revoked", "{done}");
    assert_eq!(s.server.count("refresh_token"), refreshes);
    s.assert_nothing_stored_leaks().await;
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_token_endpoint_that_is_down_retries_with_the_step_policy(pool: PgPool) {
    let s = Setup::new(pool).await;
    s.put_code_credential("crm").await;
    let callback = s.authorize("crm").await;
    assert_eq!(s.callback(&callback).await.status, StatusCode::OK);
    let connector = s.connector("crm").await;
    s.expire_access_token("crm").await;
    s.server.fail_token_with(Some(503));
    let done = s.run(&connector).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["kind"], "token_endpoint", "{done}");
    assert_eq!(done["error"]["attempt"], 2, "{done}");
    assert_eq!(s.server.count("refresh_token"), 2, "one per attempt");
    assert_eq!(s.credential("crm").await["status"], "expiring");
    s.server.fail_token_with(None);
    let done = s.run(&connector).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(s.credential("crm").await["status"], "connected");
    s.assert_nothing_stored_leaks().await;
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn client_credentials_are_fetched_once_and_cached_until_expiry(pool: PgPool) {
    let s = Setup::new(pool).await;
    let reply = s
        .put(
            "pay",
            json!({"kind": "oauth2_client_credentials",
                   "data": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
                   "oauth": {"token_url": format!("{}/token", s.server.uri), "client_auth": "basic"}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.json["status"], "connected");
    let connector = s.connector("pay").await;
    for _ in 0..3 {
        let done = s.run(&connector).await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    assert_eq!(s.server.count("client_credentials"), 1);
    s.expire_access_token("pay").await;
    let done = s.run(&connector).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(s.server.count("client_credentials"), 2);
    s.assert_nothing_stored_leaks().await;
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_nango_credential_takes_the_token_from_nango(pool: PgPool) {
    let s = Setup::new(pool).await;
    let reply = s
        .put(
            "crm",
            json!({"kind": "nango",
                   "data": {"connection_id": "conn-1", "provider_config_key": "crm",
                            "secret_key": NANGO_SECRET, "base_url": format!("{}/nango", s.server.uri)}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let connector = s.connector("crm").await;
    let done = s.run(&connector).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(s.server.count("nango"), 1);

    // An unknown connection: the credential needs to be connected again.
    let reply = s
        .put(
            "crm",
            json!({"kind": "nango",
                   "data": {"connection_id": "gone", "provider_config_key": "crm",
                            "secret_key": NANGO_SECRET, "base_url": format!("{}/nango", s.server.uri)}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let done = s.run(&connector).await;
    assert_eq!(done["error"]["kind"], "credential_revoked", "{done}");
    assert_eq!(s.credential("crm").await["status"], "needs_reconnect");
    s.assert_nothing_stored_leaks().await;
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn bad_oauth_credentials_are_refused_naming_the_field(pool: PgPool) {
    let s = Setup::new(pool).await;
    let cases = [
        (
            json!({"kind": "oauth2_authorization_code", "data": {"client_id": "c"}}),
            "oauth",
        ),
        (
            json!({"kind": "oauth2_authorization_code", "data": {"client_id": "c"},
                "oauth": {"provider": "nope"}}),
            "oauth.provider",
        ),
        (
            json!({"kind": "oauth2_client_credentials", "data": {"client_id": "c"},
                "oauth": {"provider": "paypal"}}),
            "data.client_secret",
        ),
        (
            json!({"kind": "nango", "data": {"connection_id": "c"}}),
            "data.provider_config_key",
        ),
        (
            json!({"data": {"token": "t"}, "oauth": {"provider": "hubspot"}}),
            "oauth",
        ),
    ];
    for (body, path) in cases {
        let reply = s.put("crm", body.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            reply.text
        );
        let paths: Vec<&str> = reply.json["error"]["details"]["errors"]
            .as_array()
            .expect("details")
            .iter()
            .filter_map(|e| e["path"].as_str())
            .collect();
        assert!(paths.contains(&path), "{body}: {paths:?}");
    }
    let bad_kind = s
        .put("crm", json!({"kind": "oauth3", "data": {"token": "t"}}))
        .await;
    assert!(bad_kind.status.is_client_error(), "{}", bad_kind.text);
    // A static credential cannot be connected.
    s.put("static", json!({"data": {"token": "t"}})).await;
    let reply = s
        .api
        .post(
            "/api/v1/credentials/static/oauth/start",
            &s.token,
            json!({}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text);
    let reply = s
        .api
        .post(
            "/api/v1/credentials/absent/oauth/start",
            &s.token,
            json!({}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text);
}
