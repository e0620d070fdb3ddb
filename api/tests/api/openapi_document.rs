//! The OpenAPI document covers every route, and the reference page renders.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::api;

/// Every route the issue requires, with its methods.
const REQUIRED_ROUTES: &[(&str, &[&str])] = &[
    ("/api/v1/connectors", &["get", "post"]),
    ("/api/v1/connectors/{id}", &["get", "put", "delete"]),
    ("/api/v1/connectors/{id}/execute", &["post"]),
    ("/api/v1/connectors/{id}/execute/batch", &["post"]),
    ("/api/v1/connectors/{id}/stats", &["get"]),
    ("/api/v1/connectors/{id}/executions", &["get"]),
    ("/api/v1/executions", &["get"]),
    ("/api/v1/executions/{id}", &["get"]),
    ("/api/v1/executions/{id}/cancel", &["post"]),
    ("/api/v1/executions/{id}/rerun", &["post"]),
    ("/api/v1/executions/{id}/events", &["get"]),
    ("/api/v1/credentials", &["get"]),
    ("/api/v1/credentials/{name}", &["get", "put", "delete"]),
    ("/api/v1/api-keys", &["get", "post"]),
    ("/api/v1/api-keys/{id}", &["delete"]),
    ("/api/v1/audit", &["get"]),
    ("/api/v1/admin/stats", &["get"]),
    ("/api/v1/admin/workspaces/{id}/usage", &["get"]),
    ("/api/v1/admin/executions", &["get"]),
    ("/api/v1/admin/audit", &["get"]),
];

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn the_openapi_document_covers_every_route_and_docs_render(pool: PgPool) {
    let api = api(pool);
    let doc = api
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(doc.status, StatusCode::OK, "{}", doc.text);
    assert!(
        doc.json["openapi"]
            .as_str()
            .expect("openapi version")
            .starts_with("3.")
    );
    assert!(doc.json["info"]["title"].is_string());
    assert!(
        doc.json["components"]["securitySchemes"]["bearer"].is_object(),
        "{}",
        doc.text
    );
    let paths = doc.json["paths"].as_object().expect("paths");

    for (route, methods) in REQUIRED_ROUTES {
        let item = paths
            .get(*route)
            .unwrap_or_else(|| panic!("{route} is not documented; documented: {:?}", paths.keys()));
        for m in *methods {
            let op = &item[*m];
            assert!(op.is_object(), "{m} {route} is not documented");
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{m} {route} has no responses"
            );
            assert!(op["tags"].is_array(), "{m} {route} has no tag");
        }
    }

    // Every documented operation is served, and answers 401 without a
    // token (each is under /api/v1 and authenticated), except the OAuth
    // callback, which the provider calls with a single-use state instead:
    // without a valid one it stores nothing and answers 400.
    let mut operations = 0;
    for (route, item) in paths {
        assert!(route.starts_with("/api/v1/"), "{route}");
        let concrete = route
            .replace("{id}", &Uuid::now_v7().to_string())
            .replace("{name}", "crm")
            .replace("{slug}", "some-template");
        for (m, op) in item.as_object().expect("path item") {
            let Ok(verb) = Method::from_bytes(m.to_uppercase().as_bytes()) else {
                continue;
            };
            if !op.is_object() || !matches!(m.as_str(), "get" | "post" | "put" | "delete" | "patch")
            {
                continue;
            }
            operations += 1;
            let reply = api.call(verb.clone(), &concrete, None, None).await;
            let expected = if route == "/api/v1/oauth/callback" {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::UNAUTHORIZED
            };
            assert_eq!(reply.status, expected, "{verb} {concrete}: {}", reply.text);
            // Path parameters are documented.
            for param in ["id", "name", "slug"] {
                if route.contains(&format!("{{{param}}}")) {
                    let documented = op["parameters"].as_array().is_some_and(|ps| {
                        ps.iter().any(|p| p["name"] == param && p["in"] == "path")
                    });
                    assert!(documented, "{m} {route} does not document its {param}");
                }
            }
        }
    }
    let required: usize = REQUIRED_ROUTES.iter().map(|(_, m)| m.len()).sum();
    assert!(operations >= required);

    // The human-readable reference names the routes.
    let page = api.call(Method::GET, "/docs", None, None).await;
    assert_eq!(page.status, StatusCode::OK);
    let content_type = page
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(page.text.contains("/api/v1/connectors"));
    for (route, _) in REQUIRED_ROUTES {
        assert!(page.text.contains(route), "/docs does not mention {route}");
    }

    // Ops routes answer without a token; every response carries a request id.
    for path in ["/healthz", "/readyz"] {
        let reply = api.call(Method::GET, path, None, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
        assert!(reply.headers.contains_key("x-request-id"), "{path}");
    }
    let echoed = api
        .send_request(
            Request::builder()
                .uri("/api/v1/connectors")
                .header("x-request-id", "req-123")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(echoed.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        echoed
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-123")
    );
}
