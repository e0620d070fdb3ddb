//! Credentials: names, kinds, field names, key ids and last use, and for
//! OAuth ones their status, token expiry and last refresh with a
//! Connect/Reconnect button (it starts the flow and sends the browser on
//! to the provider); a form per kind to create or replace one, re-shown
//! with the API's problems and the names typed (never the values); delete.
//! Secret values go from the form to the JSON API's handler and are never
//! rendered back; tokens never reach a page.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::{Form, Json};
use conveyor_engine::oauth::CredentialKind;
use conveyor_engine::store::credentials;
use serde_json::{Map, Value, json};

use super::session::Session;
use super::{
    Fields, Layout, Nav, PageResult, Problem, handler_body, problems, render, see_other, when,
    when_opt,
};
use crate::AppState;
use crate::extract::{ApiJson, ApiPath};
use crate::routes::credentials::{delete_credential, put_credential, start_oauth};

/// One credential's metadata.
#[derive(Debug)]
struct Row {
    name: String,
    kind: String,
    /// `connected`, `expiring`, `needs_reconnect` or `error`.
    status: String,
    /// Why it needs attention, never a token.
    status_reason: Option<String>,
    expires: String,
    refreshed: String,
    /// The label of the button that starts the OAuth flow, for an
    /// authorization code credential.
    connect: Option<&'static str>,
    fields: String,
    key_id: String,
    updated: String,
    last_used: String,
}

impl Row {
    fn new(c: credentials::CredentialMeta) -> Self {
        let code = c.kind == CredentialKind::AuthorizationCode.as_str();
        Row {
            kind: if c.kind == CredentialKind::Static.as_str() {
                c.auth_kind
            } else {
                c.kind
            },
            status: c.status,
            status_reason: c.status_reason,
            expires: when_opt(c.access_token_expires_at.as_ref()),
            refreshed: when_opt(c.last_refreshed_at.as_ref()),
            connect: code.then_some(if c.last_refreshed_at.is_some() {
                "Reconnect"
            } else {
                "Connect"
            }),
            fields: c.fields.join(", "),
            key_id: c.key_id,
            updated: when(&c.updated_at),
            last_used: when_opt(c.last_used_at.as_ref()),
            name: c.name,
        }
    }
}

/// A kind of credential and the secret fields its form asks for.
#[derive(Debug)]
struct Kind {
    id: &'static str,
    label: &'static str,
    fields: &'static [&'static str],
}

const KINDS: [Kind; 3] = [
    Kind {
        id: "bearer",
        label: "Bearer token",
        fields: &["token"],
    },
    Kind {
        id: "api_key",
        label: "API key",
        fields: &["key"],
    },
    Kind {
        id: "basic",
        label: "Basic auth",
        fields: &["username", "password"],
    },
];

/// Free-form field pairs the custom form offers.
const CUSTOM_FIELDS: [usize; 3] = [1, 2, 3];

/// The `form` field of the custom form (the others send their kind's id).
const CUSTOM: &str = "custom";

/// A create form that was refused: which one, and the names typed into it
/// (never a secret value), to show it again as it was sent.
#[derive(Debug)]
struct Submitted {
    /// A kind's id, or [`CUSTOM`].
    form: &'static str,
    label: &'static str,
    name: String,
    /// The custom form's field names, in [`CUSTOM_FIELDS`] order.
    custom_names: Vec<String>,
}

impl Submitted {
    /// The refused form of `fields`; `None` when it names no known form.
    fn of(fields: &Fields) -> Option<Self> {
        let (form, label) = match fields.get("form")? {
            CUSTOM => (CUSTOM, "Custom fields"),
            id => KINDS.iter().find(|k| k.id == id).map(|k| (k.id, k.label))?,
        };
        Some(Self {
            form,
            label,
            name: fields.get("name").unwrap_or_default().to_owned(),
            custom_names: CUSTOM_FIELDS
                .iter()
                .map(|n| {
                    fields
                        .get(&format!("custom.{n}.name"))
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect(),
        })
    }
}

#[derive(Template)]
#[template(path = "console/credentials.html")]
struct ListPage {
    layout: Layout,
    rows: Vec<Row>,
    kinds: &'static [Kind],
    custom_fields: &'static [usize],
    problems: Vec<Problem>,
    /// The form the problems belong to; `None`: the page's.
    submitted: Option<Submitted>,
}

impl ListPage {
    /// Whether the problems belong to form `form`.
    fn refused(&self, form: &str) -> bool {
        self.submitted.as_ref().is_some_and(|s| s.form == form)
    }

    /// The name form `form` was sent with (empty for the others).
    fn name_in(&self, form: &str) -> &str {
        match &self.submitted {
            Some(s) if s.form == form => &s.name,
            _ => "",
        }
    }

    /// The field name pair `n` of the custom form was sent with.
    fn custom_name(&self, n: &usize) -> &str {
        match &self.submitted {
            Some(s) if s.form == CUSTOM => s
                .custom_names
                .get(n.saturating_sub(1))
                .map_or("", String::as_str),
            _ => "",
        }
    }
}

async fn show(
    state: &AppState,
    session: &Session,
    status: StatusCode,
    problems: Vec<Problem>,
    submitted: Option<Submitted>,
) -> PageResult {
    let rows = credentials::list(&state.pool, &session.caller.workspace_id)
        .await?
        .into_iter()
        .map(Row::new)
        .collect();
    let mut response = render(&ListPage {
        layout: session.layout("Credentials", Nav::Credentials),
        rows,
        kinds: &KINDS,
        custom_fields: &CUSTOM_FIELDS,
        problems,
        submitted,
    })?;
    *response.status_mut() = status;
    Ok(response)
}

/// `GET /console/credentials`.
pub(super) async fn list(State(state): State<AppState>, session: Session) -> PageResult {
    show(&state, &session, StatusCode::OK, Vec::new(), None).await
}

/// The secret fields of a submitted form: `data.<field>` inputs, and the
/// custom form's `custom.<n>.name` / `custom.<n>.value` pairs.
fn data(form: &Fields) -> Map<String, Value> {
    let mut data: Map<String, Value> = form
        .with_prefix("data.")
        .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
        .collect();
    for n in CUSTOM_FIELDS {
        if let Some(name) = form.text(&format!("custom.{n}.name")) {
            let value = form.get(&format!("custom.{n}.value")).unwrap_or_default();
            data.insert(name.to_owned(), Value::String(value.to_owned()));
        }
    }
    data
}

/// `POST /console/credentials`: create or replace a credential.
pub(super) async fn put(
    State(state): State<AppState>,
    session: Session,
    Form(form): Form<Fields>,
) -> PageResult {
    session.check(&form)?;
    let name = form.text("name").unwrap_or_default().to_owned();
    let stored = match handler_body(&json!({"data": data(&form)})) {
        Ok(body) => put_credential(
            State(state.clone()),
            session.caller.clone(),
            ApiPath(name.clone()),
            ApiJson(body),
        )
        .await
        .map(drop),
        Err(e) => Err(e),
    };
    match stored {
        Ok(()) => see_other("/console/credentials"),
        Err(e) if e.status().is_client_error() => {
            show(
                &state,
                &session,
                e.status(),
                problems(&e),
                Submitted::of(&form),
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

/// The page that sends the browser on to the provider's authorization URL.
#[derive(Template)]
#[template(path = "console/connect.html")]
struct ConnectPage {
    layout: Layout,
    name: String,
    url: String,
    /// The provider's host, as the page names it.
    host: String,
}

/// `POST /console/credentials/{name}/connect`: starts the OAuth flow of an
/// authorization code credential and sends the browser to the provider.
///
/// Not with a redirect: the console's CSP has `form-action 'self'`, which
/// browsers also apply to the redirects that answer a form, so a 303 to
/// the provider would be blocked. A page that links to the authorization
/// URL and continues there by `<meta http-equiv="refresh">` (allowed by
/// that CSP, unlike inline script) is a navigation, not a form's.
pub(super) async fn connect(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<Fields>,
) -> PageResult {
    session.check(&form)?;
    let started = start_oauth(
        State(state.clone()),
        session.caller.clone(),
        ApiPath(name.clone()),
    )
    .await;
    match started {
        Ok(Json(started)) => {
            let url = started.authorization_url;
            let host = url
                .parse::<Uri>()
                .ok()
                .and_then(|u| u.host().map(str::to_owned))
                .unwrap_or_else(|| url.clone());
            render(&ConnectPage {
                layout: session.layout(format!("Connecting {name}"), Nav::Credentials),
                name,
                url,
                host,
            })
        }
        Err(e) if e.status().is_client_error() => {
            show(&state, &session, e.status(), problems(&e), None).await
        }
        Err(e) => Err(e.into()),
    }
}

/// `POST /console/credentials/{name}/delete`: answered with a redirect, as
/// every other form, so reloading the page does not send it again.
pub(super) async fn delete(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<Fields>,
) -> PageResult {
    session.check(&form)?;
    delete_credential(State(state), session.caller.clone(), ApiPath(name)).await?;
    see_other("/console/credentials")
}
