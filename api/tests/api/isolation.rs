//! Workspace isolation: another workspace's objects answer 404 for every
//! route, and nothing of them is changed.

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::{PLANTED, api, assert_no_planted, row_counts, simple_connector};

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn workspace_b_gets_404_for_everything_of_workspace_a(pool: PgPool) {
    let api = api(pool);
    let a = api.token("ws_a", "alice");
    let b = api.token("ws_b", "bob");
    let definition = simple_connector("http://127.0.0.1:9");

    let connector = api.create_connector(&a, definition.clone()).await;
    let execution = api.execute(&a, &connector, json!({})).await;
    api.put_credential(&a, "crm", json!({"token": PLANTED}))
        .await;
    let key = api
        .post("/api/v1/api-keys", &a, json!({"name": "a-ci"}))
        .await;
    assert_eq!(key.status, StatusCode::CREATED, "{}", key.text);
    let (key_id, a_key) = (key.id(), key.json["key"].as_str().expect("key").to_owned());
    let b_key = api
        .post("/api/v1/api-keys", &b, json!({"name": "b-ci"}))
        .await;
    let b_key = b_key.json["key"].as_str().expect("key").to_owned();
    let before = row_counts(&api.pool).await;
    let a_connector = api
        .get(&format!("/api/v1/connectors/{connector}"), &a)
        .await;

    let exec_body = json!({"input": {}});
    let batch_body = json!({"items": [{"input": {}}]});
    // (method, path of A's object, path of nothing, body)
    let missing = Uuid::now_v7();
    let matrix: Vec<(Method, String, String, Option<Value>)> = vec![
        (
            Method::GET,
            format!("/api/v1/connectors/{connector}"),
            format!("/api/v1/connectors/{missing}"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/connectors/{connector}?version=1"),
            format!("/api/v1/connectors/{missing}?version=1"),
            None,
        ),
        (
            Method::PUT,
            format!("/api/v1/connectors/{connector}"),
            format!("/api/v1/connectors/{missing}"),
            Some(definition.clone()),
        ),
        (
            Method::DELETE,
            format!("/api/v1/connectors/{connector}"),
            format!("/api/v1/connectors/{missing}"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/connectors/{connector}/execute"),
            format!("/api/v1/connectors/{missing}/execute"),
            Some(exec_body.clone()),
        ),
        (
            Method::POST,
            format!("/api/v1/connectors/{connector}/execute/batch"),
            format!("/api/v1/connectors/{missing}/execute/batch"),
            Some(batch_body.clone()),
        ),
        (
            Method::GET,
            format!("/api/v1/connectors/{connector}/stats"),
            format!("/api/v1/connectors/{missing}/stats"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/connectors/{connector}/executions"),
            format!("/api/v1/connectors/{missing}/executions"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/connectors/{connector}/upgrade"),
            format!("/api/v1/connectors/{missing}/upgrade"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/executions/{execution}"),
            format!("/api/v1/executions/{missing}"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/executions/{execution}/cancel"),
            format!("/api/v1/executions/{missing}/cancel"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/executions/{execution}/rerun"),
            format!("/api/v1/executions/{missing}/rerun"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/executions/{execution}/events"),
            format!("/api/v1/executions/{missing}/events"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/executions/{execution}/events?format=json"),
            format!("/api/v1/executions/{missing}/events?format=json"),
            None,
        ),
        (
            Method::GET,
            "/api/v1/credentials/crm".to_owned(),
            "/api/v1/credentials/nope".to_owned(),
            None,
        ),
        (
            Method::DELETE,
            "/api/v1/credentials/crm".to_owned(),
            "/api/v1/credentials/nope".to_owned(),
            None,
        ),
        (
            Method::DELETE,
            format!("/api/v1/api-keys/{key_id}"),
            format!("/api/v1/api-keys/{missing}"),
            None,
        ),
    ];
    for token in [b.as_str(), b_key.as_str()] {
        for (verb, theirs, nothing, body) in &matrix {
            if token == b_key && theirs.starts_with("/api/v1/api-keys") {
                continue; // keys are managed by users only (403 first)
            }
            let reply = api
                .call(verb.clone(), theirs, Some(token), body.clone())
                .await;
            assert_eq!(
                reply.status,
                StatusCode::NOT_FOUND,
                "{verb} {theirs}: {}",
                reply.text
            );
            assert_eq!(reply.json["error"]["code"], "not_found", "{verb} {theirs}");
            // Exactly as if it did not exist.
            let absent = api
                .call(verb.clone(), nothing, Some(token), body.clone())
                .await;
            assert_eq!(absent.status, StatusCode::NOT_FOUND, "{verb} {nothing}");
            assert_eq!(reply.json, absent.json, "{verb} {theirs} vs {nothing}");
        }
    }

    // B's listings never show A's objects.
    for token in [b.as_str(), b_key.as_str()] {
        for list in [
            "/api/v1/connectors".to_owned(),
            "/api/v1/executions".to_owned(),
            format!("/api/v1/executions?connector_id={connector}"),
            "/api/v1/credentials".to_owned(),
            "/api/v1/api-keys".to_owned(),
            "/api/v1/audit".to_owned(),
        ] {
            let reply = api.get(&list, token).await;
            assert_eq!(reply.status, StatusCode::OK, "{list}: {}", reply.text);
            for theirs in [
                &connector, &execution, &key_id, "ws_a", "alice", "\"crm\"", "a-ci",
            ] {
                assert!(
                    !reply.text.contains(theirs),
                    "{list} shows {theirs}: {}",
                    reply.text
                );
            }
            assert_no_planted(&list, &reply.text);
        }
    }
    for empty in [
        "/api/v1/connectors",
        "/api/v1/executions",
        "/api/v1/credentials",
        "/api/v1/audit",
    ] {
        let reply = api.get(empty, &b).await;
        let items = reply.items();
        let foreign = items
            .iter()
            .filter(|i| i["action"] != "api_key.create")
            .count();
        assert_eq!(foreign, 0, "{empty}: {}", reply.text);
    }

    // Nothing of A changed, and nothing was written.
    assert_eq!(row_counts(&api.pool).await, before);
    let after = api
        .get(&format!("/api/v1/connectors/{connector}"), &a)
        .await;
    assert_eq!(after.json, a_connector.json);
    assert!(after.json["deleted_at"].is_null());
    let still = api
        .get(&format!("/api/v1/executions/{execution}"), &a)
        .await;
    assert_eq!(still.json["status"], "queued");
    assert_eq!(
        api.get("/api/v1/credentials/crm", &a).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.get("/api/v1/connectors", &a_key).await.status,
        StatusCode::OK
    );
    assert_eq!(api.get("/api/v1/executions", &a).await.items().len(), 1);

    // A's own listings do show them.
    let listed = api.get("/api/v1/connectors", &a).await;
    assert_eq!(listed.items().len(), 1);
    assert!(listed.text.contains(&connector));
}
