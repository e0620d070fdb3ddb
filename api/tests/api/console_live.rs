//! The console's live list, statistics, version diff and template metrics
//! over HTTP (in-process router, real PostgreSQL): the executions list
//! follows its workspace's event stream (and only its own workspace's),
//! the connector list's 24-hour figures match the JSON API's, a diff of
//! two versions shows their changed lines escaped, and the admin page
//! shows each template's metrics as the JSON API computes them.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use conveyor_engine::store::channels::WORKSPACE_EVENTS;
use conveyor_tests::api::WAIT;
use futures_util::StreamExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tower::ServiceExt;

use crate::console::Browser;
use crate::support::api;

const HOSTILE: &str = "<script>alert(1)</script>";

fn connector(name: &str) -> Value {
    json!({"name": name, "retry": {"max_attempts": 1},
           "steps": [{"name": "call", "method": "GET", "url": "http://127.0.0.1:9/x"}]})
}

/// Finishes execution `id` as `status` after `ms` milliseconds (a
/// fixture: these tests are about what pages show, not about running).
async fn finish(pool: &PgPool, id: &str, status: &str, ms: i32) {
    sqlx::query(
        "UPDATE connector_executions
         SET status = $2, started_at = created_at,
             finished_at = created_at + make_interval(secs => $3 / 1000.0), updated_at = now()
         WHERE id = $1::uuid",
    )
    .bind(id)
    .bind(status)
    .bind(f64::from(ms))
    .execute(pool)
    .await
    .expect("finish");
}

async fn workspace_watchers(pool: &PgPool, workspace: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM workspace_watchers WHERE workspace_id = $1")
        .bind(workspace)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// The `<tr>` of a page's table that links to `href`.
fn row_of<'t>(html: &'t str, href: &str) -> &'t str {
    let at = html
        .find(&format!(r#"href="{href}""#))
        .unwrap_or_else(|| panic!("no row links to {href}: {html}"));
    let start = html[..at].rfind("<tr").unwrap_or(at);
    let end = html[at..].find("</tr>").map_or(html.len(), |e| at + e);
    &html[start..end]
}

fn num(value: impl std::fmt::Display) -> String {
    format!(r#"<td class="num">{value}</td>"#)
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn the_executions_list_follows_its_own_workspaces_stream(pool: PgPool) {
    let api = api(pool.clone());
    let token = api.token("ws_a", "alice");
    let other = api.token("ws_b", "bob");
    let mine = api.create_connector(&token, connector("Alpha")).await;
    let theirs = api.create_connector(&other, connector("Beta")).await;
    let browser = Browser::sign_in(&api, &token).await;
    let mut listener = PgListener::connect_with(&pool).await.expect("listener");
    listener.listen(WORKSPACE_EVENTS).await.expect("listen");
    // Nobody watches yet: this change notifies nothing.
    api.execute(&token, &mine, json!({})).await;

    let response = api
        .router
        .clone()
        .oneshot(
            Request::get("/console/events")
                .header(header::COOKIE, browser.cookie())
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    assert_eq!(workspace_watchers(&pool, "ws_a").await, 1);
    // Another workspace's change is not notified; this one's is.
    api.execute(&other, &theirs, json!({})).await;
    let id = api.execute(&token, &mine, json!({})).await;
    let first = tokio::time::timeout(WAIT, listener.recv())
        .await
        .expect("a notification")
        .expect("received");
    assert_eq!(first.payload(), "ws_a");

    let mut body = response.into_body().into_data_stream();
    let mut text = String::new();
    while !text.contains("event: changed") {
        let chunk = tokio::time::timeout(WAIT, body.next())
            .await
            .expect("an event in time")
            .expect("the stream stays open")
            .expect("a chunk");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let page = browser.get("/console").await;
    assert!(
        page.text.contains(&format!("/console/executions/{id}")),
        "{}",
        page.text
    );
    // Closing the stream removes its watcher.
    drop(body);
    let gone = async {
        while workspace_watchers(&pool, "ws_a").await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, gone)
        .await
        .expect("the watcher is removed");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn the_connector_list_shows_the_apis_24_hour_statistics(pool: PgPool) {
    let api = api(pool.clone());
    let token = api.token("ws_a", "alice");
    let alpha = api.create_connector(&token, connector("Alpha")).await;
    let beta = api.create_connector(&token, connector("Beta")).await;
    let idle = api.create_connector(&token, connector("Idle")).await;
    for (status, ms) in [
        ("succeeded", 100),
        ("succeeded", 200),
        ("succeeded", 300),
        ("failed", 400),
    ] {
        let id = api.execute(&token, &alpha, json!({})).await;
        finish(&pool, &id, status, ms).await;
    }
    api.execute(&token, &beta, json!({})).await;
    let cancelled = api.execute(&token, &beta, json!({})).await;
    finish(&pool, &cancelled, "cancelled", 50).await;
    // Another workspace's executions count for nobody here.
    let other = api.token("ws_b", "bob");
    let theirs = api.create_connector(&other, connector("Alpha")).await;
    api.execute(&other, &theirs, json!({})).await;

    let browser = Browser::sign_in(&api, &token).await;
    let page = browser.get("/console/connectors").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    let row = row_of(&page.text, &format!("/console/connectors/{alpha}"));
    for cell in [
        num(4),
        num(3),
        num(1),
        num("75.0 %"),
        num("250 ms"),
        num("385 ms"),
    ] {
        assert!(row.contains(&cell), "{cell} missing in {row}");
    }
    let row = row_of(&page.text, &format!("/console/connectors/{beta}"));
    for cell in [num(2), num(0), num("—"), num("50 ms")] {
        assert!(row.contains(&cell), "{cell} missing in {row}");
    }
    let row = row_of(&page.text, &format!("/console/connectors/{idle}"));
    assert!(row.contains(&num(0)) && row.contains(&num("—")), "{row}");
    assert!(page.text.contains("recomputed every 10 s"), "{}", page.text);
    // The same figures as the JSON API's statistics.
    let stats = api
        .get(&format!("/api/v1/connectors/{alpha}/stats"), &token)
        .await;
    assert_eq!(
        stats.json["stats"],
        json!({"by_status": {"succeeded": 3, "failed": 1}, "success_rate": 0.75,
               "p50_duration_ms": 250.0, "p95_duration_ms": 385.0}),
        "{}",
        stats.text
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn two_versions_of_a_connector_show_their_changed_lines_escaped(pool: PgPool) {
    let api = api(pool.clone());
    let token = api.token("ws_a", "alice");
    let id = api.create_connector(&token, connector("Alpha")).await;
    let browser = Browser::sign_in(&api, &token).await;
    let only = browser.get(&format!("/console/connectors/{id}")).await;
    assert!(
        !only.text.contains("Compare versions"),
        "one version has nothing to compare"
    );
    let mut changed = connector(HOSTILE);
    changed["steps"][0]["method"] = json!("POST");
    let saved = browser
        .submit(
            &format!("/console/connectors/{id}"),
            &[("definition", &changed.to_string())],
        )
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.text);

    let page = browser.get(&format!("/console/connectors/{id}")).await;
    assert!(page.text.contains(r#"aria-label="Compare versions""#));
    assert!(
        page.text
            .contains(r#"<option value="1" selected>v1</option>"#)
    );
    assert!(
        page.text
            .contains(r#"<option value="2" selected>v2</option>"#)
    );
    assert!(!page.text.contains("Changes from"));

    let diff = browser
        .get(&format!("/console/connectors/{id}?from=1&to=2"))
        .await;
    assert_eq!(diff.status, StatusCode::OK, "{}", diff.text);
    assert!(diff.text.contains("Changes from v1 to v2"), "{}", diff.text);
    assert!(
        !diff.text.contains("<script>alert"),
        "raw markup in the diff"
    );
    let removed = row_of_class(&diff.text, "removed");
    let added = row_of_class(&diff.text, "added");
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert_eq!(added.len(), 2, "{added:?}");
    assert!(removed.iter().any(|r| r.contains("GET")), "{removed:?}");
    assert!(added.iter().any(|r| r.contains("POST")), "{added:?}");
    assert!(
        added.iter().any(|r| r.contains("&#60;script&#62;alert(1)")),
        "{added:?}"
    );
    let same = browser
        .get(&format!("/console/connectors/{id}?from=2&to=2"))
        .await;
    assert!(same.text.contains("The two versions are identical."));
    for (query, field) in [("from=9&to=1", "`from`"), ("from=1&to=x", "`to`")] {
        let bad = browser
            .get(&format!("/console/connectors/{id}?{query}"))
            .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{query}");
        assert!(bad.text.contains(field), "{query}: {}", bad.text);
    }
}

/// The lines of a diff table whose row has class `kind`.
fn row_of_class(html: &str, kind: &str) -> Vec<String> {
    html.split(&format!(r#"<tr class="{kind}">"#))
        .skip(1)
        .map(|rest| rest.split("</tr>").next().unwrap_or_default().to_owned())
        .collect()
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn the_admin_page_shows_each_templates_metrics(pool: PgPool) {
    let api = api(pool.clone());
    conveyor_engine::store::access::add_admin(&pool, "root")
        .await
        .expect("admin");
    let admin = api.token("ops", "root");
    for slug in ["quiet", "busy"] {
        let template = json!({
            "slug": slug, "name": format!("{slug} {HOSTILE}"), "description": "Calls an API.",
            "category": "developer-tools", "provider": "echo", "docs_url": "https://echo.example.com/docs",
            "version": "1.0.0",
            "credentials": [], "settings": [], "connector": connector("Echo")
        });
        let created = api.post("/api/v1/admin/templates", &admin, template).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    }
    let token = api.token("ws_a", "alice");
    let installed = api
        .post("/api/v1/templates/busy/install", &token, json!({}))
        .await;
    assert_eq!(installed.status, StatusCode::CREATED, "{}", installed.text);
    let connector_id = installed.id();
    for (status, ms) in [("succeeded", 120), ("failed", 80)] {
        let id = api.execute(&token, &connector_id, json!({})).await;
        finish(&pool, &id, status, ms).await;
    }

    let browser = Browser::sign_in(&api, &admin).await;
    let page = browser.get("/console/admin").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    let table = page
        .text
        .split(r#"<table id="template-metrics">"#)
        .nth(1)
        .and_then(|t| t.split("</table>").next())
        .expect("a template metrics table");
    assert!(!table.contains("<script>alert"), "raw markup");
    let busy = table.find("busy &#60;script&#62;").expect("busy listed");
    let quiet = table.find("quiet &#60;script&#62;").expect("quiet listed");
    assert!(busy < quiet, "the busiest first");
    let busy_row = &table[busy..table[busy..]
        .find("</tr>")
        .map_or(table.len(), |e| busy + e)];
    let metrics = api
        .get(
            "/api/v1/admin/templates/busy/metrics?window_hours=24",
            &admin,
        )
        .await;
    assert_eq!(
        metrics.json["metrics"],
        json!({"installs": 1, "executions": 2, "success_rate": 0.5,
               "p50_duration_ms": 100.0, "p95_duration_ms": 118.0}),
        "{}",
        metrics.text
    );
    for cell in [num(1), num(2), num("50.0 %"), num("100 ms"), num("118 ms")] {
        assert!(busy_row.contains(&cell), "{cell} missing in {busy_row}");
    }
    let quiet_row = &table[quiet..];
    assert!(quiet_row.contains(&num(0)) && quiet_row.contains(&num("—")));
    // Admins only.
    let member = Browser::sign_in(&api, &token).await;
    let refused = member.get("/console/admin").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
}
