//! Marketplace hardening: official slugs are reserved, and an approval
//! covers the version an admin reviewed, not one published after it.

use axum::http::{Method, StatusCode};
use conveyor_tests::api::{Reply, TestApi};
use serde_json::{Value, json};
use sqlx::PgPool;

fn template(slug: &str, version: &str, greeting: &str) -> Value {
    json!({
        "slug": slug, "name": "Echo", "description": "Posts a greeting.", "category": "developer-tools",
        "provider": "echo", "docs_url": "https://echo.example.com/docs", "version": version,
        "credentials": [{"name": "echo", "auth": "bearer", "fields": ["token"], "hint": "Any token"}],
        "settings": [{"name": "base_url", "description": "API root", "default": "https://echo.example.com"}],
        "connector": {"name": "Echo", "steps": [{"name": "say", "method": "POST",
            "url": "<<settings.base_url>>/say", "auth": {"type": "bearer", "credential": "echo"},
            "body": {"type": "json", "content": {"text": greeting}}}]}
    })
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn community_submissions_cannot_take_a_name_reserved_for_official_templates(pool: PgPool) {
    let api = TestApi::new(pool);
    let author = api.token("ws_author", "writer");
    for slug in ["slack-post-message-v2", "notion-create-page", "communityx"] {
        let Reply {
            status, json: body, ..
        } = api
            .post("/api/v1/templates", &author, template(slug, "1.0.0", "hi"))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{slug}: {body}");
        assert_eq!(body["error"]["details"]["errors"][0]["path"], "slug");
    }
    let Reply {
        status, json: body, ..
    } = api
        .post(
            "/api/v1/templates",
            &author,
            template("community-notion-page", "1.0.0", "hi"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn an_approval_covers_only_the_reviewed_version(pool: PgPool) {
    let api = TestApi::new(pool.clone());
    conveyor_engine::store::access::add_admin(&pool, "root")
        .await
        .expect("admin");
    let admin = api.token("ops", "root");
    let author = api.token("ws_author", "writer");
    let other = api.token("ws_other", "reader");
    let (api_ref, author_ref) = (&api, author.as_str());
    let submit = move |version: &str, greeting: &str| {
        api_ref.post(
            "/api/v1/templates",
            author_ref,
            template("community-echo", version, greeting),
        )
    };
    assert_eq!(
        submit("1.0.0", "reviewed").await.status,
        StatusCode::CREATED
    );
    // The author slips in a new version while the admin reviews 1.0.0.
    assert_eq!(
        submit("1.1.0", "not reviewed").await.status,
        StatusCode::CREATED
    );
    let approve = "/api/v1/admin/templates/community-echo/approve";
    let Reply {
        status, json: body, ..
    } = api.post(approve, &admin, json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("version"), "{body}");
    let Reply {
        status, json: body, ..
    } = api.post(approve, &admin, json!({"version": "9.9.9"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["details"]["errors"][0]["path"], "version");
    let Reply {
        status, json: body, ..
    } = api.post(approve, &admin, json!({"version": "1.0.0"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["review_status"], "pending",
        "1.1.0 still awaits review"
    );

    let Reply {
        status,
        json: shown,
        ..
    } = api.get("/api/v1/templates/community-echo", &other).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["approved_version"], "1.0.0");
    assert_eq!(shown["latest_version"], "1.0.0");
    assert_eq!(shown["template"]["version"], "1.0.0");
    assert!(!shown.to_string().contains("not reviewed"), "{shown}");
    let Reply {
        status,
        json: installed,
        ..
    } = api
        .post(
            "/api/v1/templates/community-echo/install",
            &other,
            json!({"credentials": {"echo": "e"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{installed}");
    assert_eq!(installed["template_version"], "1.0.0");
    let id = installed["id"].as_str().expect("id");
    let connector = api
        .get(&format!("/api/v1/connectors/{id}"), &other)
        .await
        .json;
    assert_eq!(
        connector["definition"]["steps"][0]["body"]["content"]["text"],
        "reviewed"
    );
    assert_eq!(connector["update_available"], Value::Null);
}

/// `community-echo` 1.0.0 ("reviewed") submitted and approved: the tokens
/// of an admin, its author and another workspace.
async fn approved_echo(api: &TestApi, pool: &PgPool) -> (String, String, String) {
    conveyor_engine::store::access::add_admin(pool, "root")
        .await
        .expect("admin");
    let (admin, author) = (api.token("ops", "root"), api.token("ws_author", "writer"));
    let submitted = api
        .post(
            "/api/v1/templates",
            &author,
            template("community-echo", "1.0.0", "reviewed"),
        )
        .await;
    assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.text);
    let approved = api
        .post(
            "/api/v1/admin/templates/community-echo/approve",
            &admin,
            json!({"version": "1.0.0"}),
        )
        .await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.text);
    (admin, author, api.token("ws_other", "reader"))
}

/// The author submits 1.1.0 ("not reviewed"), renamed and redescribed.
async fn resubmit(api: &TestApi, author: &str) {
    let mut next = template("community-echo", "1.1.0", "not reviewed");
    next["name"] = json!("Echo Pro");
    next["description"] = json!("Unreviewed text.");
    let submitted = api.post("/api/v1/templates", author, next).await;
    assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.text);
}

/// `t`, a template as another workspace sees it, is 1.0.0 as approved:
/// nothing of the version published after it shows.
fn is_the_approved_version(t: &Value) {
    assert_eq!(t["slug"], "community-echo", "{t}");
    assert_eq!(t["name"], "Echo", "{t}");
    assert_eq!(t["description"], "Posts a greeting.", "{t}");
    assert_eq!(t["latest_version"], "1.0.0", "{t}");
    assert_eq!(t["approved_version"], "1.0.0", "{t}");
    assert_eq!(t["review_status"], "approved", "{t}");
    let text = t.to_string();
    for unreviewed in ["1.1.0", "Echo Pro", "Unreviewed", "not reviewed"] {
        assert!(!text.contains(unreviewed), "{unreviewed} shows: {t}");
    }
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_version_awaiting_review_leaves_the_approved_one_to_other_workspaces(pool: PgPool) {
    let api = TestApi::new(pool.clone());
    let (admin, author, other) = approved_echo(&api, &pool).await;
    let install = json!({"credentials": {"echo": "e"}});
    let installed = api
        .post(
            "/api/v1/templates/community-echo/install",
            &other,
            install.clone(),
        )
        .await;
    assert_eq!(installed.status, StatusCode::CREATED, "{}", installed.text);
    let id = installed.id();
    resubmit(&api, &author).await;

    let shown = api.get("/api/v1/templates/community-echo", &other).await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.text);
    is_the_approved_version(&shown.json);
    assert_eq!(shown.json["template"]["version"], "1.0.0");
    let listed = api.get("/api/v1/templates?source=community", &other).await;
    assert_eq!(listed.items().len(), 1, "{}", listed.text);
    is_the_approved_version(&listed.items()[0]);
    let found = api.get("/api/v1/templates?q=Unreviewed", &other).await;
    assert_eq!(found.items().len(), 0, "{}", found.text);
    let again = api
        .post("/api/v1/templates/community-echo/install", &other, install)
        .await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
    assert_eq!(again.json["template_version"], "1.0.0");
    let upgrade = format!("/api/v1/connectors/{id}/upgrade");
    let refused = api.call(Method::POST, &upgrade, Some(&other), None).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text);
    assert!(
        refused.text.contains("already on the newest"),
        "{}",
        refused.text
    );
    let connector = api.get(&format!("/api/v1/connectors/{id}"), &other).await;
    assert_eq!(connector.json["update_available"], Value::Null);

    // The author and the admins see the version awaiting review.
    let mine = api.get("/api/v1/templates/community-echo", &author).await;
    assert_eq!(mine.json["latest_version"], "1.1.0", "{}", mine.text);
    assert_eq!(mine.json["approved_version"], "1.0.0");
    assert_eq!(mine.json["review_status"], "pending");
    let queue = api
        .get("/api/v1/admin/templates?source=community", &admin)
        .await;
    let queued = &queue.items()[0];
    assert_eq!(queued["review_status"], "pending", "{queued}");
    assert_eq!(queued["latest_version"], "1.1.0");
    assert_eq!(queued["name"], "Echo Pro");

    // Its approval moves every workspace on.
    let approved = api
        .post(
            "/api/v1/admin/templates/community-echo/approve",
            &admin,
            json!({"version": "1.1.0"}),
        )
        .await;
    assert_eq!(
        approved.json["review_status"], "approved",
        "{}",
        approved.text
    );
    let connector = api.get(&format!("/api/v1/connectors/{id}"), &other).await;
    assert_eq!(connector.json["update_available"], "1.1.0");
    let upgraded = api.call(Method::POST, &upgrade, Some(&other), None).await;
    assert_eq!(upgraded.status, StatusCode::OK, "{}", upgraded.text);
    assert_eq!(upgraded.json["template_version"], "1.1.0");
    let shown = api.get("/api/v1/templates/community-echo", &other).await;
    assert_eq!(shown.json["name"], "Echo Pro", "{}", shown.text);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn rejecting_a_new_version_keeps_the_approved_one_available(pool: PgPool) {
    let api = TestApi::new(pool.clone());
    let (admin, author, other) = approved_echo(&api, &pool).await;
    resubmit(&api, &author).await;
    let reject = "/api/v1/admin/templates/community-echo/reject";
    let rejected = api.post(reject, &admin, json!({})).await;
    assert_eq!(rejected.status, StatusCode::OK, "{}", rejected.text);
    assert_eq!(rejected.json["review_status"], "rejected");

    let shown = api.get("/api/v1/templates/community-echo", &other).await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.text);
    is_the_approved_version(&shown.json);
    let installed = api
        .post(
            "/api/v1/templates/community-echo/install",
            &other,
            json!({"credentials": {"echo": "e"}}),
        )
        .await;
    assert_eq!(installed.status, StatusCode::CREATED, "{}", installed.text);
    assert_eq!(installed.json["template_version"], "1.0.0");
    let mine = api.get("/api/v1/templates/community-echo", &author).await;
    assert_eq!(mine.json["review_status"], "rejected", "{}", mine.text);
    assert_eq!(mine.json["latest_version"], "1.1.0");

    // Nothing awaits review now: withdrawing the approved version is a
    // retirement, not a rejection.
    let again = api.post(reject, &admin, json!({})).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    let retired = api
        .call(
            Method::DELETE,
            "/api/v1/admin/templates/community-echo",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(retired.status, StatusCode::NO_CONTENT, "{}", retired.text);
    let gone = api.get("/api/v1/templates/community-echo", &other).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.text);
}
