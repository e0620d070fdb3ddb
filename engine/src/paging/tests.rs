use chrono::Utc;
use serde_json::{Map, Value, json};

use super::*;
use crate::connector::Step;
use crate::http::{ResponseRecord, StepResult, Traffic};

fn paginate(next: Value) -> Paginate {
    serde_json::from_value(json!({"next": next, "max_pages": 5, "max_bytes": 1000}))
        .expect("paginate")
}

fn cursor() -> Paginate {
    paginate(json!({"type": "cursor", "path": "$.paging.next.after", "param": "after"}))
}

fn step() -> Step {
    serde_json::from_value(json!({
        "name": "list", "method": "GET", "url": "https://api.test/contacts",
        "query": {"limit": "2"}, "extract": {"ids": "$.results[*].id"}
    }))
    .expect("step")
}

/// A successful page of `bytes` body bytes at `url` with these extracted
/// fields (the hidden ones included) and `Link` header.
fn page(url: &str, extracted: Value, link: Option<&str>, bytes: u64) -> StepResult {
    let mut headers = Map::new();
    if let Some(link) = link {
        headers.insert("link".to_owned(), json!(link));
    }
    StepResult {
        request: json!({"method": "GET", "url": url}),
        response: Some(ResponseRecord {
            status: 200,
            headers,
            body: Value::Null,
        }),
        extracted: extracted.as_object().cloned().unwrap_or_default(),
        started_at: Utc::now(),
        duration_ms: 1,
        error: None,
        traffic: Traffic {
            sent: 0,
            received: bytes,
        },
    }
}

fn more(after: After) -> Progress {
    match after {
        After::More(p) => p,
        After::Done { summary, .. } => panic!("paging ended early: {summary}"),
    }
}

#[test]
fn the_first_cursor_page_is_the_step_as_written_and_later_pages_send_the_cursor() {
    let (first, page) = page_step(&step(), &cursor(), &Progress::default());
    assert_eq!(first.query.get("after"), None);
    assert_eq!(first.url, "https://api.test/contacts");
    assert!(first.extract.contains_key(CURSOR_FIELD));
    assert_eq!(first.paginate, None);
    assert_eq!(page, json!({"number": 1}));

    let progress = Progress {
        pages: 6,
        next: json!("c-7"),
        ..Progress::default()
    };
    let (seventh, page) = page_step(&step(), &cursor(), &progress);
    assert_eq!(seventh.query["after"], "<<page.cursor>>");
    assert_eq!(seventh.query["limit"], "2", "the step's own query stays");
    assert_eq!(page, json!({"number": 7, "cursor": "c-7"}));
}

#[test]
fn a_next_link_replaces_the_url_and_query_and_counters_start_at_start() {
    let link = paginate(json!({"type": "link"}));
    let progress = Progress {
        pages: 1,
        next: json!("https://api.test/contacts?page=2&limit=2"),
        ..Progress::default()
    };
    let (second, page) = page_step(&step(), &link, &progress);
    assert_eq!(second.url, "https://api.test/contacts?page=2&limit=2");
    assert!(second.query.is_empty());
    assert_eq!(page, json!({"number": 2}));

    let offset = paginate(
        json!({"type": "offset", "param": "offset", "start": 10, "page_size": 2, "items": "$.results"}),
    );
    let (first, page) = page_step(&step(), &offset, &Progress::default());
    assert_eq!(first.query["offset"], "<<page.counter>>");
    assert_eq!(page["counter"], 10);
    let counter = paginate(json!({"type": "page", "param": "p", "items": "$.data"}));
    let (_, page) = page_step(&step(), &counter, &Progress::default());
    assert_eq!(page["counter"], 1, "page numbers start at 1 by default");
}

#[test]
fn cursor_pages_accumulate_fields_until_the_cursor_runs_out() {
    let p = cursor();
    let url = "https://api.test/contacts";
    let mut r = page(
        url,
        json!({"ids": [1, 2], "total": 5, "none": null, "#cursor": "c-2"}),
        None,
        100,
    );
    let progress = more(after_page(&p, Progress::default(), &mut r).expect("page 1"));
    assert_eq!(progress.pages, 1);
    assert_eq!(progress.bytes, 100);
    assert_eq!(progress.next, json!("c-2"));
    assert!(
        !r.extracted.contains_key(CURSOR_FIELD),
        "the hidden cursor is not stored with the page"
    );
    assert_eq!(
        r.extracted["ids"],
        json!([1, 2]),
        "the page keeps its own fields"
    );

    let mut r = page(
        url,
        json!({"ids": [3], "total": 5, "none": null, "#cursor": 42}),
        None,
        100,
    );
    let progress = more(after_page(&p, progress, &mut r).expect("page 2"));
    assert_eq!(
        progress.next,
        json!("42"),
        "a numeric cursor is sent as text"
    );

    let mut r = page(
        url,
        json!({"ids": [4, 5], "total": 5, "none": null, "#cursor": ""}),
        None,
        100,
    );
    let After::Done { extract, summary } = after_page(&p, progress, &mut r).expect("page 3") else {
        panic!("an empty cursor ends the list");
    };
    assert_eq!(extract["ids"], json!([1, 2, 3, 4, 5]), "arrays concatenate");
    assert_eq!(extract["total"], json!([5, 5, 5]), "other values append");
    assert_eq!(extract["none"], json!([]), "null adds nothing");
    assert_eq!(summary, json!({"pages": 3, "complete": true}));
}

#[test]
fn a_cursor_that_is_neither_string_nor_number_fails_the_page() {
    for bad in [json!({"a": 1}), json!([1]), json!(true)] {
        let mut r = page("https://api.test/", json!({"#cursor": bad}), None, 1);
        let err = after_page(&cursor(), Progress::default(), &mut r).expect_err("refused");
        assert!(err.contains("$.paging.next.after"), "{err}");
    }
    for end in [Value::Null, json!(false), json!("")] {
        let mut r = page("https://api.test/", json!({"#cursor": end}), None, 1);
        let after = after_page(&cursor(), Progress::default(), &mut r).expect("ends");
        assert!(matches!(after, After::Done { .. }), "{end} ends the list");
    }
}

#[test]
fn max_pages_and_max_bytes_stop_paging_as_incomplete() {
    let p = cursor();
    let at_four = Progress {
        pages: 4,
        next: json!("c"),
        ..Progress::default()
    };
    let mut r = page("https://api.test/", json!({"#cursor": "more"}), None, 1);
    let After::Done { summary, .. } = after_page(&p, at_four, &mut r).expect("page 5") else {
        panic!("max_pages 5 allows no sixth page");
    };
    assert_eq!(summary, json!({"pages": 5, "complete": false}));

    let mut r = page("https://api.test/", json!({"#cursor": "more"}), None, 999);
    let progress = more(after_page(&p, Progress::default(), &mut r).expect("999 bytes"));
    let mut r = page("https://api.test/", json!({"#cursor": "more"}), None, 1);
    let After::Done { summary, .. } = after_page(&p, progress, &mut r).expect("1000 bytes") else {
        panic!("the byte budget of 1000 is spent");
    };
    assert_eq!(summary, json!({"pages": 2, "complete": false}));
}

#[test]
fn counters_advance_until_a_short_or_empty_page() {
    let offset = paginate(
        json!({"type": "offset", "param": "offset", "page_size": 2, "items": "$.results"}),
    );
    let mut r = page("https://api.test/", json!({"#items": [1, 2]}), None, 1);
    let progress = more(after_page(&offset, Progress::default(), &mut r).expect("full"));
    assert_eq!(progress.next, json!(2));
    let mut r = page("https://api.test/", json!({"#items": [3, 4]}), None, 1);
    let progress = more(after_page(&offset, progress, &mut r).expect("full"));
    assert_eq!(progress.next, json!(4));
    let mut r = page("https://api.test/", json!({"#items": [5]}), None, 1);
    let after = after_page(&offset, progress, &mut r).expect("short");
    assert!(
        matches!(after, After::Done { .. }),
        "a short page is the last"
    );

    let counter = paginate(json!({"type": "page", "param": "page", "items": "$.data"}));
    let mut r = page("https://api.test/", json!({"#items": [1]}), None, 1);
    let progress = more(after_page(&counter, Progress::default(), &mut r).expect("one"));
    assert_eq!(progress.next, json!(2));
    let mut r = page("https://api.test/", json!({"#items": []}), None, 1);
    let after = after_page(&counter, progress, &mut r).expect("empty");
    assert!(
        matches!(after, After::Done { .. }),
        "an empty page is the last"
    );

    let sized =
        paginate(json!({"type": "page", "param": "page", "page_size": 3, "items": "$.data"}));
    let mut r = page("https://api.test/", json!({"#items": [1, 2]}), None, 1);
    let after = after_page(&sized, Progress::default(), &mut r).expect("short");
    assert!(
        matches!(after, After::Done { .. }),
        "shorter than page_size"
    );
}

#[test]
fn next_links_are_found_resolved_and_kept_on_the_origin() {
    let cases = [
        (
            r#"<https://api.test/x?page=2>; rel="next""#,
            Some("https://api.test/x?page=2"),
        ),
        (
            r#"<https://api.test/x?page=1>; rel="prev", <https://api.test/x?page=3>; rel="next""#,
            Some("https://api.test/x?page=3"),
        ),
        (r#"</x?page=2>; rel=next"#, Some("/x?page=2")),
        (
            r#"</x?page=2>; rel="next", </x>; rel="first""#,
            Some("/x?page=2"),
        ),
        (
            r#"<https://api.test/x?p=9>; rel="last next""#,
            Some("https://api.test/x?p=9"),
        ),
        (r#"<https://api.test/x?page=1>; rel="prev""#, None),
        ("", None),
        ("<unterminated; rel=next", None),
    ];
    for (header, want) in cases {
        assert_eq!(parse_next_link(header), want, "{header}");
    }

    let link = paginate(json!({"type": "link"}));
    let mut r = page(
        "https://api.test/x?page=1",
        json!({}),
        Some(r#"</x?page=2>; rel="next""#),
        1,
    );
    let progress = more(after_page(&link, Progress::default(), &mut r).expect("relative"));
    assert_eq!(progress.next, json!("https://api.test/x?page=2"));

    let mut r = page(
        "https://api.test/x?page=1",
        json!({}),
        Some(r#"<https://evil.test/x?page=2>; rel="next""#),
        1,
    );
    let err = after_page(&link, Progress::default(), &mut r).expect_err("other origin");
    assert!(err.contains("origin"), "{err}");

    let mut r = page("https://api.test/x", json!({}), None, 1);
    let after = after_page(&link, Progress::default(), &mut r).expect("no link");
    assert!(
        matches!(after, After::Done { .. }),
        "no next link ends the list"
    );
}

#[test]
fn progress_round_trips_through_the_context() {
    let progress = Progress {
        pages: 6,
        bytes: 600,
        next: json!("c-7"),
        extract: Map::from_iter([("ids".to_owned(), json!([1, 2, 3]))]),
    };
    let context = json!({"steps": {}, "paging": {"list": progress.to_json()}});
    assert_eq!(Progress::stored(&context, "list"), progress);
    assert_eq!(Progress::stored(&context, "other"), Progress::default());
    assert_eq!(Progress::stored(&json!({}), "list"), Progress::default());
}
