//! Admin roles through the HTTP API (in-process router, real PostgreSQL):
//! each role is refused where it must be (403, audited as `admin.denied`),
//! operators act on any workspace's executions (audited in that
//! workspace), and only owners manage admins (or `conveyor-api admin add`).

use axum::http::{Method, StatusCode};
use conveyor_engine::state::AdminRole;
use conveyor_engine::store::access;
use conveyor_tests::api::TestApi;
use serde_json::{Value, json};
use sqlx::PgPool;

fn ping() -> Value {
    json!({"name": "Ping", "steps": [
        {"name": "ping", "method": "GET", "url": "https://api.example.com/ping"}]})
}

async fn status(api: &TestApi, method: Method, path: &str, token: &str) -> StatusCode {
    let body = (method != Method::GET && method != Method::DELETE).then(|| json!({}));
    api.call(method, path, Some(token), body).await.status
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn each_admin_role_is_refused_where_it_must_be_and_refusals_are_audited(pool: PgPool) {
    let api = TestApi::new(pool);
    let a = api.token("ws_a", "alice");
    let b = api.token("ws_b", "bob");
    for (user, role) in [
        ("vic", AdminRole::Viewer),
        ("ops", AdminRole::Operator),
        ("own", AdminRole::Owner),
    ] {
        access::set_admin_role(&api.pool, user, role)
            .await
            .expect("admin");
    }
    let viewer = api.token("ws_ops", "vic");
    let operator = api.token("ws_ops", "ops");
    let owner = api.token("ws_ops", "own");
    let connector = api.create_connector(&a, ping()).await;
    let queued = api.execute(&a, &connector, json!({})).await;
    let key = api
        .post("/api/v1/api-keys", &a, json!({"name": "ci"}))
        .await;
    let key = key.json["key"].as_str().expect("key").to_owned();

    let cancel = format!("/api/v1/admin/executions/{queued}/cancel");
    let rerun = format!("/api/v1/admin/executions/{queued}/rerun");
    // (route, least role): every other caller gets 403.
    let routes = [
        (
            Method::GET,
            "/api/v1/admin/stats".to_owned(),
            Some(AdminRole::Viewer),
        ),
        (
            Method::GET,
            format!("/api/v1/admin/executions/{queued}"),
            Some(AdminRole::Viewer),
        ),
        (
            Method::GET,
            "/api/v1/admin/templates".to_owned(),
            Some(AdminRole::Viewer),
        ),
        (
            Method::DELETE,
            "/api/v1/admin/templates/nope".to_owned(),
            Some(AdminRole::Operator),
        ),
        (Method::POST, rerun.clone(), Some(AdminRole::Operator)),
        (
            Method::GET,
            "/api/v1/admin/admins".to_owned(),
            Some(AdminRole::Owner),
        ),
        (
            Method::DELETE,
            "/api/v1/admin/admins/nobody".to_owned(),
            Some(AdminRole::Owner),
        ),
    ];
    let callers = [
        (&a, None),
        (&key, None),
        (&viewer, Some(AdminRole::Viewer)),
        (&operator, Some(AdminRole::Operator)),
        (&owner, Some(AdminRole::Owner)),
    ];
    let mut denials = 0;
    for (method, path, needed) in &routes {
        for (token, role) in &callers {
            let allowed = role.zip(*needed).is_some_and(|(r, n)| r.covers(n));
            let got = status(&api, method.clone(), path, token).await;
            if allowed {
                assert_ne!(got, StatusCode::FORBIDDEN, "{method} {path} as {role:?}");
            } else {
                assert_eq!(got, StatusCode::FORBIDDEN, "{method} {path} as {role:?}");
                denials += 1;
            }
        }
    }

    // Every refusal left an `admin.denied` row naming the route and roles.
    let denied = api
        .get("/api/v1/admin/audit?action=admin.denied&limit=200", &owner)
        .await;
    assert_eq!(denied.items().len(), denials, "{}", denied.text);
    let viewer_denials: Vec<&Value> = denied
        .items()
        .iter()
        .filter(|e| e["actor"] == "vic")
        .collect();
    assert_eq!(viewer_denials.len(), 4);
    assert!(viewer_denials.iter().any(|e| e["object_id"]
        == "DELETE /api/v1/admin/templates/{slug}"
        && e["details"] == json!({"needed": "operator", "role": "viewer"})));

    // An operator cancels another workspace's execution; that workspace's
    // own log shows it, the bystander's does not.
    let cancelled = api.call(Method::POST, &cancel, Some(&operator), None).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text);
    assert_eq!(cancelled.json["status"], "cancelled");
    let own_log = api.get("/api/v1/audit?action=execution.cancel", &a).await;
    assert_eq!(own_log.items()[0]["actor"], "ops");
    assert_eq!(own_log.items()[0]["object_id"], json!(queued));
    let reruns = api.get("/api/v1/audit?action=execution.rerun", &a).await;
    assert_eq!(reruns.items().len(), 2, "one rerun per allowed caller");
    for log in ["execution.cancel", "execution.rerun", "admin.denied"] {
        let other = api.get(&format!("/api/v1/audit?action={log}"), &b).await;
        assert!(other.items().is_empty(), "{log}: {}", other.text);
    }
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn owners_manage_admins_but_not_themselves(pool: PgPool) {
    let api = TestApi::new(pool);
    access::add_admin(&api.pool, "own").await.expect("admin");
    let owner = api.token("ws_ops", "own");
    let dave = api.token("ws_ops", "dave");
    assert_eq!(
        api.get("/api/v1/admin/stats", &dave).await.status,
        StatusCode::FORBIDDEN
    );

    let path = "/api/v1/admin/admins/dave";
    let put =
        |role: &'static str| api.call(Method::PUT, path, Some(&owner), Some(json!({"role": role})));
    let added = put("viewer").await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.text);
    assert_eq!(added.json, json!({"user_id": "dave", "role": "viewer"}));
    assert_eq!(
        api.get("/api/v1/admin/stats", &dave).await.status,
        StatusCode::OK
    );
    assert_eq!(
        status(&api, Method::POST, "/api/v1/admin/templates", &dave).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(put("operator").await.status, StatusCode::OK);
    let listed = api.get("/api/v1/admin/admins", &owner).await;
    let roles: Vec<(&Value, &Value)> = listed
        .items()
        .iter()
        .map(|a| (&a["user_id"], &a["role"]))
        .collect();
    assert_eq!(
        roles,
        [
            (&json!("dave"), &json!("operator")),
            (&json!("own"), &json!("owner"))
        ]
    );

    let bad = put("root").await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.json["error"]["details"]["errors"][0]["path"], "role");
    let own_entry = api
        .call(
            Method::PUT,
            "/api/v1/admin/admins/own",
            Some(&owner),
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(own_entry.status, StatusCode::CONFLICT);
    let remove_self = api
        .call(
            Method::DELETE,
            "/api/v1/admin/admins/own",
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(remove_self.status, StatusCode::CONFLICT);

    let removed = api.call(Method::DELETE, path, Some(&owner), None).await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    let again = api.call(Method::DELETE, path, Some(&owner), None).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.get("/api/v1/admin/stats", &dave).await.status,
        StatusCode::FORBIDDEN
    );
    let audit = api.get("/api/v1/admin/audit?actor=own", &owner).await;
    let actions: Vec<&Value> = audit.items().iter().map(|e| &e["action"]).collect();
    assert_eq!(
        actions,
        [
            &json!("admin.delete"),
            &json!("admin.put"),
            &json!("admin.put")
        ]
    );
}

/// Runs `conveyor-api admin add ...` against the test's database.
fn admin_add(pool: &PgPool, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_conveyor-api"))
        .args(["admin", "add"])
        .args(args)
        .env("DATABASE_URL", conveyor_tests::database_url(pool))
        .env("RUST_LOG", "warn")
        .output()
        .expect("run conveyor-api")
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn the_cli_adds_admins_with_a_role_defaulting_to_owner(pool: PgPool) {
    let api = TestApi::new(pool);
    let carl = api.token("ws_ops", "carl");
    let added = admin_add(&api.pool, &["carl", "--role", "viewer"]);
    assert!(added.status.success(), "{added:?}");
    assert_eq!(
        api.get("/api/v1/admin/stats", &carl).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.get("/api/v1/admin/admins", &carl).await.status,
        StatusCode::FORBIDDEN
    );
    let refused = admin_add(&api.pool, &["carl", "--role", "boss"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("viewer, operator or owner"));
    let promoted = admin_add(&api.pool, &["carl"]);
    assert!(promoted.status.success(), "{promoted:?}");
    assert!(String::from_utf8_lossy(&promoted.stdout).contains("(owner; was viewer)"));
    let listed = api.get("/api/v1/admin/admins", &carl).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.items()[0]["role"], "owner");
}
