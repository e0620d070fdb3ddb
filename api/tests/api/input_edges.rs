//! Input at the edges of what can be parsed or stored, and requests no
//! route takes: days and times outside the years 1 to 9999, forged
//! cursors, NUL characters in query strings and path segments, admin ids
//! with control characters, unknown paths and methods. Each gets a 4xx in
//! the API's error shape naming what is at fault, and nothing is written.
//! An `X-Request-Id` unfit to log and store is replaced, not refused.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine as _;
use chrono::NaiveDate;
use conveyor_engine::state::AdminRole;
use conveyor_engine::store::access;
use conveyor_tests::api::{Reply, TestApi};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::{api, error_paths, row_counts, simple_connector};

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

async fn admins(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM saas_admin_users")
        .fetch_one(pool)
        .await
        .expect("count")
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

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn times_outside_the_years_1_to_9999_are_refused_naming_the_field(pool: PgPool) {
    let (api, a, viewer, _) = callers(&pool).await;
    let connector = api
        .create_connector(&a, simple_connector("http://127.0.0.1:9"))
        .await;
    let before = row_counts(&pool).await;
    let outside = [
        "-5000-01-01T00:00:00Z",
        "0000-12-31T23:59:59Z",
        "+10000-01-01T00:00:00Z",
    ];
    for t in outside {
        let reply = api
            .post(
                &format!("/api/v1/connectors/{connector}/execute"),
                &a,
                json!({"input": {}, "run_at": t}),
            )
            .await;
        reply.assert_refused("run_at");
        assert_eq!(error_paths(&reply.json), ["run_at"], "{}", reply.text);
        let reply = api
            .post(
                "/api/v1/api-keys",
                &a,
                json!({"name": "k", "expires_at": t}),
            )
            .await;
        reply.assert_refused("expires_at");
        let reply = api
            .post(
                &format!("/api/v1/connectors/{connector}/schedules"),
                &a,
                json!({"cron": "@daily", "end_at": t}),
            )
            .await;
        reply.assert_refused("end_at");
    }
    let listings = [
        ("/api/v1/executions".to_owned(), &a),
        (format!("/api/v1/connectors/{connector}/executions"), &a),
        ("/api/v1/admin/executions".to_owned(), &viewer),
    ];
    let audits = [
        ("/api/v1/audit", &a),
        ("/api/v1/audit?format=ndjson&", &a),
        ("/api/v1/admin/audit", &viewer),
        ("/api/v1/admin/audit?format=ndjson&", &viewer),
    ];
    for t in ["-5000-01-01T00:00:00Z", "%2B10000-01-01T00:00:00Z"] {
        for (path, token) in &listings {
            for field in ["created_after", "created_before"] {
                let uri = format!("{path}?{field}={t}");
                assert_bad(&api.get(&uri, token).await, &uri, field);
            }
        }
        for (path, token) in audits {
            let joiner = if path.ends_with('&') { "" } else { "?" };
            for field in ["since", "until"] {
                let uri = format!("{path}{joiner}{field}={t}");
                assert_bad(&api.get(&uri, token).await, &uri, field);
            }
        }
    }
    // A forged cursor: a position in year -5000.
    let micros = NaiveDate::from_ymd_opt(-5000, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("day")
        .and_utc()
        .timestamp_micros();
    let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{micros}|{}", Uuid::now_v7()));
    for (path, token) in &listings {
        let uri = format!("{path}?cursor={cursor}");
        assert_bad(&api.get(&uri, token).await, &uri, "cursor");
    }
    assert_eq!(row_counts(&pool).await, before, "a refusal wrote something");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn nul_characters_in_query_strings_are_400_and_in_paths_404(pool: PgPool) {
    let (api, a, viewer, owner) = callers(&pool).await;
    let before = (row_counts(&pool).await, admins(&pool).await);
    for (uri, token, field) in [
        ("/api/v1/audit?action=%00", &a, "action"),
        ("/api/v1/audit?actor=x%00y&format=ndjson", &a, "actor"),
        ("/api/v1/templates?q=%00", &a, "q"),
        ("/api/v1/executions?status=queued%00", &a, "status"),
        (
            "/api/v1/admin/executions?workspace_id=%00",
            &viewer,
            "workspace_id",
        ),
        ("/api/v1/admin/audit?object_id=%00", &viewer, "object_id"),
        (
            "/api/v1/admin/usage?workspace_id=%00",
            &viewer,
            "workspace_id",
        ),
    ] {
        assert_bad(&api.get(uri, token).await, uri, field);
    }
    let role = Some(json!({"role": "viewer"}));
    for (method, uri, token, body) in [
        (Method::GET, "/api/v1/templates/%00", &a, None),
        (Method::GET, "/api/v1/triggers/%00", &a, None),
        (Method::DELETE, "/api/v1/triggers/a%00", &a, None),
        (Method::GET, "/api/v1/triggers/%00/deliveries", &a, None),
        (
            Method::PUT,
            "/api/v1/admin/admins/%00",
            &owner,
            role.clone(),
        ),
        (Method::DELETE, "/api/v1/admin/admins/%00", &owner, None),
        (
            Method::DELETE,
            "/api/v1/admin/workspaces/%00/members/x",
            &owner,
            None,
        ),
        (
            Method::DELETE,
            "/api/v1/admin/workspaces/x/members/%00",
            &owner,
            None,
        ),
        (
            Method::PUT,
            "/api/v1/admin/workspaces/%00/retention",
            &owner,
            Some(json!({"plan": "free"})),
        ),
    ] {
        let reply = api.call(method.clone(), uri, Some(token), body).await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{method} {uri}: {}",
            reply.text
        );
        assert_eq!(reply.json["error"]["code"], "not_found", "{method} {uri}");
    }
    assert_eq!((row_counts(&pool).await, admins(&pool).await), before);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn admin_routes_check_workspace_and_user_ids_like_the_others(pool: PgPool) {
    let (api, _, _, owner) = callers(&pool).await;
    let before = (row_counts(&pool).await, admins(&pool).await);
    let key = Uuid::now_v7();
    let role = Some(json!({"role": "viewer"}));
    let plan = Some(json!({"plan": "free"}));
    for (method, uri, field, body) in [
        (
            Method::PUT,
            "/api/v1/admin/admins/%01".to_owned(),
            "user_id",
            role.clone(),
        ),
        (
            Method::PUT,
            "/api/v1/admin/admins/a%0Ab".to_owned(),
            "user_id",
            role.clone(),
        ),
        (
            Method::PUT,
            format!("/api/v1/admin/admins/{}", "x".repeat(129)),
            "user_id",
            role.clone(),
        ),
        (
            Method::PUT,
            "/api/v1/admin/workspaces/%01/retention".to_owned(),
            "id",
            plan.clone(),
        ),
        (
            Method::DELETE,
            "/api/v1/admin/workspaces/%01/members/x".to_owned(),
            "id",
            None,
        ),
        (
            Method::DELETE,
            "/api/v1/admin/workspaces/x/members/%01".to_owned(),
            "user_id",
            None,
        ),
        (
            Method::DELETE,
            format!("/api/v1/admin/workspaces/%01/api-keys/{key}"),
            "id",
            None,
        ),
        (
            Method::DELETE,
            "/api/v1/admin/admins/%01".to_owned(),
            "user_id",
            None,
        ),
        (
            Method::GET,
            "/api/v1/admin/workspaces/%01/usage".to_owned(),
            "id",
            None,
        ),
    ] {
        let reply = api.call(method.clone(), &uri, Some(&owner), body).await;
        reply.assert_refused(field);
        assert_eq!(error_paths(&reply.json), [field], "{method} {uri}");
    }
    assert_eq!((row_counts(&pool).await, admins(&pool).await), before);
    // 128 characters are 128 characters, however many bytes they take.
    let wide = "é".repeat(128);
    let reply = api
        .call(
            Method::PUT,
            &format!("/api/v1/admin/admins/{wide}"),
            Some(&owner),
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.json["user_id"], wide);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn unknown_api_paths_are_404_and_wrong_methods_405_in_the_error_shape(pool: PgPool) {
    let (api, a, _, _) = callers(&pool).await;
    for (method, uri, token) in [
        (Method::GET, "/api/v1/nope", Some(a.as_str())),
        (Method::GET, "/api/v1/nope", None),
        (Method::POST, "/api/v1/executions/x/y/z", Some(a.as_str())),
        (Method::GET, "/api/v2/executions", Some(a.as_str())),
    ] {
        let reply = api.call(method.clone(), uri, token, None).await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{method} {uri}: {}",
            reply.text
        );
        assert_eq!(reply.json["error"]["code"], "not_found", "{method} {uri}");
    }
    for (method, uri, allowed) in [
        (Method::DELETE, "/api/v1/executions", "GET"),
        (Method::POST, "/api/v1/usage", "GET"),
        (Method::PATCH, "/api/v1/connectors", "POST"),
        (Method::POST, "/api/v1/openapi.json", "GET"),
    ] {
        let reply = api.call(method.clone(), uri, Some(&a), None).await;
        assert_eq!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}: {}",
            reply.text
        );
        assert_eq!(reply.json["error"]["code"], "method_not_allowed");
        let allow = reply
            .headers
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(allow.contains(allowed), "{method} {uri}: Allow {allow:?}");
    }
    // Outside the API, pages keep their own answers.
    let request = Request::builder()
        .uri("/no-such-page")
        .body(Body::empty())
        .expect("request");
    let reply = api.send_request(request).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.json.is_null(), "{}", reply.text);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn an_unfit_request_id_is_replaced_by_a_generated_one_everywhere_it_goes(pool: PgPool) {
    let (api, a, _, _) = callers(&pool).await;
    let longest = "r".repeat(conveyor_api::MAX_REQUEST_ID_BYTES);
    let too_long = format!("{longest}r");
    let cases: [(&str, Vec<&[u8]>, bool); 6] = [
        ("a plain id", vec![b"req-123"], true),
        ("the longest id", vec![longest.as_bytes()], true),
        ("one byte too long", vec![too_long.as_bytes()], false),
        ("a byte beyond ASCII", vec![b"caf\xe9"], false),
        ("a space", vec![b"req 123"], false),
        ("two ids", vec![b"req-1", b"req-2"], false),
    ];
    for (n, (what, ids, kept)) in cases.into_iter().enumerate() {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/connectors")
            .header("authorization", format!("Bearer {a}"))
            .header("content-type", "application/json");
        for id in &ids {
            request = request.header(
                "x-request-id",
                axum::http::HeaderValue::from_bytes(id).expect("header value"),
            );
        }
        let mut connector = simple_connector("http://127.0.0.1:9");
        connector["name"] = json!(format!("ping-{n}"));
        let reply = api
            .send_request(
                request
                    .body(Body::from(connector.to_string()))
                    .expect("request"),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{what}: {}", reply.text);
        let echoed = reply
            .headers
            .get_all("x-request-id")
            .iter()
            .map(|v| v.to_str().expect("ASCII").to_owned())
            .collect::<Vec<_>>();
        assert_eq!(echoed.len(), 1, "{what}: {echoed:?}");
        if kept {
            assert_eq!(echoed[0].as_bytes(), ids[0], "{what}");
        } else {
            assert!(Uuid::parse_str(&echoed[0]).is_ok(), "{what}: {echoed:?}");
        }
        let stored: Option<String> = sqlx::query_scalar(
            "SELECT request_id FROM audit_log WHERE action = 'connector.create' AND object_id = $1",
        )
        .bind(reply.id())
        .fetch_one(&pool)
        .await
        .expect("audit row");
        assert_eq!(stored.as_deref(), Some(echoed[0].as_str()), "{what}");
    }
}
