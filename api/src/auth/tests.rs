//! Unit tests of token, key and admin checks: each a pure function.

use axum::http::StatusCode;
use sha2::{Digest as _, Sha256};

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn sign(claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

fn policy(issuer: Option<&str>, audience: Option<&str>, max_secs: u64) -> TokenPolicy {
    TokenPolicy {
        issuer: issuer.map(str::to_owned),
        audience: audience.map(str::to_owned),
        max_lifetime: Duration::from_secs(max_secs),
    }
}

#[test]
fn each_route_needs_its_scope() {
    let cases = [
        (Method::GET, "/api/v1/connectors", Scope::Read),
        (Method::HEAD, "/api/v1/executions/{id}", Scope::Read),
        (Method::GET, "/api/v1/executions/{id}/events", Scope::Read),
        (Method::GET, "/api/v1/templates", Scope::Read),
        (Method::GET, "/api/v1/api-keys", Scope::Manage),
        (Method::GET, "/api/v1/audit", Scope::Manage),
        (Method::POST, "/api/v1/api-keys", Scope::Manage),
        (
            Method::POST,
            "/api/v1/connectors/{id}/execute",
            Scope::Execute,
        ),
        (
            Method::POST,
            "/api/v1/connectors/{id}/execute/batch",
            Scope::Execute,
        ),
        (
            Method::POST,
            "/api/v1/executions/{id}/cancel",
            Scope::Execute,
        ),
        (
            Method::POST,
            "/api/v1/executions/{id}/rerun",
            Scope::Execute,
        ),
        (Method::GET, "/api/v1/connectors/{id}/execute", Scope::Read),
        (Method::POST, "/api/v1/connectors", Scope::Manage),
        (Method::PUT, "/api/v1/connectors/{id}", Scope::Manage),
        (Method::DELETE, "/api/v1/connectors/{id}", Scope::Manage),
        (Method::PUT, "/api/v1/credentials/{name}", Scope::Manage),
        (
            Method::POST,
            "/api/v1/templates/{slug}/install",
            Scope::Manage,
        ),
        (
            Method::DELETE,
            "/api/v1/executions/{id}/cancel",
            Scope::Manage,
        ),
        (Method::POST, "/connectors/{id}/execute", Scope::Execute),
        (Method::PATCH, "/api/v1/connectors/{id}", Scope::Manage),
    ];
    for (method, route, want) in cases {
        assert_eq!(required_scope(&method, route), want, "{method} {route}");
    }
}

#[test]
fn scope_names_round_trip_and_unknown_names_are_refused() {
    for (name, scope) in [
        ("read", Scope::Read),
        ("execute", Scope::Execute),
        ("manage", Scope::Manage),
    ] {
        assert_eq!(Scope::parse(name), Some(scope));
        assert_eq!(scope.as_str(), name);
    }
    for bad in ["", "READ", "admin", "read "] {
        assert_eq!(Scope::parse(bad), None, "{bad:?}");
    }
    assert_eq!(Scope::ALL, [Scope::Read, Scope::Execute, Scope::Manage]);
}

#[test]
fn lifetimes_over_the_maximum_or_issued_in_the_future_are_refused() {
    let now = 1_000_000;
    let max = Duration::from_secs(3600);
    let claims = |iat: Option<u64>, exp: u64| Claims {
        sub: "u".into(),
        workspace_id: "w".into(),
        exp,
        iat,
        nbf: None,
        console_link: false,
    };
    let cases = [
        (Some(now), now + 3600, Ok(())),
        (Some(now), now + 3601, Err("lifetime")),
        (Some(now - 100), now + 3500, Ok(())),
        (Some(now - 100), now + 3501, Err("lifetime")),
        (None, now + 3600, Ok(())),
        (None, now + 3601, Err("lifetime")),
        (Some(now + LEEWAY_SECS), now + LEEWAY_SECS + 10, Ok(())),
        (
            Some(now + LEEWAY_SECS + 1),
            now + LEEWAY_SECS + 10,
            Err("future"),
        ),
        (Some(now), now - 10, Ok(())),
    ];
    for (iat, exp, want) in cases {
        let got = check_lifetime(&claims(iat, exp), now, max);
        match want {
            Ok(()) => assert_eq!(got, Ok(()), "iat {iat:?} exp {exp}"),
            Err(word) => {
                let message = got.expect_err("refused");
                assert!(message.contains(word), "iat {iat:?} exp {exp}: {message}");
            }
        }
    }
}

#[test]
fn issuer_audience_and_lifetime_are_checked_as_configured() {
    let now = now_secs();
    let base = |extra: serde_json::Value| {
        let mut c =
            serde_json::json!({"sub": "u", "workspace_id": "w", "iat": now, "exp": now + 600});
        for (k, v) in extra.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        sign(&c)
    };
    let open = policy(None, None, 3600);
    let strict = policy(Some("https://idp.test"), Some("conveyor"), 3600);
    let cases: [(&TokenPolicy, serde_json::Value, Option<&str>); 11] = [
        (&open, serde_json::json!({}), None),
        (
            &open,
            serde_json::json!({"iss": "anyone", "aud": "anything"}),
            None,
        ),
        (
            &open,
            serde_json::json!({"exp": now + 7200}),
            Some("lifetime"),
        ),
        (
            &strict,
            serde_json::json!({"iss": "https://idp.test", "aud": "conveyor"}),
            None,
        ),
        (
            &strict,
            serde_json::json!({"iss": "https://idp.test", "aud": ["x", "conveyor"]}),
            None,
        ),
        (
            &strict,
            serde_json::json!({"aud": "conveyor"}),
            Some("required claim"),
        ),
        (
            &strict,
            serde_json::json!({"iss": "https://idp.test"}),
            Some("required claim"),
        ),
        (
            &strict,
            serde_json::json!({"iss": "https://evil.test", "aud": "conveyor"}),
            Some("issuer"),
        ),
        (
            &strict,
            serde_json::json!({"iss": "https://idp.test", "aud": "other"}),
            Some("audience"),
        ),
        (
            &strict,
            serde_json::json!({"iss": "https://idp.test", "aud": "conveyor", "iat": now + 120}),
            Some("future"),
        ),
        (
            &open,
            serde_json::json!({"workspace_id": ""}),
            Some("workspace_id"),
        ),
    ];
    for (i, (policy, extra, want)) in cases.into_iter().enumerate() {
        let auth = Authenticator::with_policy(SECRET, policy.clone()).expect("auth");
        let got = auth.verify(&base(extra));
        match want {
            None => {
                let claims = got.unwrap_or_else(|e| panic!("case {i}: {e}"));
                assert_eq!(
                    (claims.sub.as_str(), claims.workspace_id.as_str()),
                    ("u", "w")
                );
            }
            Some(word) => {
                let err = got.expect_err("refused");
                assert_eq!(err.status(), StatusCode::UNAUTHORIZED, "case {i}");
                assert!(err.to_string().contains(word), "case {i}: {err}");
            }
        }
    }
}

#[test]
fn sign_in_links_and_tokens_are_each_refused_where_the_other_belongs() {
    let auth = Authenticator::new(SECRET).expect("auth");
    let link = auth
        .mint_link("w", "u", Duration::from_secs(600))
        .expect("link");
    let claims = auth.verify_link(&link).expect("a link is a link");
    assert_eq!(
        (claims.sub.as_str(), claims.workspace_id.as_str()),
        ("u", "w")
    );
    assert!(claims.console_link);
    let err = auth.verify(&link).expect_err("a link is no API token");
    assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
    assert!(err.message().contains("sign-in link"), "{err}");
    let token = auth
        .mint("w", "u", Duration::from_secs(600))
        .expect("token");
    assert!(!auth.verify(&token).expect("a token").console_link);
    let err = auth.verify_link(&token).expect_err("a token is no link");
    assert!(err.message().contains("not a sign-in link"), "{err}");
    // The flag signed by hand, false, is no link either.
    let now = now_secs();
    let unflagged = sign(&serde_json::json!({"sub": "u", "workspace_id": "w",
        "iat": now, "exp": now + 60, "conveyor_console_link": false}));
    assert!(auth.verify_link(&unflagged).is_err());
    assert!(auth.verify(&unflagged).is_ok());
    // A link works for at most an hour from its issue, which it must name.
    for (ttl, ok) in [(3600, true), (3601, false)] {
        assert_eq!(
            auth.mint_link("w", "u", Duration::from_secs(ttl)).is_ok(),
            ok
        );
        let long = sign(&serde_json::json!({"sub": "u", "workspace_id": "w",
            "iat": now, "exp": now + ttl, "conveyor_console_link": true}));
        assert_eq!(auth.verify_link(&long).is_ok(), ok, "{ttl}");
    }
    assert!(auth.mint_link("w", "u", Duration::ZERO).is_err());
    let undated = sign(&serde_json::json!({"sub": "u", "workspace_id": "w",
        "exp": now + 60, "conveyor_console_link": true}));
    let err = auth.verify_link(&undated).expect_err("no iat");
    assert!(err.message().contains("iat"), "{err}");
}

#[test]
fn minted_tokens_carry_the_policy_and_respect_its_lifetime() {
    let strict = policy(Some("https://idp.test"), Some("conveyor"), 3600);
    let auth = Authenticator::with_policy(SECRET, strict).expect("auth");
    let token = auth
        .mint("w", "u", Duration::from_secs(3600))
        .expect("within the maximum");
    // The strict policy requires iss and aud: they were signed in.
    let claims = auth.verify(&token).expect("verifies");
    assert_eq!(claims.exp - claims.iat.expect("iat"), 3600);
    let err = auth
        .mint("w", "u", Duration::from_secs(3601))
        .expect_err("over the maximum");
    assert!(err.to_string().contains("3601"), "{err}");
    let open = Authenticator::new(SECRET).expect("auth");
    open.verify(&token)
        .expect("without a policy, iss and aud are not checked");
    let elsewhere =
        Authenticator::with_policy(SECRET, policy(None, Some("other"), 3600)).expect("auth");
    let err = elsewhere.verify(&token).expect_err("another audience");
    assert!(err.to_string().contains("audience"), "{err}");
}

#[test]
fn the_debug_form_never_shows_the_secret() {
    let auth = Authenticator::new(SECRET).expect("auth");
    assert_eq!(format!("{auth:?}"), "Authenticator(<secret>)");
}

#[test]
fn secrets_and_policies_are_checked_at_construction() {
    assert!(Authenticator::new(&SECRET[..31]).is_err());
    assert!(Authenticator::new(SECRET).is_ok());
    assert!(Authenticator::with_policy(SECRET, policy(None, None, 0)).is_err());
    assert_eq!(
        TokenPolicy::default(),
        policy(None, None, DEFAULT_MAX_TOKEN_LIFETIME.as_secs())
    );
    assert_eq!(DEFAULT_MAX_TOKEN_LIFETIME, Duration::from_secs(86_400));
}

#[test]
fn ids_must_be_short_and_printable() {
    let long = "x".repeat(MAX_ID_LEN + 1);
    let max = "x".repeat(MAX_ID_LEN);
    let wide = "é".repeat(MAX_ID_LEN);
    let too_wide = "é".repeat(MAX_ID_LEN + 1);
    for (id, ok) in [
        ("w", true),
        (max.as_str(), true),
        (wide.as_str(), true),
        (too_wide.as_str(), false),
        ("a\u{85}b", false),
        ("", false),
        (long.as_str(), false),
        ("a\nb", false),
    ] {
        assert_eq!(check_id("workspace", id).is_ok(), ok, "{id:?}");
    }
}

#[test]
fn api_keys_are_prefixed_random_and_stored_as_their_digest() {
    let (key, prefix, digest) = new_api_key();
    let (other, _, _) = new_api_key();
    assert_ne!(key, other);
    assert!(key.starts_with(API_KEY_PREFIX));
    assert_eq!(key.len(), API_KEY_PREFIX.len() + 43);
    assert_eq!(prefix, key[..API_KEY_PREFIX.len() + 6]);
    assert_eq!(digest, Sha256::digest(key.as_bytes()).to_vec());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Any text is refused with 401, never a panic.
    #[test]
    fn arbitrary_tokens_are_refused_without_panicking(token in proptest::prelude::any::<String>()) {
        let auth = Authenticator::new(SECRET).expect("auth");
        let err = auth.verify(&token).expect_err("garbage is refused");
        proptest::prop_assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
    }

    /// A valid token with one byte changed is refused, or (when the
    /// change does not alter what it decodes to) yields the same claims.
    #[test]
    fn a_tampered_token_never_yields_other_claims(at in 0usize..400, byte in 0x21u8..0x7f) {
        let auth = Authenticator::new(SECRET).expect("auth");
        let token = auth.mint("w", "u", Duration::from_secs(60)).expect("mint");
        let mut bytes = token.clone().into_bytes();
        let at = at % bytes.len();
        bytes[at] = byte;
        let tampered = String::from_utf8(bytes).expect("ascii");
        match auth.verify(&tampered) {
            Ok(claims) => {
                proptest::prop_assert_eq!((claims.sub.as_str(), claims.workspace_id.as_str()), ("u", "w"));
            }
            Err(err) => proptest::prop_assert_eq!(err.status(), StatusCode::UNAUTHORIZED),
        }
    }
}

/// `(status, message)` of a refusal, or `None` when allowed.
fn refusal(result: Result<(), ApiError>) -> Option<(u16, String)> {
    result
        .err()
        .map(|e| (e.status().as_u16(), e.message().to_owned()))
}

/// A raw `Authorization` header (or none) and the token or the 401
/// message expected of it.
type BearerCase = (Option<&'static [u8]>, Result<&'static str, &'static str>);

#[test]
fn only_a_bearer_header_with_a_token_yields_it() {
    let malformed = "the Authorization header must be `Bearer <token>`";
    let cases: [BearerCase; 10] = [
        (Some(b"Bearer abc"), Ok("abc")),
        (Some(b"bearer abc"), Ok("abc")),
        (Some(b"  BEARER   abc  "), Ok("abc")),
        (Some(b"Bearer cvk_x y"), Ok("cvk_x y")),
        (None, Err("missing Authorization: Bearer <token>")),
        (Some(b"Basic abc"), Err(malformed)),
        (Some(b"Bearer"), Err(malformed)),
        (Some(b"Bearer    "), Err(malformed)),
        (Some(b"Bearerabc"), Err(malformed)),
        (Some(b"Bearer \xff\xfe"), Err(malformed)),
    ];
    for (raw, want) in cases {
        let value = raw.map(|r| HeaderValue::from_bytes(r).expect("header"));
        let got = bearer(value.as_ref()).map_err(|e| {
            assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
            e.message().to_owned()
        });
        assert_eq!(got, want.map_err(str::to_owned), "{raw:?}");
    }
}

#[test]
fn a_key_may_only_do_what_its_scopes_allow() {
    let scopes = |names: &[&str]| names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let lacks = |scope: &str| {
        Some((
            403,
            format!("this API key lacks the `{scope}` scope this request needs"),
        ))
    };
    let execute = "/api/v1/connectors/{id}/execute";
    let cases = [
        (scopes(&["read"]), Method::GET, "/api/v1/connectors", None),
        (scopes(&["read"]), Method::POST, execute, lacks("execute")),
        (scopes(&["execute"]), Method::POST, execute, None),
        (
            scopes(&["execute"]),
            Method::GET,
            "/api/v1/connectors",
            lacks("read"),
        ),
        (
            scopes(&["read", "execute"]),
            Method::PUT,
            "/api/v1/credentials/{name}",
            lacks("manage"),
        ),
        (
            scopes(&["manage"]),
            Method::PUT,
            "/api/v1/credentials/{name}",
            None,
        ),
        (
            scopes(&[]),
            Method::GET,
            "/api/v1/connectors",
            lacks("read"),
        ),
        (
            scopes(&["READ"]),
            Method::GET,
            "/api/v1/connectors",
            lacks("read"),
        ),
    ];
    for (held, method, route, want) in cases {
        assert_eq!(
            refusal(key_allows(&held, &method, route)),
            want,
            "{held:?} {method} {route}"
        );
    }
}

#[test]
fn admin_routes_need_a_user_whose_role_covers_the_route() {
    use AdminRole::{Operator, Owner, Viewer};
    let not_admin = Some((403, "this route is for admins".to_owned()));
    let key = Some((
        403,
        "admin routes need a user token, not an API key".to_owned(),
    ));
    let too_low = |needed: &str, role: &str| {
        Some((
            403,
            format!("this route needs the admin role `{needed}` or above; yours is `{role}`"),
        ))
    };
    let cases = [
        (true, Some(Viewer), Viewer, None),
        (true, Some(Owner), Operator, None),
        (true, Some(Operator), Operator, None),
        (true, Some(Viewer), Operator, too_low("operator", "viewer")),
        (true, Some(Operator), Owner, too_low("owner", "operator")),
        (true, None, Viewer, not_admin),
        (false, Some(Owner), Viewer, key.clone()),
        (false, None, Viewer, key),
    ];
    for (is_user, role, needed, want) in cases {
        assert_eq!(
            refusal(admin_verdict(is_user, role, needed)),
            want,
            "{is_user} {role:?} {needed:?}"
        );
    }
}

#[test]
fn each_refused_token_says_why() {
    let now = now_secs();
    let claims = |extra: serde_json::Value| {
        let mut c =
            serde_json::json!({"sub": "u", "workspace_id": "w", "iat": now, "exp": now + 600});
        for (k, v) in extra.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        c
    };
    let other_key = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(serde_json::json!({})),
        &EncodingKey::from_secret(b"another secret of at least 32 bytes!"),
    )
    .expect("sign");
    let hs384 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS384),
        &claims(serde_json::json!({})),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign");
    let cases = [
        (
            sign(&claims(
                serde_json::json!({"iat": now - 700, "exp": now - 100}),
            )),
            "the token has expired",
        ),
        (
            sign(&claims(serde_json::json!({"nbf": now + 300}))),
            "the token is not valid yet (nbf)",
        ),
        (other_key, "the token signature is invalid"),
        (hs384, "only HS256 tokens are accepted"),
        ("not.a.token".to_owned(), "the token is malformed"),
    ];
    let auth = Authenticator::new(SECRET).expect("auth");
    for (token, why) in cases {
        let err = auth.verify(&token).expect_err(why);
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED, "{why}");
        assert!(err.to_string().contains(why), "want {why:?}, got {err}");
    }
}
