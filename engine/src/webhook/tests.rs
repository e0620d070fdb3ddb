//! Each scheme with a valid, a tampered, a stale and a missing signature;
//! the providers' published examples where they exist (Slack's and
//! GitHub's documentation, the Standard Webhooks specification's).

use std::collections::HashMap;

use chrono::TimeZone;
use serde_json::json;

use super::*;

fn at(ts: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(ts, 0).single().expect("time")
}

struct Case {
    scheme: Scheme,
    settings: Settings,
    secret: &'static str,
    headers: Vec<(&'static str, String)>,
    body: &'static [u8],
    now: DateTime<Utc>,
}

impl Case {
    fn run(&self, headers: &[(&'static str, String)], body: &[u8]) -> Result<(), Failure> {
        let map: HashMap<String, String> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        let key = key_of(self.scheme, self.secret).expect("key");
        verify(
            self.scheme,
            &self.settings,
            &key,
            &|name: &str| map.get(&name.to_ascii_lowercase()).cloned(),
            body,
            self.now,
        )
    }

    /// Valid passes; a changed body, a missing header and (when timed) a
    /// stale timestamp fail with the right reason.
    fn check_all(&self, timed: Option<(&'static str, i64)>) {
        let s = self.scheme.as_str();
        assert_eq!(self.run(&self.headers, self.body), Ok(()), "{s}: valid");
        let mut tampered = self.body.to_vec();
        tampered.push(b' ');
        assert_eq!(
            self.run(&self.headers, &tampered),
            Err(Failure::Mismatch),
            "{s}: tampered body"
        );
        for (name, _) in &self.headers {
            let fewer: Vec<_> = self
                .headers
                .iter()
                .filter(|(n, _)| n != name)
                .cloned()
                .collect();
            assert_eq!(
                self.run(&fewer, self.body),
                Err(Failure::Missing((*name).to_owned())),
                "{s}: without {name}"
            );
        }
        if let Some((name, ts)) = timed {
            let late = Case {
                now: at(ts + 301),
                ..self.clone_case()
            };
            assert_eq!(
                late.run(&self.headers, self.body),
                Err(Failure::Stale(300)),
                "{s}: stale"
            );
            let early = Case {
                now: at(ts - 301),
                ..self.clone_case()
            };
            assert_eq!(
                early.run(&self.headers, self.body),
                Err(Failure::Stale(300)),
                "{s}: future"
            );
            let within = Case {
                now: at(ts + 299),
                ..self.clone_case()
            };
            assert_eq!(within.run(&self.headers, self.body), Ok(()), "{s}: within");
            let garbled: Vec<_> = self
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        *n,
                        if *n == name {
                            "soon".to_owned()
                        } else {
                            v.clone()
                        },
                    )
                })
                .collect();
            assert!(
                self.run(&garbled, self.body).is_err(),
                "{s}: garbled timestamp"
            );
        }
    }

    fn clone_case(&self) -> Case {
        Case {
            scheme: self.scheme,
            settings: self.settings.clone(),
            secret: self.secret,
            headers: self.headers.clone(),
            body: self.body,
            now: self.now,
        }
    }
}

const SLACK_BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";

#[test]
fn slack_verifies_its_documented_example() {
    Case {
        scheme: Scheme::Slack,
        settings: Settings::default(),
        secret: "8f742231b10e8888abcd99yyyzzz85a5",
        headers: vec![
            ("X-Slack-Request-Timestamp", "1531420618".to_owned()),
            (
                "X-Slack-Signature",
                "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503".to_owned(),
            ),
        ],
        body: SLACK_BODY,
        now: at(1_531_420_618),
    }
    .check_all(Some(("X-Slack-Request-Timestamp", 1_531_420_618)));
}

#[test]
fn github_verifies_its_documented_example() {
    Case {
        scheme: Scheme::Github,
        settings: Settings::default(),
        secret: "It's a Secret to Everybody",
        headers: vec![(
            "X-Hub-Signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".to_owned(),
        )],
        body: b"Hello, World!",
        now: at(1_700_000_000),
    }
    .check_all(None);
}

#[test]
fn standard_webhooks_verifies_the_specification_example_and_signs_it() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let body: &[u8] = br#"{"test": 2432232314}"#;
    let expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    let key = key_of(Scheme::StandardWebhooks, secret).expect("key");
    assert_eq!(
        sign_standard(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body),
        expected
    );
    Case {
        scheme: Scheme::StandardWebhooks,
        settings: Settings::default(),
        secret,
        headers: vec![
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek".to_owned()),
            ("webhook-timestamp", "1614265330".to_owned()),
            // Several signatures (a rotation): any one may match.
            ("webhook-signature", format!("v1,Zm9vYmFy {expected}")),
        ],
        body,
        now: at(1_614_265_330),
    }
    .check_all(Some(("webhook-timestamp", 1_614_265_330)));
    assert!(key_of(Scheme::StandardWebhooks, "whsec_not base64!").is_err());
}

#[test]
fn stripe_verifies_any_v1_signature_of_the_timestamped_payload() {
    let secret = "whsec_stripe_test";
    let body: &[u8] = br#"{"id":"evt_1"}"#;
    // Python: hmac.new(b"whsec_stripe_test", b'1700000000.{"id":"evt_1"}', sha256)
    let sig = "3826e3088bee80f3dc0258d293c6e80aaa38f598f828286de1d92ca0fd2d1e44";
    Case {
        scheme: Scheme::Stripe,
        settings: Settings::default(),
        secret,
        headers: vec![(
            "Stripe-Signature",
            format!("t=1700000000,v1=00ff,v1={sig},v0=abcd"),
        )],
        body,
        now: at(1_700_000_000),
    }
    .check_all(None);
    let stale = Case {
        scheme: Scheme::Stripe,
        settings: Settings::default(),
        secret,
        headers: vec![("Stripe-Signature", format!("t=1700000000,v1={sig}"))],
        body,
        now: at(1_700_000_000 + 301),
    };
    assert_eq!(stale.run(&stale.headers, body), Err(Failure::Stale(300)));
    let untimed = [("Stripe-Signature", format!("v1={sig}"))];
    assert_eq!(
        stale.run(&untimed, body),
        Err(Failure::Malformed("Stripe-Signature".to_owned()))
    );
}

#[test]
fn shopify_verifies_the_base64_hmac_of_the_body() {
    Case {
        scheme: Scheme::Shopify,
        settings: Settings::default(),
        secret: "shpss_test",
        // Python: base64(hmac.new(b"shpss_test", b'{"id":1}', sha256))
        headers: vec![(
            "X-Shopify-Hmac-Sha256",
            "1GxccvotnkOedTjSm8S0m/VA3yAUKshyqT52ccNYHj4=".to_owned(),
        )],
        body: br#"{"id":1}"#,
        now: at(1_700_000_000),
    }
    .check_all(None);
}

#[test]
fn generic_hmac_honours_header_prefix_and_encoding() {
    let body: &[u8] = b"payload";
    let tag = hmac_sha256(b"k3y", &[body]);
    for (encoding, text) in [
        (Encoding::Hex, to_hex(&tag)),
        (Encoding::Hex, to_hex(&tag).to_uppercase()),
        (Encoding::Base64, STANDARD.encode(&tag)),
    ] {
        Case {
            scheme: Scheme::HmacSha256,
            settings: Settings {
                header: Some("X-Sig".to_owned()),
                encoding: Some(encoding),
                prefix: Some("sha256=".to_owned()),
                ..Settings::default()
            },
            secret: "k3y",
            headers: vec![("X-Sig", format!("sha256={text}"))],
            body,
            now: at(0),
        }
        .check_all(None);
    }
}

#[test]
fn a_shared_header_must_equal_the_secret() {
    let case = Case {
        scheme: Scheme::Header,
        settings: Settings {
            header: Some("X-Token".to_owned()),
            ..Settings::default()
        },
        secret: "s3cret",
        headers: vec![("X-Token", "s3cret".to_owned())],
        body: b"{}",
        now: at(0),
    };
    assert_eq!(case.run(&case.headers, b"anything"), Ok(()));
    for wrong in ["s3cre", "s3crett", "S3cret", ""] {
        assert_eq!(
            case.run(&[("X-Token", wrong.to_owned())], b"{}"),
            Err(Failure::Mismatch),
            "{wrong}"
        );
    }
    assert_eq!(
        case.run(&[], b"{}"),
        Err(Failure::Missing("X-Token".to_owned()))
    );
}

#[test]
fn malformed_signatures_are_refused_not_panicked_on() {
    let case = Case {
        scheme: Scheme::Github,
        settings: Settings::default(),
        secret: "x",
        headers: Vec::new(),
        body: b"",
        now: at(0),
    };
    for bad in ["sha256=zz", "sha256=abc", "md5=00", "sha256=é"] {
        assert_eq!(
            case.run(&[("X-Hub-Signature-256", bad.to_owned())], b""),
            Err(Failure::Malformed("X-Hub-Signature-256".to_owned())),
            "{bad}"
        );
    }
}

#[test]
fn delivery_ids_come_from_where_each_provider_puts_them() {
    let headers: HashMap<&str, &str> = [
        ("x-github-delivery", "gh-1"),
        ("webhook-id", "msg_1"),
        ("x-shopify-webhook-id", "shop-1"),
        ("idempotency-key", "idem-1"),
        ("x-request", "req-1"),
    ]
    .into_iter()
    .collect();
    let header = |n: &str| {
        headers
            .get(n.to_ascii_lowercase().as_str())
            .map(|v| (*v).to_owned())
    };
    let body = json!({"id": "evt_1", "event_id": "Ev1"});
    let id = |scheme, settings: &Settings| delivery_id(scheme, settings, &header, Some(&body));
    let none = Settings::default();
    assert_eq!(id(Scheme::Stripe, &none).as_deref(), Some("evt_1"));
    assert_eq!(id(Scheme::Slack, &none).as_deref(), Some("Ev1"));
    assert_eq!(id(Scheme::Github, &none).as_deref(), Some("gh-1"));
    assert_eq!(id(Scheme::Shopify, &none).as_deref(), Some("shop-1"));
    assert_eq!(
        id(Scheme::StandardWebhooks, &none).as_deref(),
        Some("msg_1")
    );
    assert_eq!(id(Scheme::None, &none).as_deref(), Some("idem-1"));
    let custom = Settings {
        id_header: Some("X-Request".to_owned()),
        ..Settings::default()
    };
    assert_eq!(id(Scheme::HmacSha256, &custom).as_deref(), Some("req-1"));
    assert_eq!(delivery_id(Scheme::Stripe, &none, &header, None), None);
}

#[test]
fn verification_settings_are_checked_field_by_field() {
    let fields = |scheme: Scheme, settings: Settings| -> Vec<&'static str> {
        check_settings(scheme, &settings)
            .into_iter()
            .map(|(field, _)| field)
            .collect()
    };
    let header = |h: &str| Settings {
        header: Some(h.to_owned()),
        ..Settings::default()
    };
    let long = "h".repeat(128);
    let too_long = "h".repeat(129);
    for (scheme, settings, want) in [
        (Scheme::None, Settings::default(), vec![]),
        (Scheme::Stripe, Settings::default(), vec![]),
        (
            Scheme::Header,
            Settings::default(),
            vec!["verification.header"],
        ),
        (
            Scheme::HmacSha256,
            Settings::default(),
            vec!["verification.header"],
        ),
        (Scheme::Header, header("X-Token_2"), vec![]),
        (Scheme::HmacSha256, header(&long), vec![]),
        (
            Scheme::HmacSha256,
            header(&too_long),
            vec!["verification.header"],
        ),
        (Scheme::Header, header(""), vec!["verification.header"]),
        (
            Scheme::Header,
            header("X Token"),
            vec!["verification.header"],
        ),
        (
            Scheme::Header,
            header("X:Token"),
            vec!["verification.header"],
        ),
        (
            Scheme::Header,
            header("X.Token"),
            vec!["verification.header"],
        ),
        // A header given to a scheme that ignores it is still checked.
        (
            Scheme::Github,
            header("bad header"),
            vec!["verification.header"],
        ),
        (Scheme::Github, header("X-Ok"), vec![]),
        // The shared secret's header is never the delivery id's.
        (
            Scheme::Header,
            Settings {
                header: Some("X-Token".to_owned()),
                id_header: Some("x-token".to_owned()),
                ..Settings::default()
            },
            vec!["verification.id_header"],
        ),
        (
            Scheme::Header,
            header("idempotency-key"),
            vec!["verification.id_header"],
        ),
        (
            Scheme::Header,
            Settings {
                header: Some("Idempotency-Key".to_owned()),
                id_header: Some("X-Id".to_owned()),
                ..Settings::default()
            },
            vec![],
        ),
        // A signature is no secret: it may be the delivery id.
        (
            Scheme::HmacSha256,
            Settings {
                header: Some("X-Sig".to_owned()),
                id_header: Some("X-Sig".to_owned()),
                ..Settings::default()
            },
            vec![],
        ),
        (
            Scheme::None,
            Settings {
                id_header: Some("X-Delivery_Id".to_owned()),
                ..Settings::default()
            },
            vec![],
        ),
        (
            Scheme::None,
            Settings {
                id_header: Some("X Delivery".to_owned()),
                ..Settings::default()
            },
            vec!["verification.id_header"],
        ),
        (
            Scheme::Slack,
            Settings {
                tolerance_secs: Some(0),
                ..Settings::default()
            },
            vec!["verification.tolerance_secs"],
        ),
        (
            Scheme::Slack,
            Settings {
                tolerance_secs: Some(1),
                ..Settings::default()
            },
            vec![],
        ),
        (
            Scheme::Slack,
            Settings {
                tolerance_secs: Some(86_400),
                ..Settings::default()
            },
            vec![],
        ),
        (
            Scheme::Slack,
            Settings {
                tolerance_secs: Some(86_401),
                ..Settings::default()
            },
            vec!["verification.tolerance_secs"],
        ),
        (
            Scheme::HmacSha256,
            Settings {
                header: Some("X-Sig".to_owned()),
                prefix: Some("p".repeat(64)),
                ..Settings::default()
            },
            vec![],
        ),
        (
            Scheme::HmacSha256,
            Settings {
                header: Some("X-Sig".to_owned()),
                prefix: Some("p".repeat(65)),
                ..Settings::default()
            },
            vec!["verification.prefix"],
        ),
    ] {
        assert_eq!(
            fields(scheme, settings.clone()),
            want,
            "{scheme:?} {settings:?}"
        );
    }
}

#[test]
fn each_scheme_has_its_stored_name_and_only_none_needs_no_secret() {
    let all = [
        (Scheme::None, "none", false),
        (Scheme::Header, "header", true),
        (Scheme::HmacSha256, "hmac_sha256", true),
        (Scheme::Stripe, "stripe", true),
        (Scheme::Shopify, "shopify", true),
        (Scheme::Slack, "slack", true),
        (Scheme::Github, "github", true),
        (Scheme::StandardWebhooks, "standard_webhooks", true),
    ];
    for (scheme, name, secret) in all {
        assert_eq!(scheme.as_str(), name);
        // The stored name is the one the API's JSON uses.
        assert_eq!(json!(scheme), json!(name));
        assert_eq!(scheme.needs_secret(), secret, "{name}");
    }
}

#[test]
fn standard_webhooks_keys_are_base64_of_at_least_16_bytes() {
    use base64::Engine as _;
    let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
    let sw = Scheme::StandardWebhooks;
    assert_eq!(key_of(sw, &format!("whsec_{}", b64(16))), Ok(vec![7u8; 16]));
    assert_eq!(key_of(sw, &b64(32)), Ok(vec![7u8; 32]));
    assert_eq!(
        key_of(sw, &format!("whsec_{}", b64(15))),
        Err("must encode at least 16 bytes".to_owned())
    );
    assert!(key_of(sw, "whsec_not base64!").is_err());
    // Other schemes use the secret's own bytes, whatever they look like.
    assert_eq!(key_of(Scheme::Github, "whsec_x"), Ok(b"whsec_x".to_vec()));
}

#[test]
fn timestamps_are_fresh_up_to_the_tolerance_and_no_further() {
    let now = at(1_700_000_000);
    for (ts, ok) in [
        ("1700000000", true),
        ("1700000300", true),
        ("1699999700", true),
        (" 1700000300 ", true),
        ("1700000301", false),
        ("1699999699", false),
    ] {
        assert_eq!(fresh(ts, "t", 300, now).is_ok(), ok, "{ts}");
    }
    assert_eq!(fresh("1700000301", "t", 300, now), Err(Failure::Stale(300)));
    assert_eq!(
        fresh("soon", "t", 300, now),
        Err(Failure::Malformed("t".to_owned()))
    );
}
