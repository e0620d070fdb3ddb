//! Input at the edges of what can be parsed or stored, and requests no
//! route takes: days and times outside the years 1 to 9999, forged
//! cursors, NUL characters in query strings and path segments, admin ids
//! with control characters, unknown paths and methods. Each gets a 4xx in
//! the API's error shape naming what is at fault, and nothing is written.

use axum::http::StatusCode;
use conveyor_engine::state::AdminRole;
use conveyor_engine::store::access;
use conveyor_tests::api::{Reply, TestApi};
use sqlx::PgPool;

use crate::support::api;

/// A workspace user, a viewer and an owner among the admins.
async fn callers(pool: &PgPool) -> (TestApi, String, String, String) {
    let api = api(pool.clone());
    for (user, role) in [("vic", AdminRole::Viewer), ("own", AdminRole::Owner)] {
        access::set_admin_role(pool, user, role)
            .await
            .expect("admin");
    }
    let a = api.token("ws_a", "alice");
    let viewer = api.token("ws_ops", "vic");
    let owner = api.token("ws_ops", "own");
    (api, a, viewer, owner)
}

/// Asserts a 400 `bad_request` whose message names `field`.
fn assert_bad(reply: &Reply, what: &str, field: &str) {
    assert_eq!(
        reply.status,
        StatusCode::BAD_REQUEST,
        "{what}: {}",
        reply.text
    );
    assert_eq!(reply.json["error"]["code"], "bad_request", "{what}");
    let message = reply.json["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains(&format!("{field}: ")) || message.contains(&format!("`{field}`")),
        "{what}: {field} not named in {}",
        reply.text
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn usage_days_outside_the_years_1_to_9999_are_400_naming_the_day(pool: PgPool) {
    let (api, a, viewer, _) = callers(&pool).await;
    for (query, field) in [
        // `to - 29 days` and `to + 1 day` panicked at chrono's ends.
        ("to=-262143-01-01", "to"),
        ("to=%2B262142-12-31", "to"),
        // Arithmetic that succeeds, days PostgreSQL refuses.
        ("from=-262143-01-01&to=-262143-01-02", "from"),
        ("from=-5000-01-01&to=-5000-01-02", "from"),
        ("from=0000-12-31&to=0001-01-01", "from"),
        ("from=9999-12-31&to=%2B10000-01-01", "to"),
    ] {
        for (path, token) in [("/api/v1/usage", &a), ("/api/v1/admin/usage", &viewer)] {
            let uri = format!("{path}?{query}");
            assert_bad(&api.get(&uri, token).await, &uri, field);
        }
    }
    for query in [
        "from=0001-01-01&to=0001-01-31",
        "from=9999-12-01&to=9999-12-31",
    ] {
        let reply = api.get(&format!("/api/v1/usage?{query}"), &a).await;
        assert_eq!(reply.status, StatusCode::OK, "{query}: {}", reply.text);
    }
}
