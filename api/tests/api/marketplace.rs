//! The template marketplace through the HTTP API (in-process router, real
//! PostgreSQL): install rules, install counts, ratings, community review,
//! admin rights and the upgrade path.

use axum::http::{Method, StatusCode};
use conveyor_tests::api::{Reply, TestApi};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::error_paths;

fn template(slug: &str, version: &str) -> Value {
    json!({
        "slug": slug, "name": "Echo", "description": "Posts a greeting.", "category": "developer-tools",
        "provider": "echo", "docs_url": "https://echo.example.com/docs", "version": version,
        "credentials": [{"name": "echo", "auth": "bearer", "fields": ["token"], "hint": "Any token"}],
        "settings": [{"name": "base_url", "description": "API root", "default": "https://echo.example.com"},
                     {"name": "greeting", "description": "What to say"}],
        "connector": {"name": "Echo", "steps": [{"name": "say", "method": "POST",
            "url": "<<settings.base_url>>/say", "auth": {"type": "bearer", "credential": "echo"},
            "body": {"type": "json", "content": {"text": "<<settings.greeting>>"}}}]}
    })
}

async fn make_admin(pool: &PgPool, user: &str) {
    conveyor_engine::store::access::add_admin(pool, user)
        .await
        .expect("admin");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn install_names_each_missing_setting_and_credential_and_changes_nothing(pool: PgPool) {
    let api = TestApi::new(pool.clone());
    make_admin(&pool, "root").await;
    let admin = api.token("ops", "root");
    let status = api
        .post("/api/v1/admin/templates", &admin, template("echo", "1.0.0"))
        .await
        .status;
    assert_eq!(status, StatusCode::CREATED);
    let user = api.token("ws_a", "u1");
    let Reply {
        status, json: body, ..
    } = api
        .post("/api/v1/templates/echo/install", &user, json!({}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let paths: Vec<&str> = body["error"]["details"]["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["path"].as_str())
        .collect();
    assert_eq!(paths, ["settings.greeting", "credentials.echo"]);
    let connectors: i64 = sqlx::query_scalar("SELECT count(*) FROM connectors")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(connectors, 0);
    let t = api.get("/api/v1/templates/echo", &user).await.json;
    assert_eq!(t["install_count"], json!(0));
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn installs_are_counted_and_upgrades_keep_settings(pool: PgPool) {
    let api = TestApi::new(pool.clone());
    make_admin(&pool, "root").await;
    let admin = api.token("ops", "root");
    api.post("/api/v1/admin/templates", &admin, template("echo", "1.0.0"))
        .await;
    let user = api.token("ws_a", "u1");
    let install = json!({"name": "Team echo", "settings": {"greeting": "hello"}, "credentials": {"echo": "my-echo"}});
    let Reply {
        status,
        json: installed,
        ..
    } = api
        .post("/api/v1/templates/echo/install", &user, install.clone())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{installed}");
    assert_eq!(installed["template_version"], json!("1.0.0"));
    let id = installed["id"].as_str().expect("id").to_owned();
    api.post(
        "/api/v1/templates/echo/install",
        &api.token("ws_b", "u2"),
        install,
    )
    .await;
    let t = api.get("/api/v1/templates/echo", &user).await.json;
    assert_eq!(t["install_count"], json!(2));

    let c = api
        .get(&format!("/api/v1/connectors/{id}"), &user)
        .await
        .json;
    assert_eq!(c["update_available"], Value::Null);
    let status = api
        .call(
            Method::POST,
            &format!("/api/v1/connectors/{id}/upgrade"),
            Some(&user),
            None,
        )
        .await
        .status;
    assert_eq!(status, StatusCode::CONFLICT, "already current");

    let mut v2 = template("echo", "1.1.0");
    v2["settings"]
        .as_array_mut()
        .expect("list")
        .push(json!({"name": "suffix", "description": "Appended", "default": "!"}));
    v2["connector"]["steps"][0]["body"]["content"]["suffix"] = json!("<<settings.suffix>>");
    let Reply {
        status, json: body, ..
    } = api
        .call(
            Method::PUT,
            "/api/v1/admin/templates/echo",
            Some(&admin),
            Some(v2),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let c = api
        .get(&format!("/api/v1/connectors/{id}"), &user)
        .await
        .json;
    assert_eq!(c["update_available"], json!("1.1.0"));
    let Reply {
        status, json: up, ..
    } = api
        .call(
            Method::POST,
            &format!("/api/v1/connectors/{id}/upgrade"),
            Some(&user),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{up}");
    assert_eq!(up["version"], json!(2));
    let c = api
        .get(&format!("/api/v1/connectors/{id}"), &user)
        .await
        .json;
    assert_eq!(c["template_version"], json!("1.1.0"));
    assert_eq!(c["update_available"], Value::Null);
    assert_eq!(c["definition"]["name"], json!("Team echo"));
    assert_eq!(
        c["definition"]["settings"],
        json!({"base_url": "https://echo.example.com", "greeting": "hello", "suffix": "!"})
    );
    assert_eq!(
        c["definition"]["credential_bindings"],
        json!({"echo": "my-echo"})
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn ratings_are_one_per_workspace_and_bounded(pool: PgPool) {
    let api = TestApi::new(pool.clone());
    make_admin(&pool, "root").await;
    api.post(
        "/api/v1/admin/templates",
        &api.token("ops", "root"),
        template("echo", "1.0.0"),
    )
    .await;
    let a = api.token("ws_a", "u1");
    let b = api.token("ws_b", "u2");
    for stars in [0, 6] {
        let status = api
            .post(
                "/api/v1/templates/echo/ratings",
                &a,
                json!({"stars": stars}),
            )
            .await
            .status;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{stars} stars");
    }
    api.post("/api/v1/templates/echo/ratings", &a, json!({"stars": 2}))
        .await;
    let r = api
        .post(
            "/api/v1/templates/echo/ratings",
            &a,
            json!({"stars": 4, "review": "good"}),
        )
        .await
        .json;
    assert_eq!(
        (r["rating_count"].clone(), r["rating_average"].clone()),
        (json!(1), json!(4.0)),
        "re-rating replaces"
    );
    let r = api
        .post("/api/v1/templates/echo/ratings", &b, json!({"stars": 5}))
        .await
        .json;
    assert_eq!(
        (r["rating_count"].clone(), r["rating_average"].clone()),
        (json!(2), json!(4.5))
    );
    let status = api
        .post("/api/v1/templates/nope/ratings", &b, json!({"stars": 5}))
        .await
        .status;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn community_templates_stay_private_until_an_admin_approves(pool: PgPool) {
    let api = TestApi::new(pool.clone());
    make_admin(&pool, "root").await;
    let author = api.token("ws_author", "writer");
    let other = api.token("ws_other", "reader");
    let Reply {
        status, json: body, ..
    } = api
        .post(
            "/api/v1/templates",
            &author,
            template("community-echo", "0.1.0"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["review_status"], json!("pending"));

    let status = api
        .get("/api/v1/templates/community-echo", &other)
        .await
        .status;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let list = api
        .get("/api/v1/templates?source=community", &other)
        .await
        .json;
    assert_eq!(list["items"], json!([]));
    let status = api
        .get("/api/v1/templates/community-echo", &author)
        .await
        .status;
    assert_eq!(status, StatusCode::OK, "the author sees its submission");
    let install = json!({"settings": {"greeting": "x"}, "credentials": {"echo": "e"}});
    let status = api
        .post(
            "/api/v1/templates/community-echo/install",
            &author,
            install.clone(),
        )
        .await
        .status;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "pending templates cannot be installed"
    );

    let status = api
        .call(
            Method::POST,
            "/api/v1/admin/templates/community-echo/approve",
            Some(&other),
            None,
        )
        .await
        .status;
    assert_eq!(status, StatusCode::FORBIDDEN, "non-admins cannot approve");
    let status = api
        .post(
            "/api/v1/admin/templates/community-echo/approve",
            &api.token("ops", "root"),
            json!({"version": "0.1.0"}),
        )
        .await
        .status;
    assert_eq!(status, StatusCode::OK);
    let list = api
        .get("/api/v1/templates?source=community", &other)
        .await
        .json;
    assert_eq!(list["items"][0]["slug"], json!("community-echo"));
    let status = api
        .post("/api/v1/templates/community-echo/install", &other, install)
        .await
        .status;
    assert_eq!(status, StatusCode::CREATED);

    let status = api
        .post(
            "/api/v1/templates",
            &other,
            template("community-echo", "0.2.0"),
        )
        .await
        .status;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "another workspace cannot take the slug"
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn official_templates_sync_and_can_be_searched_and_featured(pool: PgPool) {
    conveyor_worker::settings::sync_templates(&pool)
        .await
        .expect("sync");
    let api = TestApi::new(pool.clone());
    let user = api.token("ws_a", "u1");
    let Reply {
        status, json: list, ..
    } = api
        .get("/api/v1/templates?source=official&q=slack", &user)
        .await;
    assert_eq!(status, StatusCode::OK);
    let slugs: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|t| t["slug"].as_str())
        .collect();
    assert!(slugs.contains(&"slack-post-message"), "{slugs:?}");
    let status = api
        .call(
            Method::POST,
            "/api/v1/admin/templates/slack-post-message/feature",
            Some(&user),
            None,
        )
        .await
        .status;
    assert_eq!(status, StatusCode::FORBIDDEN);
    make_admin(&pool, "root").await;
    let status = api
        .call(
            Method::POST,
            "/api/v1/admin/templates/slack-post-message/feature",
            Some(&api.token("ops", "root")),
            None,
        )
        .await
        .status;
    assert_eq!(status, StatusCode::OK);
    let list = api.get("/api/v1/templates?featured=true", &user).await.json;
    assert_eq!(list["items"][0]["slug"], json!("slack-post-message"));
    // A second sync changes nothing.
    conveyor_worker::settings::sync_templates(&pool)
        .await
        .expect("sync");
    let versions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM connector_template_versions WHERE slug = 'slack-post-message'",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(versions, 1);
    let status = api
        .get("/api/v1/templates?sort=popularity", &user)
        .await
        .status;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn install_refuses_a_credential_of_a_kind_the_template_does_not_accept(pool: PgPool) {
    conveyor_worker::settings::sync_templates(&pool)
        .await
        .expect("sync");
    let api = TestApi::new(pool.clone());
    let user = api.token("ws_a", "u1");
    let put = |name: &str, body: Value| {
        let path = format!("/api/v1/credentials/{name}");
        let api = &api;
        let user = user.clone();
        async move {
            let reply = api.call(Method::PUT, &path, Some(&user), Some(body)).await;
            assert!(reply.status.is_success(), "{}", reply.text);
        }
    };
    put(
        "paypal-app",
        json!({"kind": "oauth2_client_credentials", "oauth": {"provider": "paypal"},
               "data": {"client_id": "AYSq3RDGsmBLJE", "client_secret": "EGnHDxD_qRPdaLdZz8"}}),
    )
    .await;
    put(
        "jira-3lo",
        json!({"kind": "oauth2_authorization_code", "oauth": {"provider": "atlassian"},
               "data": {"client_id": "Xq7mT2pLk9vR4sN8", "client_secret": "ATOAq8Zr3mX6vT1p"}}),
    )
    .await;
    api.put_credential(&user, "zoho-token", json!({"token": "1000.8cb99d"}))
        .await;

    let Reply { status, json, .. } = api
        .post(
            "/api/v1/templates/zoho-crm-list-leads/install",
            &user,
            json!({"credentials": {"zoho": "paypal-app"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{json}");
    assert_eq!(error_paths(&json), ["credentials.zoho"]);
    assert_eq!(
        json["error"]["details"]["errors"][0]["message"],
        "`paypal-app` is a oauth2_client_credentials credential; `zoho` accepts static, oauth2_authorization_code, nango"
    );
    let Reply { status, json, .. } = api
        .post(
            "/api/v1/templates/paypal-create-order/install",
            &user,
            json!({"credentials": {"paypal": "zoho-token"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{json}");
    assert_eq!(error_paths(&json), ["credentials.paypal"]);
    // Jira over OAuth needs the site's cloud id, and no site URL to search.
    let Reply { status, json, .. } = api
        .post(
            "/api/v1/templates/jira-search-issues/install",
            &user,
            json!({"credentials": {"jira": "jira-3lo"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{json}");
    assert_eq!(error_paths(&json), ["settings.cloud_id"]);
    let connectors: i64 = sqlx::query_scalar("SELECT count(*) FROM connectors")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(connectors, 0, "a refused install changes nothing");

    let Reply { status, json, .. } = api
        .post(
            "/api/v1/templates/jira-search-issues/install",
            &user,
            json!({"credentials": {"jira": "jira-3lo"}, "settings": {"cloud_id": "1122-33"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    let Reply { status, json, .. } = api
        .post(
            "/api/v1/templates/zoho-crm-list-leads/install",
            &user,
            json!({"credentials": {"zoho": "zoho-token"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    let id = json["id"].as_str().expect("id").to_owned();

    // Saving the installed connector checks its bindings the same way.
    let path = format!("/api/v1/connectors/{id}");
    let mut definition = api.get(&path, &user).await.json["definition"].clone();
    definition["credential_bindings"]["zoho"] = json!("paypal-app");
    let Reply { status, json, .. } = api
        .call(Method::PUT, &path, Some(&user), Some(definition.clone()))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{json}");
    assert_eq!(error_paths(&json), ["credential_bindings.zoho"]);
    assert_eq!(api.get(&path, &user).await.json["version"], json!(1));
    definition["credential_bindings"]["zoho"] = json!("jira-3lo");
    let Reply { status, json, .. } = api
        .call(Method::PUT, &path, Some(&user), Some(definition))
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["version"], json!(2));
}
