//! Unit and property tests of the template renderer.
use super::*;
use proptest::prelude::*;
use serde_json::json;

fn ctx() -> Json {
    json!({
        "input": {
            "email": "ada@example.com",
            "age": 36,
            "ratio": 1.5,
            "active": true,
            "nothing": null,
            "tags": ["a", "b"],
            "user": {"name": "Ada", "langs": ["en", "fr"]},
            "id": "a/b c",
            "q": "x&y=1",
            "xml": "<b>\"Tom\" & 'Jerry'</b>",
            "crlf": "evil\r\nX-Injected: 1",
            "dotdot": "..",
            "dot": ".",
        },
        "settings": {"base_url": "https://api.hubapi.com/crm"},
        "steps": {"create": {"status": 201, "extract": {"id": 42}}},
        "credentials": {"hubspot": {"token": "s3cr3t-token"}},
        "execution": {"id": "exec-1", "attempt": 2},
    })
}

fn r() -> Renderer {
    Renderer::new()
}

#[test]
fn single_placeholder_keeps_the_json_type() {
    let cases: &[(&str, Json)] = &[
        ("<<input.age>>", json!(36)),
        ("<<input.ratio>>", json!(1.5)),
        ("<<input.active>>", json!(true)),
        ("<<input.nothing>>", json!(null)),
        ("<<input.tags>>", json!(["a", "b"])),
        (
            "<<input.user>>",
            json!({"name": "Ada", "langs": ["en", "fr"]}),
        ),
        ("<< input.age >>", json!(36)),
        ("<<- input.age ->>", json!(36)),
        ("<<input.age + 1>>", json!(37)),
        ("<<steps.create.extract.id>>", json!(42)),
        ("<<input.email>>", json!("ada@example.com")),
        ("<<[input.age, input.active]>>", json!([36, true])),
        ("<<{'n': input.age}>>", json!({"n": 36})),
        ("<<input.x | default(7)>>", json!(7)),
        ("<<input.age if false>>", json!(null)),
        ("<<\">>\">>", json!(">>")),
    ];
    for (template, want) in cases {
        let got = r().render_value(template, &ctx()).unwrap();
        assert_eq!(&got, want, "{template}");
    }
}

#[test]
fn anything_but_one_placeholder_renders_as_a_string() {
    let cases = [
        ("age <<input.age>>", "age 36"),
        ("<<input.age>><<input.age>>", "3636"),
        ("<<input.age>> and <<input.active>>", "36 and true"),
        (" <<input.age>>", " 36"),
        ("<<input.age>>\n", "36\n"),
        ("<<input.user>>!", r#"{"langs":["en","fr"],"name":"Ada"}!"#),
        ("<<input.nothing>>|", "|"),
        (
            "no placeholder {{ x }} {% y %}",
            "no placeholder {{ x }} {% y %}",
        ),
        ("<<input.age>>>>", "36>>"),
    ];
    for (template, want) in cases {
        let got = r().render_value(template, &ctx()).unwrap();
        assert_eq!(got, json!(want), "{template}");
    }
}

#[test]
fn values_render_as_text_in_their_json_form() {
    let cases = [
        ("<<input.age>>", "36"),
        ("<<input.ratio>>", "1.5"),
        ("<<input.active>>", "true"),
        ("<<input.nothing>>", ""),
        ("<<input.tags>>", r#"["a","b"]"#),
        ("<<input.user>>", r#"{"langs":["en","fr"],"name":"Ada"}"#),
        ("<<1.0>>", "1.0"),
        ("<<none>>", ""),
        ("<<input.tags | tojson>>", r#"["a","b"]"#),
        ("<<input.user.name | upper>>", "ADA"),
        ("<<input.email | lower>>", "ada@example.com"),
        ("<<input.q | urlencode>>", "x%26y%3D1"),
        ("<<{'a': 'b c', 'd': none} | urlencode>>", "a=b%20c"),
        ("<<input.tags | join(',')>>", "a,b"),
    ];
    for (template, want) in cases {
        let got = r().render_str(template, &ctx(), Dest::Text).unwrap();
        assert_eq!(got, want, "{template}");
    }
}

#[test]
fn default_filter_applies_to_missing_names() {
    let cases = [
        (r#"<<input.x | default("y")>>"#, "y"),
        (r#"<<input.email | default("y")>>"#, "ada@example.com"),
        (r#"<<input.x | d("z")>>"#, "z"),
        (r#"<<input.x | default(input.email)>>"#, "ada@example.com"),
    ];
    for (template, want) in cases {
        assert_eq!(r().render_str(template, &ctx(), Dest::Text).unwrap(), want);
        assert_eq!(r().render_value(template, &ctx()).unwrap(), json!(want));
    }
}

#[test]
fn missing_name_is_an_error_naming_the_path() {
    let cases = [
        ("<<input.emial>>", "input.emial"),
        ("hi <<input.emial>>!", "input.emial"),
        ("<<input.emial | upper>>", "input.emial"),
        ("a <<input.email>> b <<input.user.nope>>", "input.user.nope"),
        ("<<input.email ~ input.q2>>", "input.q2"),
        ("<<steps.update.extract.id>>", "steps.update"),
        ("<<nope>>", "nope"),
        ("<<nope.x | default('z')>>", "nope"),
    ];
    for (template, want) in cases {
        for result in [
            r().render_str(template, &ctx(), Dest::Text)
                .map(Json::String),
            r().render_value(template, &ctx()),
        ] {
            let err = result.unwrap_err();
            assert_eq!(
                err,
                TemplateError::Undefined { path: want.into() },
                "{template}"
            );
            assert_eq!(err.to_string(), format!("`{want}` is not defined"));
        }
    }
}

#[test]
fn url_values_are_encoded_per_component() {
    let cases = [
        (
            "https://x.test/users/<<input.id>>?q=<<input.q>>",
            "https://x.test/users/a%2Fb%20c?q=x%26y%3D1",
        ),
        (
            "<<settings.base_url>>/v1/contacts/<<input.id>>",
            "https://api.hubapi.com/crm/v1/contacts/a%2Fb%20c",
        ),
        (
            "https://x.test/<<input.q>>#<<input.id>>",
            "https://x.test/x%26y%3D1#a%2Fb%20c",
        ),
        (
            "https://x.test?e=<<input.email>>",
            "https://x.test?e=ada%40example.com",
        ),
        ("/relative/<<input.id>>", "/relative/a%2Fb%20c"),
        (
            "https://x.test/<<input.age>>/<<input.active>>",
            "https://x.test/36/true",
        ),
        ("https://x.test/a-<<input.dotdot>>", "https://x.test/a-.."),
        (
            "https://x.test/a/<<input.q>>.json",
            "https://x.test/a/x%26y%3D1.json",
        ),
        ("https://x.test/<<\"<<\">>", "https://x.test/%3C%3C"),
    ];
    for (template, want) in cases {
        assert_eq!(
            r().render_str(template, &ctx(), Dest::Url).unwrap(),
            want,
            "{template}"
        );
    }
}

#[test]
fn url_value_forming_a_dot_segment_is_rejected() {
    for template in [
        "https://x.test/users/<<input.dotdot>>/admin",
        "https://x.test/users/<<input.dotdot>>",
        "https://x.test/users/<<input.dot>><<input.dot>>?x=1",
        "https://x.test/users/<<input.dot>>",
    ] {
        assert_eq!(
            r().render_str(template, &ctx(), Dest::Url),
            Err(TemplateError::UrlDotSegment),
            "{template}"
        );
    }
    // In the query a dot is harmless.
    assert_eq!(
        r().render_str("https://x.test/?a=<<input.dotdot>>", &ctx(), Dest::Url)
            .unwrap(),
        "https://x.test/?a=.."
    );
}

#[test]
fn xml_values_are_escaped_and_literal_text_is_not() {
    let got = r()
        .render_str("<note a=\"1\"><<input.xml>></note>", &ctx(), Dest::Xml)
        .unwrap();
    assert_eq!(
        got,
        "<note a=\"1\">&lt;b&gt;&quot;Tom&quot; &amp; &apos;Jerry&apos;&lt;/b&gt;</note>"
    );
}

#[test]
fn header_with_cr_or_lf_is_rejected_without_the_value() {
    let err = r()
        .render_str("Bearer <<input.crlf>>", &ctx(), Dest::Header)
        .unwrap_err();
    assert_eq!(err, TemplateError::HeaderNewline);
    assert!(!err.to_string().contains("evil"));
    assert_eq!(
        r().render_str("a\nb", &ctx(), Dest::Header),
        Err(TemplateError::HeaderNewline)
    );
    assert_eq!(
        r().render_str("Bearer <<credentials.hubspot.token>>", &ctx(), Dest::Header)
            .unwrap(),
        "Bearer s3cr3t-token"
    );
    // In text destinations CR/LF are fine.
    assert!(r().render_str("<<input.crlf>>", &ctx(), Dest::Text).is_ok());
}

#[test]
fn literal_double_angle_is_written_as_a_string_placeholder() {
    for dest in [Dest::Text, Dest::Header, Dest::Xml] {
        let want = if dest == Dest::Xml {
            "a &lt;&lt; b"
        } else {
            "a << b"
        };
        assert_eq!(
            r().render_str(r#"a <<"<<">> b"#, &ctx(), dest).unwrap(),
            want
        );
    }
    assert_eq!(
        r().render_value(r#"<<"<<">>"#, &ctx()).unwrap(),
        json!("<<")
    );
    assert_eq!(
        r().render_value("<<'<<' ~ '>>'>>", &ctx()).unwrap(),
        json!("<<>>")
    );
    // A lone `>>` is text.
    assert_eq!(
        r().render_str("a >> b", &ctx(), Dest::Text).unwrap(),
        "a >> b"
    );
}

#[test]
fn whitespace_control_strips_around_the_placeholder() {
    let cases = [
        ("a   <<- input.age >>   b", "a36   b"),
        ("a   << input.age ->>   b", "a   36b"),
        ("<<-1>>", "1"),
        ("<< -1 >>", "-1"),
    ];
    for (template, want) in cases {
        assert_eq!(r().render_str(template, &ctx(), Dest::Text).unwrap(), want);
    }
}

#[test]
fn blocks_and_comments_are_plain_text_or_rejected() {
    let text = "{% for x in range(3) %}{{ x }}{# c #}{% endfor %}";
    assert_eq!(r().render_str(text, &ctx(), Dest::Text).unwrap(), text);
    for template in [
        "\u{FDD0} for x in range(3) \u{FDD1}",
        "a \u{FDD2} c \u{FDD3} <<1>>",
    ] {
        let err = r().render_str(template, &ctx(), Dest::Text).unwrap_err();
        assert!(matches!(err, TemplateError::Syntax { .. }), "{err}");
        assert!(r().references(template).is_err());
    }
}

#[test]
fn references_lists_dotted_paths() {
    let cases: &[(&str, &[&str])] = &[
        ("no placeholders", &[]),
        ("<<input.email>>", &["input.email"]),
        (
            "<<steps.create.extract.id>>/<<input.email>>/<<input.email>>",
            &["input.email", "steps.create.extract.id"],
        ),
        (
            "<<input.x | default(settings.y)>>",
            &["input.x", "settings.y"],
        ),
        ("<<range(3) | join(',')>>", &[]),
        ("<<input['k'].x>>", &["input"]),
        (r#"<<"<<">>"#, &[]),
        (
            "<<credentials.hubspot.token>>",
            &["credentials.hubspot.token"],
        ),
        ("<<(steps.a.body | first).x>>", &["steps.a.body"]),
    ];
    for (template, want) in cases {
        assert_eq!(r().references(template).unwrap(), *want, "{template}");
    }
}

#[test]
fn syntax_errors_are_reported_with_a_position() {
    for template in [
        "<<input.",
        "abc <<input.email",
        "<<>>",
        "<<input.email | >>",
        "x\n<<'a>>",
    ] {
        match r().references(template).unwrap_err() {
            TemplateError::Syntax { message, .. } => {
                assert!(message.contains("line"), "{message}")
            }
            other => panic!("{template}: {other:?}"),
        }
        assert!(matches!(
            r().render_str(template, &ctx(), Dest::Text),
            Err(TemplateError::Syntax { .. })
        ));
        assert!(matches!(
            r().render_value(template, &ctx()),
            Err(TemplateError::Syntax { .. })
        ));
    }
    let err = r().references("line1\nline2 <<a.").unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");
}

#[test]
fn render_errors_never_contain_values() {
    let cases = [
        "<<credentials.hubspot.token + 1>>",
        "x <<credentials.hubspot.token + 1>>",
        "<<credentials.hubspot.token | nosuchfilter>>",
        "<<credentials.hubspot.token | int>>",
        "<<credentials.hubspot.token[99]>>",
        "<<credentials.hubspot.token.nope>>",
        "<<9223372036854775807 * 9223372036854775807 * 9223372036854775807>>",
    ];
    for template in cases {
        for result in [
            r().render_str(template, &ctx(), Dest::Text)
                .map(Json::String),
            r().render_value(template, &ctx()),
        ] {
            match result {
                Ok(v) => panic!("{template} rendered {v}"),
                Err(e) => {
                    let text = format!("{e} {e:?}");
                    assert!(!text.contains("s3cr3t"), "{text}");
                }
            }
        }
    }
}

#[test]
fn unknown_filter_error_names_the_filter_and_placeholder() {
    let err = r()
        .render_str("a <<input.email | nosuch>>", &ctx(), Dest::Text)
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("nosuch"), "{text}");
    assert!(text.contains("<<input.email | nosuch>>"), "{text}");
}

#[test]
fn fuel_bounds_expensive_templates() {
    let heavy = "<<range(100000) | join(',')>>".repeat(50);
    assert_eq!(
        r().render_str(&heavy, &ctx(), Dest::Text),
        Err(TemplateError::OutOfFuel)
    );
    assert_eq!(
        r().render_value("<<('x' * 100000000) | length>>", &ctx()),
        Err(TemplateError::OutOfFuel)
    );
    // A lazily repeated list is bounded when converted to JSON or text.
    assert_eq!(
        r().render_value("<<[1] * 100000000>>", &ctx()),
        Err(TemplateError::OutOfFuel)
    );
    assert_eq!(
        r().render_str("x<<[1] * 100000000>>", &ctx(), Dest::Text),
        Err(TemplateError::OutOfFuel)
    );
    assert_eq!(
        r().render_str("x<<([1] * 100000000) | tojson>>", &ctx(), Dest::Text),
        Err(TemplateError::OutOfFuel)
    );
    let small = Renderer::with_fuel(10);
    assert_eq!(
        small.render_str(&"<<1>>".repeat(100), &ctx(), Dest::Text),
        Err(TemplateError::OutOfFuel)
    );
}

#[test]
fn render_json_renders_leaves_and_keys_keeping_types() {
    let body = json!({
        "email": "<<input.email>>",
        "age": "<<input.age>>",
        "profile": "<<input.user>>",
        "greeting": "Hi <<input.user.name>>",
        "<<input.user.name | lower>>": [1, "<<input.active>>", null, false],
        "literal": "{{ not a template }}",
    });
    let got = r().render_json(&body, &ctx()).unwrap();
    assert_eq!(
        got,
        json!({
            "email": "ada@example.com",
            "age": 36,
            "profile": {"name": "Ada", "langs": ["en", "fr"]},
            "greeting": "Hi Ada",
            "ada": [1, true, null, false],
            "literal": "{{ not a template }}",
        })
    );
}

#[test]
fn render_json_errors_carry_the_location() {
    let body = json!({"user": {"list": [1, "<<input.emial>>"]}});
    let err = r().render_json(&body, &ctx()).unwrap_err();
    assert_eq!(
        err,
        TemplateError::At {
            path: ".user.list[1]".into(),
            error: Box::new(TemplateError::Undefined {
                path: "input.emial".into()
            }),
        }
    );
    assert_eq!(
        err.innermost(),
        &TemplateError::Undefined {
            path: "input.emial".into()
        }
    );
    let dup = json!({"<<'a'>>": 1, "a": 2});
    assert!(r().render_json(&dup, &ctx()).is_err());
}

#[test]
fn json_references_report_paths_for_refs_and_errors() {
    let body = json!({
        "user": {"email": "<<input.email>>", "tags": ["<<input.tags>>", 3]},
        "content-type": "<<settings.ct>>",
        "<<input.key>>": "x",
        "bad": "<<input.",
    });
    let found = r().json_references(&body);
    // Sorted: the order follows the map's, and a dependency enabling
    // serde_json's `preserve_order` (thirtyfour, in test builds) changes it.
    let mut references = found.references.clone();
    references.sort();
    let mut expected = vec![
        ("[\"<<input.key>>\"]".to_owned(), "input.key".to_owned()),
        ("[\"content-type\"]".to_owned(), "settings.ct".to_owned()),
        (".user.email".to_owned(), "input.email".to_owned()),
        (".user.tags[0]".to_owned(), "input.tags".to_owned()),
    ];
    expected.sort();
    assert_eq!(references, expected);
    assert_eq!(found.errors.len(), 1);
    assert_eq!(found.errors[0].0, ".bad");
    assert!(matches!(found.errors[0].1, TemplateError::Syntax { .. }));
}

#[test]
fn prepared_context_renders_like_json_context() {
    let prepared = Context::new(&ctx());
    let renderer = r();
    assert_eq!(
        renderer
            .render_str_in("https://x.test/<<input.id>>", &prepared, Dest::Url)
            .unwrap(),
        "https://x.test/a%2Fb%20c"
    );
    assert_eq!(
        renderer
            .render_value_in("<<input.age>>", &prepared)
            .unwrap(),
        json!(36)
    );
    assert_eq!(
        renderer
            .render_json_in(&json!(["<<input.active>>"]), &prepared)
            .unwrap(),
        json!([true])
    );
}

#[test]
fn non_finite_numbers_are_an_error() {
    assert!(r().render_value("<<1e300 * 1e300>>", &ctx()).is_err());
    assert!(
        r().render_str("<<1e300 * 1e300>>", &ctx(), Dest::Text)
            .is_err()
    );
}

#[test]
fn safe_filter_does_not_bypass_destination_escaping() {
    assert_eq!(
        r().render_str("<x><<input.xml | safe>></x>", &ctx(), Dest::Xml)
            .unwrap(),
        "<x>&lt;b&gt;&quot;Tom&quot; &amp; &apos;Jerry&apos;&lt;/b&gt;</x>"
    );
    assert_eq!(
        r().render_str("https://x.test/<<input.id | safe>>", &ctx(), Dest::Url)
            .unwrap(),
        "https://x.test/a%2Fb%20c"
    );
}

#[test]
fn big_integers_render_as_text_but_not_as_json() {
    assert_eq!(
        r().render_str("<<2 ** 70>>", &ctx(), Dest::Text).unwrap(),
        "1180591620717411303424"
    );
    assert!(matches!(
        r().render_value("<<2 ** 70>>", &ctx()),
        Err(TemplateError::Render(_))
    ));
}

#[test]
fn prepared_context_debug_output_is_redacted() {
    let text = format!("{:?}", Context::new(&ctx()));
    assert!(!text.contains("s3cr3t"), "{text}");
}

#[test]
fn debug_function_is_not_available() {
    assert!(r().render_str("<<debug()>>", &ctx(), Dest::Text).is_err());
}

fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("<<".to_owned()),
        Just(">>".to_owned()),
        Just("{{".to_owned()),
        Just("}}".to_owned()),
        Just("{%".to_owned()),
        Just("%".to_owned()),
        Just("|".to_owned()),
        Just("(".to_owned()),
        Just(")".to_owned()),
        Just("[".to_owned()),
        Just("\"".to_owned()),
        Just("'".to_owned()),
        Just("-".to_owned()),
        Just("+".to_owned()),
        Just(".".to_owned()),
        Just("/".to_owned()),
        Just("?".to_owned()),
        Just("#".to_owned()),
        Just(":".to_owned()),
        Just(" ".to_owned()),
        Just("\n".to_owned()),
        Just("input".to_owned()),
        Just("input.email".to_owned()),
        Just("input.user".to_owned()),
        Just("missing".to_owned()),
        Just("default('x')".to_owned()),
        Just("upper".to_owned()),
        Just("tojson".to_owned()),
        Just("urlencode".to_owned()),
        Just("range(5)".to_owned()),
        Just("*".to_owned()),
        Just("~".to_owned()),
        Just("1".to_owned()),
        Just("\u{FDD0}".to_owned()),
        Just("\u{FDD2}".to_owned()),
        Just("é".to_owned()),
        "[a-z]{1,3}",
        ".{0,2}",
    ]
}

fn template() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(fragment(), 0..14).prop_map(|parts| parts.concat()),
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_templates_never_panic(t in template()) {
        let renderer = r();
        let c = ctx();
        let _ = renderer.references(&t);
        for dest in [Dest::Text, Dest::Url, Dest::Xml, Dest::Header] {
            // Never a panic; and what a header renders to is always sendable.
            if let (Dest::Header, Ok(out)) = (dest, renderer.render_str(&t, &c, dest)) {
                prop_assert!(!out.contains(['\r', '\n']), "{out:?}");
            }
        }
        let _ = renderer.render_value(&t, &c);
        let _ = renderer.render_json(&json!({ t.clone(): [t.clone()] }), &c);
        let _ = renderer.json_references(&json!({ t.clone(): [t.clone()] }));
    }

    #[test]
    fn literal_text_renders_to_itself(t in "[^<\u{FDD0}\u{FDD2}]*") {
        for dest in [Dest::Text, Dest::Url, Dest::Xml] {
            prop_assert_eq!(r().render_str(&t, &ctx(), dest).unwrap(), t.clone());
        }
        prop_assert_eq!(r().render_value(&t, &ctx()).unwrap(), json!(t));
    }

    #[test]
    fn url_components_round_trip(v in any::<String>(), w in any::<String>()) {
        let c = json!({"input": {"v": v, "w": w}});
        let url = match r().render_str("https://x.test/p/<<input.v>>/x?q=<<input.w>>#<<input.v>>", &c, Dest::Url) {
            Ok(url) => url,
            Err(TemplateError::UrlDotSegment) => {
                prop_assert!(v == "." || v == "..");
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        };
        let rest = url.strip_prefix("https://x.test/p/").unwrap();
        let (seg, rest) = rest.split_once("/x?q=").unwrap();
        let (query, frag) = rest.split_once('#').unwrap();
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8().unwrap().into_owned();
        prop_assert_eq!(decode(seg), v.clone());
        prop_assert_eq!(decode(query), w);
        prop_assert_eq!(decode(frag), v);
    }

    #[test]
    fn xml_values_cannot_inject_markup(v in any::<String>()) {
        let c = json!({"input": {"v": v}});
        let out = r().render_str("<a><<input.v>></a>", &c, Dest::Xml).unwrap();
        let inner = out.strip_prefix("<a>").and_then(|s| s.strip_suffix("</a>")).unwrap();
        prop_assert!(!inner.contains(['<', '>', '"', '\'']));
        let unescaped = inner
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&");
        prop_assert_eq!(unescaped, v);
    }
}

#[test]
fn one_context_is_one_fuel_budget_shared_by_every_render() {
    let r = Renderer::with_fuel(5_000);
    let leaf = "<<range(600) | join(',')>>";
    // One leaf fits the budget with room to spare...
    let alone = Context::new(&ctx());
    assert!(r.render_value_in(leaf, &alone).is_ok());
    assert!(r.render_str_in(leaf, &alone, Dest::Text).is_ok());
    // ...but the leaves of one context draw on one budget, not one each.
    let body: Json = (0..20)
        .map(|i| (format!("k{i}"), json!(leaf)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let shared = Context::new(&ctx());
    assert_eq!(
        r.render_json_in(&body, &shared)
            .map(|_| ())
            .map_err(|e| e.innermost().clone()),
        Err(TemplateError::OutOfFuel)
    );
    let texts = Context::new(&ctx());
    let failed = (0..20).find(|_| r.render_str_in(leaf, &texts, Dest::Text).is_err());
    assert!(
        failed.is_some_and(|n| n > 1),
        "text renders share the budget too: {failed:?}"
    );
    // A fresh context (the next step) has the whole budget again.
    assert!(r.render_value_in(leaf, &Context::new(&ctx())).is_ok());
}
