//! Authentication: every malformed, forged, expired or wrongly signed token
//! is a 401 (a just-expired one passes within the leeway); an API key works
//! until revoked; a caller who is not an admin gets 403 on admin routes.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine as _;
use conveyor_api::auth::{Authenticator, Claims};
use conveyor_engine::store::access;
use conveyor_tests::api::JWT_SECRET;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::api;

/// Seconds since the epoch.
fn now_secs() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).expect("after 1970")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sign(header: &Header, claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(header, claims, &EncodingKey::from_secret(secret.as_bytes()))
        .expect("sign")
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn bad_tokens_are_401(pool: PgPool) {
    let api = api(pool);
    let good = api.token("ws_a", "alice");
    assert_eq!(
        api.get("/api/v1/connectors", &good).await.status,
        StatusCode::OK
    );

    let now = now_secs();
    let claims = |exp: u64| json!({"sub": "alice", "workspace_id": "ws_a", "exp": exp, "iat": now});
    let hs256 = Header::new(Algorithm::HS256);
    let other_secret = Authenticator::new("a-different-secret-of-at-least-32-bytes!")
        .expect("secret")
        .mint("ws_a", "alice", Duration::from_secs(600))
        .expect("token");
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims(now + 600).to_string().as_bytes())
    );
    let mut tampered = good.clone();
    let end = tampered.len();
    tampered.replace_range(end - 4.., "AAAA");
    let swapped_claims = {
        // A valid header and signature over other claims.
        let parts: Vec<&str> = good.split('.').collect();
        let forged = b64(
            json!({"sub": "alice", "workspace_id": "ws_b", "exp": now + 600})
                .to_string()
                .as_bytes(),
        );
        format!("{}.{forged}.{}", parts[0], parts[2])
    };

    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing header", None),
        (
            "basic scheme",
            Some("Basic YWxpY2U6cGFzc3dvcmQ=".to_owned()),
        ),
        ("bearer without token", Some("Bearer ".to_owned())),
        ("token without scheme", Some(good.clone())),
        ("malformed token", Some("Bearer not-a-jwt".to_owned())),
        ("three garbage parts", Some("Bearer a.b.c".to_owned())),
        ("wrong signature", Some(format!("Bearer {other_secret}"))),
        ("tampered signature", Some(format!("Bearer {tampered}"))),
        (
            "claims swapped under a valid signature",
            Some(format!("Bearer {swapped_claims}")),
        ),
        (
            "expired an hour ago",
            Some(format!(
                "Bearer {}",
                sign(&hs256, &claims(now - 3600), JWT_SECRET)
            )),
        ),
        (
            "expired beyond the leeway",
            Some(format!(
                "Bearer {}",
                sign(&hs256, &claims(now - 120), JWT_SECRET)
            )),
        ),
        (
            "not valid before an hour from now",
            Some(format!(
                "Bearer {}",
                sign(
                    &hs256,
                    &json!({"sub": "alice", "workspace_id": "ws_a", "exp": now + 7200, "nbf": now + 3600}),
                    JWT_SECRET
                )
            )),
        ),
        ("alg none", Some(format!("Bearer {unsigned}"))),
        (
            "HS512",
            Some(format!(
                "Bearer {}",
                sign(
                    &Header::new(Algorithm::HS512),
                    &claims(now + 600),
                    JWT_SECRET
                )
            )),
        ),
        (
            "HS384",
            Some(format!(
                "Bearer {}",
                sign(
                    &Header::new(Algorithm::HS384),
                    &claims(now + 600),
                    JWT_SECRET
                )
            )),
        ),
        (
            "no exp",
            Some(format!(
                "Bearer {}",
                sign(
                    &hs256,
                    &json!({"sub": "alice", "workspace_id": "ws_a"}),
                    JWT_SECRET
                )
            )),
        ),
        (
            "no workspace",
            Some(format!(
                "Bearer {}",
                sign(
                    &hs256,
                    &json!({"sub": "alice", "exp": now + 600}),
                    JWT_SECRET
                )
            )),
        ),
        (
            "no subject",
            Some(format!(
                "Bearer {}",
                sign(
                    &hs256,
                    &json!({"workspace_id": "ws_a", "exp": now + 600}),
                    JWT_SECRET
                )
            )),
        ),
        (
            "empty workspace",
            Some(format!(
                "Bearer {}",
                sign(
                    &hs256,
                    &json!({"sub": "alice", "workspace_id": "", "exp": now + 600}),
                    JWT_SECRET
                )
            )),
        ),
        (
            "unknown API key",
            Some("Bearer cvk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned()),
        ),
    ];
    for (why, authorization) in &cases {
        for path in [
            "/api/v1/connectors",
            "/api/v1/executions",
            "/api/v1/admin/stats",
        ] {
            let mut request = Request::builder().uri(path);
            if let Some(value) = authorization {
                request = request.header("authorization", value);
            }
            let reply = api
                .send_request(request.body(Body::empty()).expect("request"))
                .await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{why} on {path}: {}",
                reply.text
            );
            assert_eq!(
                reply.json["error"]["code"], "unauthorized",
                "{why}: {}",
                reply.text
            );
            assert!(reply.json["error"]["message"].is_string(), "{why}");
        }
    }

    // Within the documented leeway a just-expired token still works.
    let leeway = sign(&hs256, &claims(now - 5), JWT_SECRET);
    assert_eq!(
        api.get("/api/v1/connectors", &leeway).await.status,
        StatusCode::OK
    );
    // The same claims through the claims type the CLI signs.
    let typed = jsonwebtoken::encode(
        &hs256,
        &Claims {
            sub: "alice".into(),
            workspace_id: "ws_a".into(),
            exp: now + 60,
            iat: None,
            nbf: None,
            console_link: false,
        },
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("sign");
    assert_eq!(
        api.get("/api/v1/connectors", &typed).await.status,
        StatusCode::OK
    );
    // A console sign-in link is no API token.
    let link = api
        .get("/api/v1/connectors", &api.link_token("ws_a", "alice"))
        .await;
    assert_eq!(link.status, StatusCode::UNAUTHORIZED, "{}", link.text);
    assert!(link.text.contains("sign-in link"), "{}", link.text);

    // An API key works until revoked, then is 401.
    let created = api
        .post("/api/v1/api-keys", &good, json!({"name": "ci"}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let key = created.json["key"].as_str().expect("key").to_owned();
    assert_eq!(
        api.get("/api/v1/connectors", &key).await.status,
        StatusCode::OK
    );
    let revoked = api
        .call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{}", created.id()),
            Some(&good),
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT, "{}", revoked.text);
    let refused = api.get("/api/v1/connectors", &key).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.text);
    assert_eq!(refused.json["error"]["code"], "unauthorized");
    assert!(!refused.text.contains(&key));

    // Authenticated but not an admin: 403 on every admin route.
    access::add_admin(&api.pool, "root").await.expect("admin");
    let root = api.token("ws_ops", "root");
    for path in [
        "/api/v1/admin/stats",
        "/api/v1/admin/executions",
        "/api/v1/admin/audit",
        "/api/v1/admin/workspaces/ws_a/usage",
    ] {
        let reply = api.get(path, &good).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{path}: {}",
            reply.text
        );
        assert_eq!(reply.json["error"]["code"], "forbidden");
        assert_eq!(api.get(path, &root).await.status, StatusCode::OK, "{path}");
    }
}
