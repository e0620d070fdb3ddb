//! Secrets and their redaction: the decrypted [`Credentials`] a step may
//! use, and the redaction of everything a step result holds: every
//! credential value, in every form a template or the HTTP client can give
//! it, becomes [`REDACTED`]; auth headers are redacted whole.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{HeaderMap, HeaderName};
use serde_json::{Map, Value};

/// What replaces a secret in anything stored or shown.
pub const REDACTED: &str = "[REDACTED]";

/// Decrypted credentials available to one step: name → field → value.
pub type Credentials = BTreeMap<String, BTreeMap<String, String>>;

/// The entry of [`Credentials`] that holds the text forms of the run's
/// secret extracts ([`secret_texts`]), so that every later request and
/// response is redacted of them like of a credential. It is no valid
/// credential name, and templates never see it as one.
pub const SECRET_EXTRACTS: &str = "(secret extracts)";

/// The text forms redaction looks for in a secret extracted value: its
/// strings, and its numbers in their JSON form, at any depth (booleans and
/// null are no secrets).
pub fn secret_texts(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(items) => items.iter().for_each(|i| secret_texts(i, out)),
        Value::Object(map) => map.values().for_each(|v| secret_texts(v, out)),
        Value::Null | Value::Bool(_) => {}
    }
}

/// Replaces credential values (and their URL-encoded forms) with
/// [`REDACTED`].
pub(crate) struct Redactor {
    /// Every form of every secret.
    needles: Vec<String>,
}

impl Redactor {
    pub(crate) fn new(credentials: &Credentials) -> Self {
        let mut redactor = Self::of_texts(credentials.values().flat_map(BTreeMap::values));
        // The `Authorization: Basic` value a provider may echo back, also
        // for a key sent as the user name with no password.
        for fields in credentials.values() {
            if let (Some(user), Some(pass)) = (fields.get("username"), fields.get("password"))
                && !(user.is_empty() && pass.is_empty())
            {
                redactor
                    .needles
                    .push(BASE64.encode(format!("{user}:{pass}")));
            }
        }
        redactor.needles.sort_unstable();
        redactor.needles.dedup();
        redactor
    }

    /// A redactor of `step`'s secret extracts in `extracted`, if it has any
    /// with a value.
    pub(crate) fn of_secret_extracts(
        step: &crate::connector::Step,
        extracted: &Map<String, Value>,
    ) -> Option<Self> {
        let mut texts = Vec::new();
        for (field, spec) in &step.extract {
            if spec.secret
                && let Some(value) = extracted.get(field)
            {
                secret_texts(value, &mut texts);
            }
        }
        (!texts.is_empty()).then(|| Self::of_texts(&texts))
    }

    /// A redactor of the given secret texts.
    pub(crate) fn of_texts<'a>(texts: impl IntoIterator<Item = &'a String>) -> Self {
        let mut needles: Vec<String> = Vec::new();
        for value in texts {
            if value.is_empty() {
                continue;
            }
            // Every form a template or the client can give it: raw, as a
            // URL component (ours and a strict one), form-encoded, and
            // XML-escaped.
            needles.push(value.clone());
            needles.push(crate::template::encode_component(value));
            needles.push(utf8_percent_encode(value, NON_ALPHANUMERIC).to_string());
            needles.push(url::form_urlencoded::byte_serialize(value.as_bytes()).collect());
            needles.push(crate::template::escape_xml(value));
            // As a JSON string holds it (quotes, backslashes and controls
            // escaped), which a body too large to parse is stored as, and
            // with `/` escaped too, as PHP's `json_encode` writes it.
            let json = Value::String(value.clone()).to_string();
            let json = &json[1..json.len() - 1];
            needles.push(json.replace('/', "\\/"));
            needles.push(json.to_owned());
            // As the HTTP client sends a URL that is wholly a secret:
            // parsed, so with its host in lower case, its default port
            // dropped and blanks around it trimmed; with and without the
            // `/` the parser adds to an empty path.
            if let Ok(url) = url::Url::parse(value) {
                let url = url.to_string();
                if let Some(bare) = url.strip_suffix('/')
                    && !value.ends_with('/')
                {
                    needles.push(bare.to_owned());
                }
                needles.push(url);
            }
        }
        needles.sort_unstable();
        needles.dedup();
        Self { needles }
    }

    /// `s` with every stretch that is a secret, or that secrets overlapping
    /// or touching each other cover, replaced by one [`REDACTED`]. The
    /// stretches are found in `s` as given, so a secret that overlaps
    /// another is replaced whole, and a secret inside the marker's own text
    /// leaves the marker alone.
    ///
    /// Each form is looked for with `str::find`, as many as a step has (up
    /// to nine per credential field, one for a token of letters and
    /// digits): an Aho-Corasick automaton finds them all in one pass, but
    /// building one per step cost 15 to 50 µs against the searches' 1 µs
    /// for a URL and a 2 KB body.
    pub(crate) fn text(&self, s: &str) -> String {
        let mut found: Vec<(usize, usize)> = Vec::new();
        for needle in &self.needles {
            // Every occurrence, overlapping ones too: the next search
            // starts one character into the last match.
            let Some(first) = needle.chars().next() else {
                continue;
            };
            let mut from = 0;
            while let Some(at) = s[from..].find(needle.as_str()) {
                let start = from + at;
                found.push((start, start + needle.len()));
                from = start + first.len_utf8();
            }
        }
        found.sort_unstable();
        let mut found = found.into_iter();
        let Some((mut from, mut to)) = found.next() else {
            return s.to_owned();
        };
        // `from..to` is the stretch being gathered; the text before
        // `copied` is written.
        let mut out = String::with_capacity(s.len());
        let mut copied = 0;
        for (start, end) in found {
            if start <= to {
                to = to.max(end);
                continue;
            }
            out.push_str(&s[copied..from]);
            out.push_str(REDACTED);
            copied = to;
            (from, to) = (start, end);
        }
        out.push_str(&s[copied..from]);
        out.push_str(REDACTED);
        out.push_str(&s[to..]);
        out
    }

    /// The most bytes of `s` before `at` that halve no secret: `at` (or
    /// the character boundary before it), moved back to the start of any
    /// secret form that would straddle it. What is kept is then redacted
    /// as usual; a secret cut in half would not be recognised.
    pub(crate) fn cut(&self, s: &str, at: usize) -> usize {
        let mut cut = s.floor_char_boundary(at);
        'again: loop {
            for needle in &self.needles {
                // Only an occurrence that starts less than its length
                // before the cut fits between these bounds.
                let reach = needle.len() - 1;
                let from = s.ceil_char_boundary(cut.saturating_sub(reach));
                let to = s.floor_char_boundary(cut.saturating_add(reach));
                if let Some(start) = s[from..to].find(needle.as_str()) {
                    cut = from + start;
                    continue 'again;
                }
            }
            return cut;
        }
    }

    /// The length of the longest secret form, in bytes.
    pub(crate) fn longest(&self) -> usize {
        self.needles.iter().map(String::len).max().unwrap_or(0)
    }

    pub(crate) fn value(&self, v: Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.text(&s)),
            Value::Array(items) => Value::Array(items.into_iter().map(|i| self.value(i)).collect()),
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (self.text(&k), self.value(v)))
                    .collect(),
            ),
            // A numeric secret (a PIN, an account number) reads back as a
            // number once a provider echoes it as one.
            Value::Number(n) if self.needles.contains(&n.to_string()) => {
                Value::String(REDACTED.to_owned())
            }
            other => other,
        }
    }

    pub(crate) fn headers(&self, headers: &HeaderMap, secret: &[HeaderName]) -> Map<String, Value> {
        let mut out = Map::new();
        for name in headers.keys() {
            let joined = headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect::<Vec<_>>()
                .join(", ");
            let shown = if secret.contains(name) {
                REDACTED.to_owned()
            } else {
                self.text(&joined)
            };
            out.insert(name.as_str().to_owned(), Value::String(shown));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::{AUTHORIZATION, HeaderValue};
    use serde_json::json;

    use super::*;

    #[test]
    fn secrets_are_found_in_json_text_and_as_a_parsed_url() {
        let r = Redactor::of_texts(&[
            r#"p"ss\w/rd"#.to_owned(),
            "https://Hooks.Example.com:443?sig=abc".to_owned(),
        ]);
        // A body stored as text keeps JSON's escapes, PHP's `\/` too.
        assert_eq!(
            r.text(r#"{"a":"p\"ss\\w/rd","b":"p\"ss\\w\/rd"}"#),
            r#"{"a":"[REDACTED]","b":"[REDACTED]"}"#
        );
        // The client sends the URL parsed: host lower case, no default
        // port, `/` for the empty path; with a path after it or not.
        assert_eq!(
            r.text("GET https://hooks.example.com/?sig=abc"),
            "GET [REDACTED]"
        );
        let bare = Redactor::of_texts(&["https://Hooks.Example.com:443".to_owned()]);
        assert_eq!(
            bare.text("https://hooks.example.com/x and https://hooks.example.com/"),
            "[REDACTED]x and [REDACTED]"
        );
        // A URL that ends with `/` as given is looked for as given.
        let slash = Redactor::of_texts(&["https://H.example/".to_owned()]);
        assert_eq!(slash.text("https://h.example"), "https://h.example");
        assert_eq!(slash.text("https://h.example/"), "[REDACTED]");
    }

    #[test]
    fn a_basic_auth_pair_is_found_in_base64() {
        let mut creds = Credentials::new();
        creds.insert(
            "svc".to_owned(),
            BTreeMap::from([
                ("username".to_owned(), "user".to_owned()),
                ("password".to_owned(), "pass".to_owned()),
            ]),
        );
        let r = Redactor::new(&creds);
        // base64("user:pass"), as a provider may echo the header.
        assert_eq!(
            r.text(r#"{"auth":"Basic dXNlcjpwYXNz"}"#),
            r#"{"auth":"Basic [REDACTED]"}"#
        );
        // A key sent as the user name with no password: base64("user:").
        creds.insert(
            "svc".to_owned(),
            BTreeMap::from([
                ("username".to_owned(), "user".to_owned()),
                ("password".to_owned(), String::new()),
            ]),
        );
        assert_eq!(Redactor::new(&creds).text("dXNlcjo="), "[REDACTED]");
        // With neither, there is no pair: base64(":") is left alone.
        creds.insert(
            "svc".to_owned(),
            BTreeMap::from([
                ("username".to_owned(), String::new()),
                ("password".to_owned(), String::new()),
            ]),
        );
        assert_eq!(Redactor::new(&creds).text("Og=="), "Og==");
    }

    #[test]
    fn a_cut_never_halves_a_secret() {
        let r = Redactor::of_texts(&["abcd".to_owned(), "é9".to_owned()]);
        // `é9` percent-encoded is the longest form.
        assert_eq!(r.longest(), "%C3%A99".len());
        assert_eq!(Redactor::of_texts(&["abcd".to_owned()]).longest(), 4);
        assert_eq!(Redactor::of_texts(&[]).longest(), 0);
        let s = "xxabcdyy";
        assert_eq!(r.cut(s, 2), 2);
        for at in 3..=5 {
            assert_eq!(r.cut(s, at), 2, "{at}");
        }
        assert_eq!(r.cut(s, 6), 6);
        assert_eq!(r.cut(s, 99), s.len());
        // Ending where a cut falls is no halving.
        assert_eq!(r.cut("xé9abcd", 5), 4);
        // Moved back again when the first move halves another secret.
        let two = Redactor::of_texts(&["abcd".to_owned(), "9a".to_owned()]);
        assert_eq!(two.cut("xé9abcd", 5), 3);
        // At a character boundary.
        assert_eq!(r.cut("xxé", 3), 2);
    }
    use crate::connector::Step;

    fn step(extract: Value) -> Step {
        serde_json::from_value(json!({
            "name": "login", "method": "POST", "url": "https://api.test/session",
            "extract": extract
        }))
        .expect("step")
    }

    #[test]
    fn secret_texts_are_every_string_and_number_at_any_depth() {
        let mut out = vec!["earlier".to_owned()];
        secret_texts(
            &json!({"a": "tok", "b": [17, {"c": "deep", "d": true, "e": null}], "f": 2.5}),
            &mut out,
        );
        assert_eq!(out, ["earlier", "tok", "17", "deep", "2.5"]);
    }

    #[test]
    fn only_secret_extracts_with_a_value_make_a_redactor() {
        let step = step(json!({
            "session": {"path": "$.session", "secret": true},
            "user": "$.user",
            "absent": {"path": "$.absent", "secret": true}
        }));
        let extracted = json!({"session": ["s-1", 99], "user": "ada"});
        let r = Redactor::of_secret_extracts(&step, extracted.as_object().unwrap())
            .expect("a secret extract has a value");
        assert_eq!(
            r.value(json!({"s": "s-1", "n": 99, "u": "ada"})),
            json!({"s": REDACTED, "n": REDACTED, "u": "ada"})
        );
        let plain = json!({"user": "ada"});
        assert!(Redactor::of_secret_extracts(&step, plain.as_object().unwrap()).is_none());
        let none = json!({});
        assert!(Redactor::of_secret_extracts(&step, none.as_object().unwrap()).is_none());
    }

    #[test]
    fn secrets_are_redacted_xml_escaped_in_keys_and_whole_when_one_holds_another() {
        let r = Redactor::of_texts(&[
            "a<b&c".to_owned(),
            "key".to_owned(),
            "key-long".to_owned(),
            String::new(),
        ]);
        assert_eq!(r.text("<v>a&lt;b&amp;c</v>"), format!("<v>{REDACTED}</v>"));
        assert_eq!(r.text("key-long key"), format!("{REDACTED} {REDACTED}"));
        assert_eq!(r.value(json!({"key": 1})), json!({REDACTED: 1}));
        // The empty text is no secret: nothing else is touched.
        assert_eq!(r.text("plain"), "plain");
        assert_eq!(r.text(""), "");
    }

    #[test]
    fn overlapping_and_touching_secrets_are_redacted_whole_without_touching_the_marker() {
        let r = Redactor::of_texts(&[
            "tok-123".to_owned(),
            "123-xyz".to_owned(),
            "ACT".to_owned(),
            "9z".to_owned(),
        ]);
        // Replacing one secret after the other left `-xyz` of the second.
        assert_eq!(r.text("a tok-123-xyz b"), format!("a {REDACTED} b"));
        // A secret in the marker's own text does not cut the marker.
        assert_eq!(r.text("tok-123 ACT"), format!("{REDACTED} {REDACTED}"));
        // Touching secrets make one marker; apart, one each.
        assert_eq!(r.text("ACT9z"), REDACTED);
        assert_eq!(r.text("ACT 9z!"), format!("{REDACTED} {REDACTED}!"));
        assert_eq!(r.text("9z9z-"), format!("{REDACTED}-"));
        assert_eq!(r.text("no secret here"), "no secret here");
        // A secret overlapping itself, in ASCII and in wider characters.
        let r = Redactor::of_texts(&["abab".to_owned(), "é9é".to_owned()]);
        assert_eq!(r.text("<ababab>"), format!("<{REDACTED}>"));
        assert_eq!(r.text("xé9é9éy"), format!("x{REDACTED}y"));
        let none = Redactor::of_texts(&[]);
        assert_eq!(none.text("tok-123"), "tok-123");
    }

    #[test]
    fn secret_headers_are_redacted_whole_and_others_of_secrets() {
        let r = Redactor::of_texts(&["tok123".to_owned()]);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        headers.append("x-echo", HeaderValue::from_static("id tok123"));
        headers.append("x-echo", HeaderValue::from_static("two"));
        headers.insert("x-plain", HeaderValue::from_static("visible"));
        let shown = r.headers(&headers, &[AUTHORIZATION]);
        assert_eq!(
            Value::Object(shown),
            json!({
                "authorization": REDACTED,
                "x-echo": format!("id {REDACTED}, two"),
                "x-plain": "visible"
            })
        );
    }

    #[test]
    fn redactor_replaces_raw_and_encoded_secrets() {
        let mut creds = Credentials::new();
        creds.insert(
            "c".into(),
            BTreeMap::from([("token".to_owned(), "s3cr et/+".to_owned())]),
        );
        let r = Redactor::new(&creds);
        assert_eq!(r.text("a s3cr et/+ b"), format!("a {REDACTED} b"));
        assert_eq!(r.text("q=s3cr%20et%2F%2B"), format!("q={REDACTED}"));
        assert_eq!(r.text("q=s3cr+et%2F%2B"), format!("q={REDACTED}"));
        assert_eq!(
            r.value(json!({"k": ["s3cr et/+"]})),
            json!({"k": [REDACTED]})
        );
    }

    #[test]
    fn numeric_secrets_are_redacted_as_numbers_too() {
        let mut creds = Credentials::new();
        creds.insert(
            "c".into(),
            BTreeMap::from([("pin".to_owned(), "482913".to_owned())]),
        );
        let r = Redactor::new(&creds);
        assert_eq!(
            r.value(json!({"pin": 482_913, "other": 482_914, "s": "482913"})),
            json!({"pin": REDACTED, "other": 482_914, "s": REDACTED})
        );
    }
}
