//! The console's credentials page with OAuth connections (in-process
//! router, real PostgreSQL, the loopback test OAuth server): each
//! credential's status, token expiry and last refresh; a Connect button
//! that starts the flow (CSRF-checked) and answers a page that continues
//! to the provider (a redirect would be blocked by the CSP's
//! `form-action 'self'`: `api/tests/browser` shows it in Chromium);
//! Reconnect once a connection needs it; and never a token in the page.

use axum::http::{Method, StatusCode};
use conveyor_api::ApiConfig;
use conveyor_tests::api::{Reply, TestApi};
use conveyor_tests::oauth_server::{CLIENT_ID, CLIENT_SECRET, OAuthServer};
use serde_json::json;
use sqlx::PgPool;

use crate::console::Browser;
use crate::support::config;

/// The row of credential `name` in the page (from its name cell to the
/// end of the row).
fn row<'a>(html: &'a str, name: &str) -> &'a str {
    let start = html
        .find(&format!("<td><code>{name}</code></td>"))
        .unwrap_or_else(|| panic!("no row for {name}: {html}"));
    let rest = &html[start..];
    &rest[..rest.find("</tr>").unwrap_or(rest.len())]
}

/// The authorization URL a Connect page continues to: its link, which its
/// `<meta http-equiv="refresh">` names too (HTML-escaped in both).
fn continues_to(page: &Reply) -> String {
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    let link = r#"id="authorize" href=""#;
    let at = page
        .text
        .find(link)
        .unwrap_or_else(|| panic!("no link to the provider: {}", page.text))
        + link.len();
    let escaped = page.text[at..].split('"').next().unwrap_or_default();
    assert!(
        page.text.contains(&format!(
            r#"<meta http-equiv="refresh" content="0; url={escaped}">"#
        )),
        "{}",
        page.text
    );
    let csp = page.headers[axum::http::header::CONTENT_SECURITY_POLICY]
        .to_str()
        .expect("csp");
    assert!(csp.contains("form-action 'self'"), "{csp}");
    escaped.replace("&#38;", "&")
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn the_credentials_page_connects_oauth_and_shows_status_but_never_a_token(pool: PgPool) {
    let server = OAuthServer::start().await;
    let settings = ApiConfig {
        allow_private_networks: true,
        ..config()
    };
    let public_url = settings.public_url.clone();
    let api = TestApi::with_config(pool.clone(), settings);
    let token = api.token("ws_a", "u1");
    let reply = api
        .call(
            Method::PUT,
            "/api/v1/credentials/crm",
            Some(&token),
            Some(json!({"kind": "oauth2_authorization_code",
                        "data": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
                        "oauth": {"authorize_url": format!("{}/authorize", server.uri),
                                  "token_url": format!("{}/token", server.uri)}})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    api.put_credential(
        &token,
        "static-bot",
        json!({"token": "xoxb-static-bot-token"}),
    )
    .await;
    let browser = Browser::sign_in(&api, &token).await;

    let page = browser.get("/console/credentials").await.text;
    let crm = row(&page, "crm");
    assert!(crm.contains("oauth2_authorization_code"), "{crm}");
    assert!(
        crm.contains(r#"<span class="status needs_reconnect">needs_reconnect</span>"#),
        "not connected yet: {crm}"
    );
    assert!(
        crm.contains(r#"action="/console/credentials/crm/connect""#) && crm.contains(">Connect<"),
        "{crm}"
    );
    let bot = row(&page, "static-bot");
    assert!(bot.contains(r#"<span class="status connected">"#), "{bot}");
    assert!(
        !bot.contains("/connect"),
        "a static credential has nothing to connect: {bot}"
    );

    // Connect: the form starts the flow and the page continues to the provider.
    let started = browser
        .submit("/console/credentials/crm/connect", &[])
        .await;
    let authorize = continues_to(&started);
    assert!(
        authorize.starts_with(&format!("{}/authorize?", server.uri)),
        "{authorize}"
    );
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let back = client.get(&authorize).send().await.expect("authorize");
    assert_eq!(
        back.status().as_u16(),
        303,
        "the provider sends the person back"
    );
    let callback = back.headers()["location"].to_str().expect("location");
    let callback = callback.strip_prefix(&public_url).expect("our callback");
    let done = api.call(Method::GET, callback, None, None).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);

    let page = browser.get("/console/credentials").await.text;
    let crm = row(&page, "crm");
    assert!(
        crm.contains(r#"<span class="status connected">connected</span>"#),
        "{crm}"
    );
    let meta = api.get("/api/v1/credentials/crm", &token).await.json;
    for field in ["access_token_expires_at", "last_refreshed_at"] {
        let at = meta[field].as_str().expect(field);
        let shown = at[..19].replace('T', " ");
        assert!(crm.contains(&format!("<td>{shown}</td>")), "{field}: {crm}");
    }
    assert!(crm.contains(">Reconnect<"), "{crm}");
    let tokens = server.issued_secrets();
    assert!(
        tokens.len() >= 2,
        "an access and a refresh token: {tokens:?}"
    );
    for secret in tokens.iter().map(String::as_str).chain([CLIENT_SECRET]) {
        assert!(!page.contains(secret), "the page shows a secret");
    }

    // A revoked grant: the page says so, with the reason and a way back.
    sqlx::query(
        "UPDATE workspace_api_credentials SET status = 'needs_reconnect',
                status_reason = 'invalid_grant: the refresh token was revoked'
         WHERE workspace_id = 'ws_a' AND name = 'crm'",
    )
    .execute(&pool)
    .await
    .expect("revoke");
    let page = browser.get("/console/credentials").await.text;
    let crm = row(&page, "crm");
    assert!(
        crm.contains(r#"<span class="status needs_reconnect">needs_reconnect</span>"#)
            && crm.contains("the refresh token was revoked")
            && crm.contains(">Reconnect<"),
        "{crm}"
    );
    for secret in &tokens {
        assert!(!page.contains(secret.as_str()), "the page shows a token");
    }
    let again = browser
        .submit("/console/credentials/crm/connect", &[])
        .await;
    assert!(
        continues_to(&again).starts_with(&format!("{}/authorize?", server.uri)),
        "{}",
        again.text
    );

    // Connecting a static credential is refused on the page, changing nothing.
    let refused = browser
        .submit("/console/credentials/static-bot/connect", &[])
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text);
    assert!(refused.text.contains(r#"role="alert""#), "{}", refused.text);
}
