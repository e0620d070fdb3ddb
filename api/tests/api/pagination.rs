//! Pagination of executions, newest first, through `next_cursor`.

use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::support::{api, simple_connector};

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn executions_page_newest_first_through_next_cursor(pool: PgPool) {
    let api = api(pool);
    let a = api.token("ws_a", "alice");
    let connector = api
        .create_connector(&a, simple_connector("http://127.0.0.1:9"))
        .await;
    let other = api
        .create_connector(&a, simple_connector("http://127.0.0.1:9"))
        .await;
    let mut created = Vec::new();
    for n in 0..5 {
        created.push(api.execute(&a, &connector, json!({"n": n})).await);
    }
    let unrelated = api.execute(&a, &other, json!({})).await;

    let page_through = |first: String| {
        let api = &api;
        let a = &a;
        async move {
            let mut seen = Vec::new();
            let mut pages = Vec::new();
            let mut next = Some(first);
            while let Some(path) = next.take() {
                let reply = api.get(&path, a).await;
                assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
                pages.push(reply.items().len());
                seen.extend(
                    reply
                        .items()
                        .iter()
                        .map(|e| e["id"].as_str().expect("id").to_owned()),
                );
                assert!(pages.len() <= 10, "pagination does not end");
                if let Some(cursor) = reply.json["next_cursor"].as_str() {
                    let base = path.split("&cursor=").next().expect("base");
                    next = Some(format!("{base}&cursor={cursor}"));
                } else {
                    assert!(reply.json["next_cursor"].is_null(), "{}", reply.text);
                }
            }
            (seen, pages)
        }
    };

    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    let (seen, pages) = page_through(format!(
        "/api/v1/executions?limit=2&connector_id={connector}"
    ))
    .await;
    assert_eq!(pages, [2, 2, 1]);
    assert_eq!(seen, newest_first);
    let (seen, pages) =
        page_through(format!("/api/v1/connectors/{connector}/executions?limit=2")).await;
    assert_eq!(pages, [2, 2, 1]);
    assert_eq!(seen, newest_first);

    // Unfiltered: all six, newest first, each once.
    let (seen, pages) = page_through("/api/v1/executions?limit=2".to_owned()).await;
    assert_eq!(pages, [2, 2, 2]);
    let mut expected = vec![unrelated];
    expected.extend(newest_first.iter().cloned());
    assert_eq!(seen, expected);

    // A page exactly as large as what is left has no next page.
    let all = api
        .get(
            &format!("/api/v1/executions?limit=5&connector_id={connector}"),
            &a,
        )
        .await;
    assert_eq!(all.items().len(), 5);
    assert!(all.json["next_cursor"].is_null(), "{}", all.text);
}
