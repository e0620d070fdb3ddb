//! Workspace membership and owner-managed API keys through the HTTP API:
//! with `CONVEYOR_REQUIRE_MEMBERSHIP` a user token is refused outside its
//! workspace's member list (API keys and admin routes are unaffected);
//! only owners manage members and any workspace's keys, audited in that
//! workspace.

use axum::http::{Method, StatusCode};
use conveyor_api::ApiConfig;
use conveyor_engine::state::AdminRole;
use conveyor_engine::store::{access, members};
use conveyor_tests::api::TestApi;
use serde_json::{Value, json};
use sqlx::PgPool;

fn requiring_membership() -> ApiConfig {
    ApiConfig {
        rate_limit_per_sec: 0,
        require_membership: true,
        ..ApiConfig::default()
    }
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn with_membership_required_only_members_tokens_are_accepted(pool: PgPool) {
    let api = TestApi::with_config(pool, requiring_membership());
    let alice = api.token("ws_a", "alice");
    let mallory = api.token("ws_a", "mallory");
    members::add(&api.pool, "ws_a", "alice", "test")
        .await
        .expect("member");
    // A member of another workspace is no member of this one.
    members::add(&api.pool, "ws_b", "mallory", "test")
        .await
        .expect("member");

    assert_eq!(
        api.get("/api/v1/connectors", &alice).await.status,
        StatusCode::OK
    );
    let refused = api.get("/api/v1/connectors", &mallory).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text);
    assert!(
        refused.json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not a member of workspace `ws_a`")),
        "{}",
        refused.text
    );
    // A key made by a member keeps working: keys belong to the workspace.
    let key = api
        .post("/api/v1/api-keys", &alice, json!({"name": "ci"}))
        .await;
    assert_eq!(key.status, StatusCode::CREATED, "{}", key.text);
    let key = key.json["key"].as_str().expect("key").to_owned();
    assert_eq!(
        api.get("/api/v1/connectors", &key).await.status,
        StatusCode::OK
    );
    // Removal takes effect on the next request.
    assert!(
        members::remove(&api.pool, "ws_a", "alice")
            .await
            .expect("remove")
    );
    assert_eq!(
        api.get("/api/v1/connectors", &alice).await.status,
        StatusCode::FORBIDDEN
    );
    // Admin routes answer to the admin role, not to membership.
    access::set_admin_role(&api.pool, "mallory", AdminRole::Viewer)
        .await
        .expect("admin");
    assert_eq!(
        api.get("/api/v1/admin/stats", &mallory).await.status,
        StatusCode::OK
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn without_the_setting_membership_is_not_consulted(pool: PgPool) {
    let api = TestApi::new(pool);
    let stranger = api.token("ws_a", "stranger");
    assert_eq!(
        api.get("/api/v1/connectors", &stranger).await.status,
        StatusCode::OK
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn owners_manage_members_and_any_workspaces_keys(pool: PgPool) {
    let api = TestApi::with_config(pool, requiring_membership());
    for (user, role) in [("vic", AdminRole::Viewer), ("ops", AdminRole::Operator)] {
        access::set_admin_role(&api.pool, user, role)
            .await
            .expect("admin");
    }
    access::add_admin(&api.pool, "own").await.expect("admin");
    let owner = api.token("ws_ops", "own");
    let bob = api.token("ws_b", "bob");
    let members_path = "/api/v1/admin/workspaces/ws_b/members";
    let bob_path = format!("{members_path}/bob");

    // Viewers and operators may not manage members or keys.
    for user in ["vic", "ops"] {
        let token = api.token("ws_ops", user);
        for (method, path, body) in [
            (Method::GET, members_path.to_owned(), None),
            (Method::PUT, bob_path.clone(), None),
            (Method::DELETE, bob_path.clone(), None),
            (
                Method::GET,
                "/api/v1/admin/workspaces/ws_b/api-keys".to_owned(),
                None,
            ),
            (
                Method::POST,
                "/api/v1/admin/workspaces/ws_b/api-keys".to_owned(),
                Some(json!({"name": "x"})),
            ),
        ] {
            let got = api.call(method.clone(), &path, Some(&token), body).await;
            assert_eq!(
                got.status,
                StatusCode::FORBIDDEN,
                "{method} {path} as {user}"
            );
        }
    }

    assert_eq!(
        api.get("/api/v1/connectors", &bob).await.status,
        StatusCode::FORBIDDEN
    );
    let added = api.call(Method::PUT, &bob_path, Some(&owner), None).await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.text);
    assert_eq!(
        added.json,
        json!({"workspace_id": "ws_b", "user_id": "bob"})
    );
    let again = api.call(Method::PUT, &bob_path, Some(&owner), None).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        api.get("/api/v1/connectors", &bob).await.status,
        StatusCode::OK
    );
    let listed = api.get(members_path, &owner).await;
    let users: Vec<&Value> = listed.items().iter().map(|m| &m["user_id"]).collect();
    assert_eq!(users, [&json!("bob")]);
    assert_eq!(listed.items()[0]["added_by"], "own");
    let bad = api
        .call(
            Method::PUT,
            &format!("{members_path}/{}", "u".repeat(129)),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.json["error"]["details"]["errors"][0]["path"], "user_id");

    // The owner mints a key for ws_b; it acts in ws_b and is listed there.
    let keys_path = "/api/v1/admin/workspaces/ws_b/api-keys";
    let created = api
        .post(
            keys_path,
            &owner,
            json!({"name": "support", "scopes": ["read"]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.json["created_by"], "own");
    let key = created.json["key"].as_str().expect("key").to_owned();
    let key_id = created.id();
    assert_eq!(
        api.get("/api/v1/connectors", &key).await.status,
        StatusCode::OK
    );
    let own_keys = api.get("/api/v1/api-keys", &bob).await;
    assert_eq!(own_keys.items()[0]["id"], json!(key_id));
    let listed = api.get(keys_path, &owner).await;
    assert_eq!(listed.items().len(), 1);
    assert!(listed.items()[0].get("key").is_none(), "{}", listed.text);
    let bad_scope = api
        .post(keys_path, &owner, json!({"name": "x", "scopes": ["root"]}))
        .await;
    assert_eq!(bad_scope.status, StatusCode::UNPROCESSABLE_ENTITY);
    // Revoking through another workspace's path finds nothing.
    let wrong = api
        .call(
            Method::DELETE,
            &format!("/api/v1/admin/workspaces/ws_c/api-keys/{key_id}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(wrong.status, StatusCode::NOT_FOUND);
    let revoked = api
        .call(
            Method::DELETE,
            &format!("{keys_path}/{key_id}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    assert_eq!(
        api.get("/api/v1/connectors", &key).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Removing bob locks him out again; a second removal is 404.
    let removed = api
        .call(Method::DELETE, &bob_path, Some(&owner), None)
        .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    let gone = api
        .call(Method::DELETE, &bob_path, Some(&owner), None)
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);

    // Each change is audited in ws_b with the owner as actor, nowhere else.
    members::add(&api.pool, "ws_b", "bob", "test")
        .await
        .expect("member");
    let log = api.get("/api/v1/audit?actor=own", &bob).await;
    let actions: Vec<&str> = log
        .items()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "member.remove",
            "api_key.revoke",
            "api_key.create",
            "member.add"
        ],
        "{}",
        log.text
    );
    members::add(&api.pool, "ws_ops", "own", "test")
        .await
        .expect("member");
    let elsewhere = api.get("/api/v1/audit?actor=own", &owner).await;
    assert!(elsewhere.items().is_empty(), "{}", elsewhere.text);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn the_console_serves_only_members_when_membership_is_required(pool: PgPool) {
    use axum::body::Body;
    use axum::http::{Request, header};
    let api = TestApi::with_config(pool, requiring_membership());
    members::add(&api.pool, "ws_a", "alice", "test")
        .await
        .expect("member");
    let sign_in = |token: String| {
        let request = Request::builder()
            .method(Method::POST)
            .uri("/console/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("token={token}")))
            .expect("request");
        api.send_request(request)
    };
    let member = sign_in(api.token("ws_a", "alice")).await;
    assert_eq!(member.status, StatusCode::SEE_OTHER, "{}", member.text);
    let cookie = member
        .headers
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("session cookie")
        .to_owned();
    let page = || {
        let request = Request::builder()
            .uri("/console/connectors")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .expect("request");
        api.send_request(request)
    };
    let open = page().await;
    assert_eq!(open.status, StatusCode::OK, "{}", open.text);
    assert!(
        members::remove(&api.pool, "ws_a", "alice")
            .await
            .expect("remove")
    );
    let closed = page().await;
    assert_eq!(closed.status, StatusCode::FORBIDDEN, "{}", closed.text);
    assert!(
        closed.text.contains("not a member of workspace"),
        "{}",
        closed.text
    );
    let stranger = sign_in(api.token("ws_a", "mallory")).await;
    assert_eq!(stranger.status, StatusCode::FORBIDDEN, "{}", stranger.text);
    assert!(
        stranger.text.contains("not a member of workspace"),
        "{}",
        stranger.text
    );
    assert!(stranger.headers.get(header::SET_COOKIE).is_none());
}
