//! Marketplace hardening: official slugs are reserved, and an approval
//! covers the version an admin reviewed, not one published after it.

use axum::http::StatusCode;
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

    let Reply {
        status,
        json: shown,
        ..
    } = api.get("/api/v1/templates/community-echo", &other).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["approved_version"], "1.0.0");
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
