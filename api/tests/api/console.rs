//! The web console over HTTP (in-process router, real PostgreSQL): no page
//! without a session, hostile names shown as text, forms refused without
//! their CSRF token or from another site, planted secrets never in a page,
//! another workspace's objects 404, sign-in links used once, sign-out, and
//! the forms driven by the API's own validation.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use conveyor_api::console::link_url;
use conveyor_tests::api::{Reply, TestApi};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{PLANTED, api};

const HOSTILE: &str = "<script>alert(1)</script>";

/// A browser's view: its session cookie and the session's CSRF token.
pub(crate) struct Browser<'a> {
    api: &'a TestApi,
    cookie: String,
    csrf: String,
}

fn session_cookie(reply: &Reply) -> Option<String> {
    reply
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("conveyor_console="))
        .map(|c| c.split(';').next().unwrap_or_default().to_owned())
}

fn form_body(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn post_form(api: &TestApi, path: &str, cookie: Option<&str>, body: String) -> Reply {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    api.send_request(request.body(Body::from(body)).expect("request"))
        .await
}

/// The value of the first `name="csrf"` field of a page.
fn csrf_of(html: &str) -> String {
    let at = html.find(r#"name="csrf" value=""#).expect("a csrf field") + 19;
    html[at..].split('"').next().unwrap_or_default().to_owned()
}

impl<'a> Browser<'a> {
    /// Signs in by pasting `token`.
    pub(crate) async fn sign_in(api: &'a TestApi, token: &str) -> Self {
        let reply = post_form(api, "/console/login", None, form_body(&[("token", token)])).await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text);
        Self::with_cookie(api, session_cookie(&reply).expect("a session cookie")).await
    }

    /// The browser holding session `cookie`.
    async fn with_cookie(api: &'a TestApi, cookie: String) -> Self {
        let mut browser = Self {
            api,
            cookie,
            csrf: String::new(),
        };
        let home = browser.get("/console").await;
        assert_eq!(home.status, StatusCode::OK, "{}", home.text);
        browser.csrf = csrf_of(&home.text);
        browser
    }

    /// The session cookie, as a `Cookie` header carries it.
    pub(crate) fn cookie(&self) -> &str {
        &self.cookie
    }

    pub(crate) async fn get(&self, path: &str) -> Reply {
        let request = Request::builder()
            .uri(path)
            .header(header::COOKIE, &self.cookie)
            .body(Body::empty())
            .expect("request");
        self.api.send_request(request).await
    }

    /// Posts a form with the session's CSRF token.
    pub(crate) async fn submit(&self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let mut all = vec![("csrf", self.csrf.as_str())];
        all.extend_from_slice(fields);
        post_form(self.api, path, Some(&self.cookie), form_body(&all)).await
    }

    /// Posts a form without any CSRF token.
    async fn submit_bare(&self, path: &str, fields: &[(&str, &str)]) -> Reply {
        post_form(self.api, path, Some(&self.cookie), form_body(fields)).await
    }
}

pub(super) fn location(reply: &Reply) -> &str {
    reply
        .headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn connector(name: &str, url: &str) -> Value {
    json!({
        "name": name,
        "input_schema": {"type": "object", "required": ["email"]},
        "retry": {"max_attempts": 1},
        "steps": [{"name": "create", "method": "POST", "url": url,
                   "auth": {"type": "bearer", "credential": "crm"},
                   "body": {"type": "json", "content": {"email": "<<input.email>>"}}}]
    })
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn pages_without_a_session_redirect_to_sign_in(pool: PgPool) {
    let api = api(pool);
    let id = uuid::Uuid::now_v7();
    for path in [
        "/console".to_owned(),
        "/console/events".to_owned(),
        format!("/console/executions/{id}"),
        "/console/connectors".to_owned(),
        format!("/console/connectors/{id}"),
        "/console/marketplace".to_owned(),
        "/console/credentials".to_owned(),
        "/console/admin".to_owned(),
    ] {
        for cookie in [None, Some("conveyor_console=forged-token")] {
            let mut request = Request::builder().uri(&path);
            if let Some(cookie) = cookie {
                request = request.header(header::COOKIE, cookie);
            }
            let reply = api
                .send_request(request.body(Body::empty()).expect("request"))
                .await;
            assert_eq!(reply.status, StatusCode::SEE_OTHER, "{path}");
            assert_eq!(location(&reply), "/console/login", "{path}");
        }
    }
    let login = api.call(Method::GET, "/console/login", None, None).await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(
        login.text.contains("Paste a JWT or an API key"),
        "{}",
        login.text
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn every_page_shows_hostile_names_as_text(pool: PgPool) {
    let api = api(pool.clone());
    conveyor_engine::store::access::add_admin(&pool, "root")
        .await
        .expect("admin");
    let token = api.token("ws_a", "root");
    let id = api
        .create_connector(&token, connector(HOSTILE, "http://127.0.0.1:9/x"))
        .await;
    let execution = api.execute(&token, &id, json!({"email": HOSTILE})).await;
    let mut community = json!({
        "slug": "community-hostile", "name": HOSTILE, "description": HOSTILE, "category": "developer-tools",
        "provider": "echo", "docs_url": "https://echo.example.com/docs", "version": "1.0.0",
        "credentials": [], "settings": [],
        "connector": {"name": HOSTILE, "steps": [{"name": "say", "method": "GET", "url": "https://echo.example.com/"}]}
    });
    let reply = api
        .post("/api/v1/templates", &token, community.clone())
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    community["slug"] = json!("community-approved");
    api.post("/api/v1/templates", &token, community).await;
    let approve = api
        .post(
            "/api/v1/admin/templates/community-approved/approve",
            &token,
            json!({"version": "1.0.0"}),
        )
        .await;
    assert_eq!(approve.status, StatusCode::OK, "{}", approve.text);
    let browser = Browser::sign_in(&api, &token).await;
    for path in [
        "/console".to_owned(),
        format!("/console/executions/{execution}"),
        "/console/connectors".to_owned(),
        format!("/console/connectors/{id}"),
        "/console/marketplace".to_owned(),
        "/console/marketplace/community-approved".to_owned(),
        "/console/credentials".to_owned(),
        "/console/admin".to_owned(),
        format!("/console/admin/executions/{execution}"),
    ] {
        let reply = browser.get(&path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
        assert!(
            !reply.text.contains("<script>alert"),
            "{path} holds raw markup"
        );
        if path != "/console/credentials" {
            assert!(
                reply.text.contains("&#60;script&#62;alert(1)"),
                "{path} does not show the name as text"
            );
        }
        assert_security_headers(&path, &reply);
    }
}

/// The headers every console response carries.
pub(crate) fn assert_security_headers(what: &str, reply: &Reply) {
    let csp = reply.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .expect("csp");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{what}: {csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert_eq!(
        reply.headers[header::X_CONTENT_TYPE_OPTIONS],
        "nosniff",
        "{what}"
    );
    assert_eq!(reply.headers[header::X_FRAME_OPTIONS], "DENY", "{what}");
    assert_eq!(reply.headers[header::CACHE_CONTROL], "no-store", "{what}");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn forms_without_their_csrf_token_or_from_another_site_are_refused(pool: PgPool) {
    let api = api(pool.clone());
    let token = api.token("ws_a", "alice");
    let id = api
        .create_connector(&token, connector("CRM", "http://127.0.0.1:9/x"))
        .await;
    let execution = api
        .execute(&token, &id, json!({"email": "a@example.com"}))
        .await;
    let browser = Browser::sign_in(&api, &token).await;
    let forms: [(String, Vec<(&str, &str)>); 7] = [
        (format!("/console/executions/{execution}/cancel"), vec![]),
        (format!("/console/executions/{execution}/rerun"), vec![]),
        (
            "/console/credentials".to_owned(),
            vec![("name", "crm"), ("data.token", "x")],
        ),
        (
            format!("/console/connectors/{id}"),
            vec![("definition", r#"{"name":"x","steps":[]}"#)],
        ),
        (
            format!("/console/connectors/{id}/run"),
            vec![("input", "{}")],
        ),
        ("/console/credentials/crm/delete".to_owned(), vec![]),
        ("/console/logout".to_owned(), vec![]),
    ];
    for (path, fields) in &forms {
        let reply = browser.submit_bare(path, fields).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{path}: {}",
            reply.text
        );
        assert!(reply.text.contains("CSRF"), "{path}: {}", reply.text);
        let mut wrong = vec![("csrf", "not-the-token")];
        wrong.extend_from_slice(fields);
        let reply = browser.submit_bare(path, &wrong).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path}");
    }
    let cross_site = Request::builder()
        .method(Method::POST)
        .uri(format!("/console/executions/{execution}/cancel"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::COOKIE, &browser.cookie)
        .header(header::HOST, "127.0.0.1:8080")
        .header(header::ORIGIN, "https://evil.example")
        .body(Body::from(form_body(&[("csrf", &browser.csrf)])))
        .expect("request");
    let reply = api.send_request(cross_site).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
    assert_security_headers("the cross-site refusal", &reply);
    // Nothing changed: still queued, no credential, one version, signed in.
    let detail = api
        .get(&format!("/api/v1/executions/{execution}"), &token)
        .await;
    assert_eq!(detail.json["status"], "queued");
    let credentials = api.get("/api/v1/credentials", &token).await;
    assert_eq!(credentials.items().len(), 0);
    let connector = api.get(&format!("/api/v1/connectors/{id}"), &token).await;
    assert_eq!(connector.json["version"], 1);
    assert_eq!(browser.get("/console").await.status, StatusCode::OK);
    // With the token, the same cancel works.
    let reply = browser
        .submit(&format!("/console/executions/{execution}/cancel"), &[])
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text);
    let detail = browser
        .get(&format!("/console/executions/{execution}"))
        .await;
    assert!(
        detail
            .text
            .contains(r#"<span class="status cancelled" id="status">cancelled</span>"#)
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_planted_secret_never_appears_in_any_page(pool: PgPool) {
    let stub = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "bad email"})))
        .mount(&stub)
        .await;
    let api = api(pool.clone());
    let token = api.token("ws_a", "alice");
    let browser = Browser::sign_in(&api, &token).await;
    let saved = browser
        .submit(
            "/console/credentials",
            &[("name", "crm"), ("data.token", PLANTED)],
        )
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.text);
    let id = api
        .create_connector(
            &token,
            connector("CRM", &format!("{}/contacts", stub.uri())),
        )
        .await;
    let started = browser
        .submit(
            &format!("/console/connectors/{id}/run"),
            &[("input", r#"{"email": "ada@example.com"}"#)],
        )
        .await;
    assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.text);
    let page = location(&started).to_owned();
    let execution = page.rsplit('/').next().expect("id").to_owned();
    let stop = CancellationToken::new();
    let worker = conveyor_tests::worker(
        &pool,
        &Arc::clone(&api.keyring),
        conveyor_tests::test_worker_config("console"),
    );
    let running = tokio::spawn(worker.run(stop.clone()));
    let finished = api.wait_final(&token, &execution).await;
    stop.cancel();
    running.await.expect("worker");
    assert_eq!(finished.json["status"], "failed", "{}", finished.text);
    let detail = browser.get(&page).await;
    assert!(
        detail.text.contains("Request (redacted)"),
        "{}",
        detail.text
    );
    assert!(detail.text.contains("[REDACTED]"), "{}", detail.text);
    assert!(detail.text.contains("ada@example.com"), "{}", detail.text);
    for path in [
        "/console".to_owned(),
        page.clone(),
        "/console/connectors".to_owned(),
        format!("/console/connectors/{id}"),
        "/console/credentials".to_owned(),
    ] {
        let reply = browser.get(&path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert!(!reply.text.contains(PLANTED), "{path} shows the secret");
    }
    let credentials = browser.get("/console/credentials").await;
    assert!(credentials.text.contains("<code>crm</code>"));
    assert!(
        credentials.text.contains("<td>bearer</td>"),
        "{}",
        credentials.text
    );
    // A refused replacement does not echo the value either.
    let refused = browser
        .submit(
            "/console/credentials",
            &[("name", "bad name!"), ("data.token", PLANTED)],
        )
        .await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.text
    );
    assert!(!refused.text.contains(PLANTED));
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn another_workspaces_objects_are_not_found(pool: PgPool) {
    let api = api(pool.clone());
    let owner = api.token("ws_a", "alice");
    let id = api
        .create_connector(&owner, connector("CRM", "http://127.0.0.1:9/x"))
        .await;
    let execution = api
        .execute(&owner, &id, json!({"email": "a@example.com"}))
        .await;
    let stranger = Browser::sign_in(&api, &api.token("ws_b", "mallory")).await;
    for path in [
        format!("/console/executions/{execution}"),
        format!("/console/executions/{execution}/live"),
        format!("/console/connectors/{id}"),
        "/console/executions/not-a-uuid".to_owned(),
        "/console/marketplace/no-such-template".to_owned(),
    ] {
        let reply = stranger.get(&path).await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{path}: {}",
            reply.text
        );
        assert!(reply.text.contains("404 Not Found"), "{path}");
    }
    for path in [
        format!("/console/executions/{execution}/cancel"),
        format!("/console/executions/{execution}/rerun"),
        format!("/console/connectors/{id}/run"),
    ] {
        let reply = stranger.submit(&path, &[("input", "{}")]).await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{path}: {}",
            reply.text
        );
    }
    let list = stranger.get("/console").await;
    assert!(!list.text.contains(&execution));
    assert!(
        stranger
            .get("/console/connectors")
            .await
            .text
            .contains("No connectors yet.")
    );
    let admin = stranger.get("/console/admin").await;
    assert_eq!(admin.status, StatusCode::FORBIDDEN);
    let drill = stranger
        .get(&format!("/console/admin/executions/{execution}"))
        .await;
    assert_eq!(drill.status, StatusCode::FORBIDDEN);
    let status = api
        .get(&format!("/api/v1/executions/{execution}"), &owner)
        .await;
    assert_eq!(status.json["status"], "queued");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_sign_in_link_works_once_and_sign_out_ends_the_session(pool: PgPool) {
    let api = api(pool.clone());
    let token = api.token("ws_a", "alice");
    let link = api.link_token("ws_a", "alice");
    let url = link_url("http://127.0.0.1:8080/", &link);
    let path = url
        .strip_prefix("http://127.0.0.1:8080")
        .expect("public url");
    assert!(path.starts_with("/console/login/link?token="), "{url}");
    // Opening the link changes nothing: it asks to confirm who signs in.
    let page = api.call(Method::GET, path, None, None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert!(page.headers.get(header::SET_COOKIE).is_none());
    for text in [
        "workspace <strong>ws_a</strong>",
        "as <strong>alice</strong>",
    ] {
        assert!(page.text.contains(text), "{}", page.text);
    }
    let confirm = || {
        post_form(
            &api,
            "/console/login/link",
            None,
            form_body(&[("token", &link)]),
        )
    };
    // Only from the console itself, as every console POST.
    let cross_site = api
        .send_request(
            axum::http::Request::builder()
                .method(Method::POST)
                .uri("/console/login/link")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header("sec-fetch-site", "cross-site")
                .body(axum::body::Body::from(form_body(&[("token", &link)])))
                .expect("request"),
        )
        .await;
    assert_eq!(
        cross_site.status,
        StatusCode::FORBIDDEN,
        "{}",
        cross_site.text
    );
    assert!(cross_site.headers.get(header::SET_COOKIE).is_none());
    // A user's own token is not a link: it cannot be forwarded as one.
    let forwarded = api
        .call(
            Method::GET,
            &format!("/console/login/link?token={token}"),
            None,
            None,
        )
        .await;
    assert_eq!(forwarded.status, StatusCode::UNAUTHORIZED);
    assert!(
        forwarded.text.contains("not a sign-in link"),
        "{}",
        forwarded.text
    );
    let first = confirm().await;
    assert_eq!(first.status, StatusCode::SEE_OTHER, "{}", first.text);
    assert_eq!(location(&first), "/console");
    let set = first.headers[header::SET_COOKIE].to_str().expect("cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(!set.contains("Secure"), "plain http: {set}");
    let cookie = session_cookie(&first).expect("cookie");
    let again = confirm().await;
    assert_eq!(again.status, StatusCode::GONE);
    assert!(again.text.contains("already used"), "{}", again.text);
    let browser = Browser::with_cookie(&api, cookie).await;
    let home = browser.get("/console").await;
    assert!(home.text.contains("alice"), "{}", home.text);
    let out = browser.submit("/console/logout", &[]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(
        out.headers[header::SET_COOKIE]
            .to_str()
            .expect("cookie")
            .contains("Max-Age=0")
    );
    let after = browser.get("/console").await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);
    assert_eq!(location(&after), "/console/login");
    // An expired session is no session.
    let second = Browser::sign_in(&api, &token).await;
    sqlx::query("UPDATE console_sessions SET expires_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .expect("expire");
    assert_eq!(second.get("/console").await.status, StatusCode::SEE_OTHER);
    // A bad link or token says why.
    let bad = api
        .call(Method::GET, "/console/login/link?token=nope", None, None)
        .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(bad.text.contains("does not work"), "{}", bad.text);
    let pasted = post_form(
        &api,
        "/console/login",
        None,
        form_body(&[("token", "nope")]),
    )
    .await;
    assert_eq!(pasted.status, StatusCode::UNAUTHORIZED);
    assert!(
        pasted.text.contains("token: the token is malformed"),
        "{}",
        pasted.text
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn https_public_urls_make_the_cookie_secure_and_api_keys_need_every_scope(pool: PgPool) {
    let api = TestApi::with_config(
        pool.clone(),
        conveyor_api::ApiConfig {
            rate_limit_per_sec: 0,
            public_url: "https://conveyor.example.com".to_owned(),
            ..conveyor_api::ApiConfig::default()
        },
    );
    let token = api.token("ws_a", "alice");
    let full = api
        .post("/api/v1/api-keys", &token, json!({"name": "console"}))
        .await;
    assert_eq!(full.status, StatusCode::CREATED, "{}", full.text);
    let key = full.json["key"].as_str().expect("key");
    // Behind a reverse proxy: the Host is internal, the Origin the public URL.
    let proxied = Request::builder()
        .method(Method::POST)
        .uri("/console/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::HOST, "10.0.0.5:8080")
        .header(header::ORIGIN, "https://conveyor.example.com")
        .body(Body::from(form_body(&[("token", key)])))
        .expect("request");
    let reply = api.send_request(proxied).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text);
    let set = reply.headers[header::SET_COOKIE].to_str().expect("cookie");
    assert!(set.contains("; Secure"), "{set}");
    let read_only = api
        .post(
            "/api/v1/api-keys",
            &token,
            json!({"name": "reader", "scopes": ["read"]}),
        )
        .await;
    let key = read_only.json["key"].as_str().expect("key");
    let reply = post_form(&api, "/console/login", None, form_body(&[("token", key)])).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(
        reply.text.contains("read, execute and manage"),
        "{}",
        reply.text
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn the_editor_and_run_form_show_the_apis_problems_at_their_paths(pool: PgPool) {
    let api = api(pool.clone());
    let token = api.token("ws_a", "alice");
    let id = api
        .create_connector(&token, connector("CRM", "http://127.0.0.1:9/x"))
        .await;
    let browser = Browser::sign_in(&api, &token).await;
    let invalid =
        json!({"name": "CRM", "steps": [{"name": "create", "method": "POST", "url": "not a url"}]});
    let reply = browser
        .submit(
            &format!("/console/connectors/{id}"),
            &[("definition", &invalid.to_string())],
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert!(
        reply
            .text
            .contains(r#"<code class="path">steps[0].url</code>"#),
        "{}",
        reply.text
    );
    assert!(
        reply.text.contains("not a url"),
        "the editor keeps the text"
    );
    let syntax = browser
        .submit(&format!("/console/connectors/{id}"), &[("definition", "{")])
        .await;
    assert_eq!(syntax.status, StatusCode::BAD_REQUEST);
    assert!(
        syntax
            .text
            .contains(r#"<code class="path">definition</code>"#)
    );
    let input = browser
        .submit(
            &format!("/console/connectors/{id}/run"),
            &[("input", r#"{"name": 1}"#)],
        )
        .await;
    input.assert_refused("input-problems");
    assert!(input.text.contains("email"), "{}", input.text);
    let versions = api.get(&format!("/api/v1/connectors/{id}"), &token).await;
    assert_eq!(versions.json["version"], 1, "nothing was saved");
    let mut renamed = connector("CRM v2", "http://127.0.0.1:9/y");
    renamed["retry"] = json!({"max_attempts": 2});
    let saved = browser
        .submit(
            &format!("/console/connectors/{id}"),
            &[("definition", &renamed.to_string())],
        )
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.text);
    let page = browser.get(&format!("/console/connectors/{id}")).await;
    assert!(
        page.text.contains("CRM v2 <span class=\"muted\">v2"),
        "{}",
        page.text
    );
    let old = browser
        .get(&format!("/console/connectors/{id}?version=1"))
        .await;
    assert!(old.text.contains("(latest v2)"), "{}", old.text);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn the_executions_list_filters_and_pages_newest_first(pool: PgPool) {
    let api = api(pool.clone());
    let token = api.token("ws_a", "alice");
    let a = api
        .create_connector(&token, connector("Alpha", "http://127.0.0.1:9/x"))
        .await;
    let b = api
        .create_connector(&token, connector("Beta", "http://127.0.0.1:9/x"))
        .await;
    let mut ids = Vec::new();
    for i in 0..51 {
        ids.push(
            api.execute(&token, &a, json!({"email": format!("{i}@example.com")}))
                .await,
        );
    }
    let beta = api
        .execute(&token, &b, json!({"email": "b@example.com"}))
        .await;
    let browser = Browser::sign_in(&api, &token).await;
    let first = browser.get("/console").await;
    let position = |text: &str, id: &str| text.find(&format!("/console/executions/{id}"));
    let newest = position(&first.text, &beta).expect("newest shown");
    let older = position(&first.text, &ids[50]).expect("next shown");
    assert!(newest < older, "newest first");
    assert!(position(&first.text, &ids[1]).is_none(), "50 a page");
    assert!(
        first.text.contains(r#"data-stream="/console/events""#),
        "the first page updates live"
    );
    let next = first.text.find("cursor=").map(|at| {
        first.text[at + 7..]
            .split('"')
            .next()
            .unwrap_or_default()
            .to_owned()
    });
    let second = browser
        .get(&format!("/console?cursor={}", next.expect("a next link")))
        .await;
    assert!(position(&second.text, &ids[0]).is_some(), "{}", second.text);
    assert!(position(&second.text, &beta).is_none());
    assert!(
        !second.text.contains("data-stream"),
        "older pages stay still"
    );
    let filtered = browser
        .get(&format!("/console?connector={b}&status=queued"))
        .await;
    assert!(position(&filtered.text, &beta).is_some());
    assert!(position(&filtered.text, &ids[50]).is_none());
    let none = browser.get("/console?status=succeeded").await;
    assert!(none.text.contains("No executions match."));
    let future = browser.get("/console?from=2999-01-01T00%3A00").await;
    assert!(future.text.contains("No executions match."));
    let bad = browser.get("/console?status=done").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.text.contains("invalid `status` `done`"), "{}", bad.text);
    let bad = browser.get("/console?from=yesterday").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.text.contains("`from`"), "{}", bad.text);
    // A time PostgreSQL cannot compare with, refused before it is asked.
    for query in [
        "from=-5000-01-01T00%3A00",
        "to=9999-12-31T23%3A30%3A00-01%3A00",
    ] {
        let bad = browser.get(&format!("/console?{query}")).await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{query}: {}", bad.text);
        assert!(bad.text.contains("years 1 to 9999"), "{}", bad.text);
    }
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn installing_through_the_form_asks_for_what_the_api_says_is_missing(pool: PgPool) {
    let api = api(pool.clone());
    conveyor_engine::store::access::add_admin(&pool, "root")
        .await
        .expect("admin");
    let admin = api.token("ops", "root");
    let template = json!({
        "slug": "echo", "name": "Echo", "description": "Posts a greeting.", "category": "developer-tools",
        "provider": "echo", "docs_url": "https://echo.example.com/docs", "version": "1.0.0",
        "credentials": [{"name": "echo", "auth": "bearer", "fields": ["token"], "hint": "Any token"}],
        "settings": [{"name": "base_url", "description": "API root", "default": "https://echo.example.com"},
                     {"name": "greeting", "description": "What to say"}],
        "connector": {"name": "Echo", "steps": [{"name": "say", "method": "POST",
            "url": "<<settings.base_url>>/say", "auth": {"type": "bearer", "credential": "echo"},
            "body": {"type": "json", "content": {"text": "<<settings.greeting>>"}}}]}
    });
    let created = api.post("/api/v1/admin/templates", &admin, template).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let browser = Browser::sign_in(&api, &api.token("ws_a", "alice")).await;
    let listed = browser
        .get("/console/marketplace?q=greeting&provider=echo")
        .await;
    assert!(
        listed.text.contains(r#"href="/console/marketplace/echo""#),
        "{}",
        listed.text
    );
    let other = browser.get("/console/marketplace?provider=slack").await;
    assert!(!other.text.contains(r#"href="/console/marketplace/echo""#));
    let page = browser.get("/console/marketplace/echo").await;
    assert!(
        page.text.contains(r#"name="settings.greeting""#),
        "{}",
        page.text
    );
    assert!(page.text.contains(r#"value="https://echo.example.com""#));
    let refused = browser
        .submit(
            "/console/marketplace/echo/install",
            &[("settings.base_url", "https://echo.example.com")],
        )
        .await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.text
    );
    assert!(
        refused
            .text
            .contains(r#"<code class="path">settings.greeting</code>"#),
        "{}",
        refused.text
    );
    assert!(
        refused
            .text
            .contains(r#"<code class="path">credentials.echo</code>"#)
    );
    let installed = browser
        .submit(
            "/console/marketplace/echo/install",
            &[
                ("settings.base_url", "https://echo.example.com"),
                ("settings.greeting", "hello"),
                ("credentials.echo", "echo-token"),
            ],
        )
        .await;
    assert_eq!(
        installed.status,
        StatusCode::SEE_OTHER,
        "{}",
        installed.text
    );
    let connector = browser.get(location(&installed)).await;
    assert!(
        connector.text.contains("Installed from"),
        "{}",
        connector.text
    );
    let rated = browser
        .submit("/console/marketplace/echo/rate", &[("stars", "4")])
        .await;
    assert_eq!(rated.status, StatusCode::SEE_OTHER, "{}", rated.text);
    let page = browser.get("/console/marketplace/echo").await;
    assert!(page.text.contains("4.0 ★ (1)"), "{}", page.text);
    assert!(
        page.text.contains("<dd>1</dd>"),
        "one install: {}",
        page.text
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn assets_are_served_by_hash_and_cached(pool: PgPool) {
    let api = api(pool.clone());
    let browser = Browser::sign_in(&api, &api.token("ws_a", "alice")).await;
    let home = browser.get("/console").await;
    for ext in ["css", "js"] {
        let at = home.text.find(&format!(".{ext}\"")).expect("asset link");
        let start = home.text[..at]
            .rfind("/console/assets/")
            .expect("asset path");
        let path = &home.text[start..at + ext.len() + 1];
        let reply = api.call(Method::GET, path, None, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert!(
            reply.headers[header::CACHE_CONTROL]
                .to_str()
                .expect("cc")
                .contains("immutable")
        );
        assert!(!reply.text.is_empty());
    }
    let missing = api
        .call(
            Method::GET,
            "/console/assets/console.000000000000.js",
            None,
            None,
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}
