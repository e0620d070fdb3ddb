//! Runs the RFC 9535 JSONPath compliance test suite
//! (`tests/data/jsonpath-cts/cts.json`, BSD-2, see `LICENSE` and `NOTICE`
//! next to it) through [`conveyor_engine::extract::query_json`], the code
//! path of `conveyor-api jsonpath '<query>'`.

use conveyor_engine::extract::{Query, query_json};
use serde::Deserialize;
use serde_json::Value;

const CTS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/jsonpath-cts/cts.json"
));

/// Minimum share of passing cases, in percent.
const REQUIRED_PERCENT: usize = 98;

#[derive(Deserialize)]
struct Suite {
    tests: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    selector: String,
    #[serde(default)]
    document: Value,
    /// The one correct node list.
    result: Option<Value>,
    /// Several acceptable node lists (where member order is unspecified).
    results: Option<Vec<Value>>,
    #[serde(default)]
    invalid_selector: bool,
}

fn suite() -> Suite {
    serde_json::from_str(CTS).expect("cts.json parses")
}

/// `Ok(())` if the case passes, otherwise why not.
fn run(case: &Case) -> Result<(), String> {
    let outcome = query_json(&case.selector, &case.document);
    if case.invalid_selector {
        return match outcome {
            Err(_) => Ok(()),
            Ok(got) => Err(format!("invalid selector accepted, gave {got}")),
        };
    }
    let got = outcome.map_err(|e| format!("valid selector rejected: {e}"))?;
    let expected: Vec<&Value> = match (&case.result, &case.results) {
        (Some(one), _) => vec![one],
        (None, Some(many)) => many.iter().collect(),
        (None, None) => return Err("case has neither result nor results".to_owned()),
    };
    if expected.contains(&&got) {
        Ok(())
    } else {
        Err(format!("got {got}, expected one of {expected:?}"))
    }
}

#[test]
fn compliance_suite() {
    let suite = suite();
    let total = suite.tests.len();
    assert!(total >= 700, "suite looks truncated: {total} cases");

    let failures: Vec<String> = suite
        .tests
        .iter()
        .filter_map(|case| {
            run(case)
                .err()
                .map(|why| format!("{} `{}`: {why}", case.name, case.selector))
        })
        .collect();
    let passed = total - failures.len();
    println!("JSONPath compliance: {passed}/{total} cases passed");
    for failure in &failures {
        println!("  FAIL {failure}");
    }
    assert!(
        passed * 100 >= total * REQUIRED_PERCENT,
        "only {passed}/{total} compliance cases passed (need {REQUIRED_PERCENT}%)"
    );
}

/// A query judged singular must never select more than one node.
#[test]
fn singular_queries_select_at_most_one_node() {
    let suite = suite();
    let mut singular = 0;
    for case in suite.tests.iter().filter(|c| !c.invalid_selector) {
        let Ok(query) = Query::parse(&case.selector) else {
            continue;
        };
        if query.is_singular() {
            singular += 1;
            assert!(
                query.nodes(&case.document).len() <= 1,
                "{} `{}` judged singular but selected several nodes",
                case.name,
                case.selector
            );
        }
    }
    assert!(
        singular > 10,
        "only {singular} singular queries in the suite"
    );
}
