//! What an agent spec declares for a `type: http` tool, and how one call's arguments turn it
//! into a request: URL templating, query or body placement, `${env:VAR}` header values.
//!
//! Owns everything about a request that is decided before the network: a call that cannot be
//! built (missing argument, path traversal, unset variable) fails here and nothing is sent.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A `type: http` tool as an agent spec declares it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpToolSpec {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: String,
    /// A template like `https://api.example.com/tickets/{project}`. `{name}` takes the argument
    /// `name`, percent-encoded (in the path, as one whole segment's worth of text). Placeholders
    /// may appear in the path and the query, never in the scheme, host or port. Arguments the
    /// URL does not use go to the query string (`GET`, `DELETE`) or the JSON body (the others).
    pub url: String,
    /// Header values may contain `${env:VAR}`, substituted at call time, so credentials never
    /// enter the spec, the event log or an export.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl HttpToolSpec {
    /// Checks what can be checked without arguments: the method, the URL template (http or
    /// https, well-formed placeholders, none in the host), header names and `${env:…}` syntax.
    pub fn validate(&self) -> Result<(), String> {
        parse_method(&self.method)?;
        Template::parse(&self.url)?;
        for (name, value) in &self.headers {
            check_header_name(name)?;
            let pieces = parse_header_value(name, value)?;
            // Every variable stands in as `x`, so this checks the literal parts.
            let sample: String = pieces
                .iter()
                .map(|p| match p {
                    HeaderPiece::Lit(s) => s.as_str(),
                    HeaderPiece::Env(_) | HeaderPiece::Secret(_) => "x",
                })
                .collect();
            HeaderValue::from_str(&sample)
                .map_err(|_| format!("header `{name}` has characters that are not allowed in a header value"))?;
        }
        Ok(())
    }
}

/// A request ready to send.
pub(crate) struct Prepared {
    pub method: Method,
    pub url: Url,
    /// From the spec; may carry credentials, so dropped on a redirect to another origin.
    pub headers: HeaderMap,
    pub body: Option<Vec<u8>>,
    /// The values substituted for `${env:…}`: redacted from anything the server echoes back.
    pub secrets: Vec<String>,
}

/// Where `${env:VAR}` values come from.
pub(crate) type EnvLookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// Where `${secret:NAME}` values come from (the vault, revealed for this call).
pub type SecretLookup<'a> = dyn Fn(&str) -> Option<String> + Send + Sync + 'a;

impl HttpToolSpec {
    /// The names of the vault secrets its headers reference (`${secret:NAME}`).
    pub fn secret_refs(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, value) in &self.headers {
            for piece in parse_header_value(name, value).unwrap_or_default() {
                if let HeaderPiece::Secret(s) = piece
                    && !out.contains(&s)
                {
                    out.push(s);
                }
            }
        }
        out
    }
}

/// Builds the request for one call. Errors are tool errors: clear, and nothing was sent.
pub(crate) fn prepare(
    spec: &HttpToolSpec,
    args: &Map<String, Value>,
    env: &EnvLookup,
    vault: &SecretLookup<'_>,
) -> Result<Prepared, String> {
    let method = parse_method(&spec.method)?;
    let template = Template::parse(&spec.url)?;
    let mut url = template.render(args)?;

    let mut rest: Vec<(&String, &Value)> = args.iter().filter(|(k, _)| !template.names.contains(k.as_str())).collect();
    // Sorted by name, so the query does not depend on the order the model wrote them in.
    rest.sort_by(|a, b| a.0.cmp(b.0));
    let body = if method == Method::GET || method == Method::DELETE {
        append_query(&mut url, &rest);
        None
    } else {
        let object: Map<String, Value> = rest.into_iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        Some(serde_json::to_vec(&Value::Object(object)).map_err(|e| format!("cannot encode the request body: {e}"))?)
    };

    let mut headers = HeaderMap::new();
    let mut secrets = Vec::new();
    for (name, value) in &spec.headers {
        let header = check_header_name(name)?;
        let mut text = String::new();
        let mut sensitive = false;
        for piece in parse_header_value(name, value)? {
            let (v, what) = match piece {
                HeaderPiece::Lit(s) => {
                    text.push_str(&s);
                    continue;
                }
                HeaderPiece::Env(var) => {
                    let what = format!("the environment variable `{var}`");
                    let Some(v) = env(&var) else {
                        return Err(format!(
                            "header `{name}` needs {what}, which is not set on the Stead server; no request was sent"
                        ));
                    };
                    (v, what)
                }
                HeaderPiece::Secret(secret) => {
                    let what = format!("the secret `{secret}`");
                    let Some(v) = vault(&secret) else {
                        return Err(format!(
                            "header `{name}` needs {what}, which this tenant's vault does not hold; no request was sent"
                        ));
                    };
                    (v, what)
                }
            };
            {
                {
                    // Never quote the value: it is a credential.
                    if HeaderValue::from_str(&v).is_err() {
                        return Err(format!(
                            "header `{name}`: {what} has characters that are not allowed in a header value; no request was sent"
                        ));
                    }
                    text.push_str(&v);
                    if !v.is_empty() {
                        secrets.push(v);
                    }
                    sensitive = true;
                }
            }
        }
        let mut value = HeaderValue::from_str(&text)
            .map_err(|_| format!("header `{name}` has characters that are not allowed in a header value"))?;
        value.set_sensitive(sensitive);
        headers.append(header, value);
    }
    if body.is_some() && !headers.contains_key(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    // Longest first, so a secret that contains another is redacted whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    Ok(Prepared { method, url, headers, body, secrets })
}

fn parse_method(method: &str) -> Result<Method, String> {
    match method.to_ascii_uppercase().as_str() {
        "GET" => Ok(Method::GET),
        "POST" => Ok(Method::POST),
        "PUT" => Ok(Method::PUT),
        "PATCH" => Ok(Method::PATCH),
        "DELETE" => Ok(Method::DELETE),
        _ => Err(format!("HTTP tool method `{method}` is not one of GET, POST, PUT, PATCH, DELETE")),
    }
}

/// Headers Stead sets itself, or that would let a spec confuse the transport.
const RESERVED_HEADERS: &[&str] =
    &["host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer", "idempotency-key"];

fn check_header_name(name: &str) -> Result<HeaderName, String> {
    let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("`{name}` is not a valid header name"))?;
    if RESERVED_HEADERS.contains(&header.as_str()) {
        return Err(format!("header `{name}` is set by Stead and cannot be declared in a spec"));
    }
    Ok(header)
}

enum HeaderPiece {
    Lit(String),
    Env(String),
    /// A vault secret of the tenant.
    Secret(String),
}

fn is_secret_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Splits `Bearer ${env:TOKEN}` into its parts. `${` starts a reference and must be a well-formed
/// `${env:NAME}` or `${secret:NAME}`; a lone `$` is literal.
fn parse_header_value(name: &str, value: &str) -> Result<Vec<HeaderPiece>, String> {
    let mut pieces = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            pieces.push(HeaderPiece::Lit(rest[..start].to_owned()));
        }
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("header `{name}`: `${{` without a closing `}}`"))?;
        let inner = &after[..end];
        if let Some(secret) = inner.strip_prefix("secret:").filter(|v| is_secret_name(v)) {
            pieces.push(HeaderPiece::Secret(secret.to_owned()));
        } else {
            let var = inner.strip_prefix("env:").filter(|v| is_identifier(v)).ok_or_else(|| {
                format!(
                    "header `{name}`: `${{{inner}}}` is not a `${{env:NAME}}` (NAME: letters, digits, `_`) or `${{secret:NAME}}` reference"
                )
            })?;
            pieces.push(HeaderPiece::Env(var.to_owned()));
        }
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        pieces.push(HeaderPiece::Lit(rest.to_owned()));
    }
    Ok(pieces)
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Arg(String),
}

/// A parsed URL template.
#[derive(Debug)]
struct Template {
    /// `scheme://authority`, with no placeholder: an argument can never pick the host.
    origin: String,
    /// The path's segments (between `/`s). An encoded argument never contains `/`, so these are
    /// the segments of the final path too.
    segments: Vec<Vec<Piece>>,
    query: Option<Vec<Piece>>,
    names: BTreeSet<String>,
}

impl Template {
    fn parse(url: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("HTTP tool URL `{url}`: {why}");
        let (scheme, after) = url.split_once("://").ok_or_else(|| bad("must start with http:// or https://"))?;
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(bad("must start with http:// or https://"));
        }
        if after.contains('#') {
            return Err(bad("a fragment (`#…`) is never sent to the server; remove it"));
        }
        // The URL parser drops tabs and newlines and reads `\` as `/` in http(s) URLs; either
        // would let the parser see other segments than the ones checked below.
        if after.contains(|c: char| c.is_ascii_control() || c == ' ') {
            return Err(bad("spaces and control characters must be percent-encoded"));
        }
        if after.contains('\\') {
            return Err(bad("use `/` to separate path segments, not `\\`"));
        }
        let authority_end = after.find(['/', '?']).unwrap_or(after.len());
        let (authority, rest) = after.split_at(authority_end);
        if authority.is_empty() {
            return Err(bad("has no host"));
        }
        if authority.contains('@') {
            return Err(bad("credentials do not belong in the URL; send them in a header with `${env:VAR}`"));
        }
        if authority.contains(['{', '}']) {
            return Err(bad("placeholders are only allowed in the path and the query, not in the host or port"));
        }
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut names = BTreeSet::new();
        let mut segments = Vec::new();
        if let Some(path) = path.strip_prefix('/') {
            for segment in path.split('/') {
                segments.push(parse_pieces(segment, &mut names).map_err(|e| bad(&e))?);
            }
        }
        let query = query.map(|q| parse_pieces(q, &mut names)).transpose().map_err(|e| bad(&e))?;
        let template = Self { origin: format!("{scheme}://{authority}"), segments, query, names };

        // Let the URL parser judge the rest, with every argument standing in as `x`.
        let sample = template.render_with(&mut |_| Ok("x".to_owned())).map_err(|e| bad(&e))?;
        if sample.host_str().is_none_or(str::is_empty) {
            return Err(bad("has no host"));
        }
        Ok(template)
    }

    /// The origin the template always addresses, whatever the arguments.
    fn origin(&self) -> Result<Url, String> {
        Url::parse(&format!("{}/", self.origin)).map_err(|e| format!("the URL `{}` does not parse: {e}", self.origin))
    }

    /// The URL for these arguments: each placeholder percent-encoded, and no placeholder may
    /// make a path segment empty, `.` or `..` (which would change which resource is addressed).
    fn render(&self, args: &Map<String, Value>) -> Result<Url, String> {
        self.render_with(&mut |name| match args.get(name) {
            None => Err(format!("missing argument `{name}` (the URL needs it)")),
            Some(Value::String(s)) => Ok(encode(s)),
            Some(Value::Number(n)) => Ok(encode(&n.to_string())),
            Some(Value::Bool(b)) => Ok(b.to_string()),
            Some(_) => Err(format!("argument `{name}` must be a string, number or boolean to go into the URL")),
        })
    }

    fn render_with(&self, value: &mut dyn FnMut(&str) -> Result<String, String>) -> Result<Url, String> {
        let mut text = self.origin.clone();
        for segment in &self.segments {
            text.push('/');
            let mut rendered = String::new();
            let mut args = Vec::new();
            for piece in segment {
                match piece {
                    Piece::Lit(s) => rendered.push_str(s),
                    Piece::Arg(name) => {
                        rendered.push_str(&value(name)?);
                        args.push(format!("`{name}`"));
                    }
                }
            }
            if !args.is_empty() && (rendered.is_empty() || is_dot_segment(&rendered)) {
                return Err(format!(
                    "argument {} would make the path segment `{rendered}`, which is not allowed (it would change the path)",
                    args.join(" and ")
                ));
            }
            text.push_str(&rendered);
        }
        if self.segments.is_empty() {
            text.push('/');
        }
        if let Some(query) = &self.query {
            text.push('?');
            for piece in query {
                match piece {
                    Piece::Lit(s) => text.push_str(s),
                    Piece::Arg(name) => text.push_str(&value(name)?),
                }
            }
        }
        let url = Url::parse(&text).map_err(|e| format!("the URL `{text}` does not parse: {e}"))?;
        // Arguments are percent-encoded and cannot reach the authority; this makes sure of it.
        if url.origin() != self.origin()?.origin() {
            return Err(format!("the URL `{text}` does not stay on `{}`", self.origin));
        }
        Ok(url)
    }
}

/// `{name}` placeholders in literal text. Braces are reserved: a lone `{` or `}` is an error.
fn parse_pieces(text: &str, names: &mut BTreeSet<String>) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err("`}` without a matching `{`".to_owned());
        }
        if open > 0 {
            pieces.push(Piece::Lit(rest[..open].to_owned()));
        }
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or("`{` without a closing `}`")?;
        let name = &after[..close];
        if !is_identifier(name) {
            return Err(format!("`{{{name}}}` is not a placeholder (names: letters, digits, `_`)"));
        }
        names.insert(name.to_owned());
        pieces.push(Piece::Arg(name.to_owned()));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Lit(rest.to_owned()));
    }
    Ok(pieces)
}

/// The URL standard treats these as `.` and `..` (`%2e` included), and the parser resolves them.
fn is_dot_segment(segment: &str) -> bool {
    matches!(segment.to_ascii_lowercase().as_str(), "." | "%2e" | ".." | ".%2e" | "%2e." | "%2e%2e")
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so an argument is always
/// data: `/`, `?`, `#`, `&`, `=`, `\` and `%` cannot change the URL's structure.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The arguments the URL does not use, as query parameters: arrays repeat the key, objects
/// go as JSON text, nulls are left out.
fn append_query(url: &mut Url, rest: &[(&String, &Value)]) {
    if rest.is_empty() {
        return;
    }
    let mut pairs = url.query_pairs_mut();
    for (key, value) in rest {
        let items: &[Value] = match value {
            Value::Array(items) => items,
            other => std::slice::from_ref(*other),
        };
        for item in items {
            match item {
                Value::Null => {}
                Value::String(s) => {
                    pairs.append_pair(key, s);
                }
                other => {
                    pairs.append_pair(key, &other.to_string());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(method: &str, url: &str) -> HttpToolSpec {
        HttpToolSpec { method: method.into(), url: url.into(), headers: BTreeMap::new() }
    }

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn url_for(url: &str, a: Value) -> Result<String, String> {
        prepare(&spec("GET", url), &args(a), &no_env, &no_env).map(|p| p.url.to_string())
    }

    #[test]
    fn secret_references_come_from_the_vault_and_are_redacted() {
        let mut s = spec("GET", "https://api.example.com/");
        s.headers.insert("Authorization".into(), "Bearer ${secret:TICKETS.token-1}".into());
        s.headers.insert("X-Both".into(), "${secret:TICKETS.token-1}/${env:A}".into());
        s.validate().unwrap();
        assert_eq!(s.secret_refs(), ["TICKETS.token-1"]);
        let vault = |name: &str| (name == "TICKETS.token-1").then(|| "vault-value-9".to_owned());
        let env = |name: &str| (name == "A").then(|| "env-value".to_owned());
        let p = prepare(&s, &Map::new(), &env, &vault).unwrap();
        assert_eq!(p.headers["authorization"], "Bearer vault-value-9");
        assert!(p.headers["authorization"].is_sensitive());
        assert_eq!(p.secrets, ["vault-value-9", "env-value"], "both kinds are redacted from echoes");
        let err = prepare(&s, &Map::new(), &env, &no_env).err().unwrap();
        assert!(err.contains("the secret `TICKETS.token-1`") && err.contains("no request was sent"), "{err}");
        for bad in ["${secret:}", "${secret:has space}", "${secret:a/b}", "${user:x}"] {
            let mut b = spec("GET", "https://api.example.com/");
            b.headers.insert("X".into(), bad.into());
            assert!(b.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn validate_accepts_good_specs() {
        for url in [
            "https://api.example.com/tickets/{project}",
            "http://127.0.0.1:8080/a/{b}/c/{d_2}.json?x=1&y={y}",
            "https://api.example.com",
            "https://api.example.com/",
        ] {
            spec("post", url).validate().unwrap();
        }
        let mut s = spec("GET", "https://api.example.com/");
        s.headers.insert("Authorization".into(), "Bearer ${env:API_TOKEN}".into());
        s.headers.insert("X-Price".into(), "$5 ${env:A}${env:B}".into());
        s.validate().unwrap();
    }

    #[test]
    fn validate_names_what_is_wrong() {
        let cases = [
            (spec("FETCH", "https://a.example/"), "not one of GET"),
            (spec("GET", "ftp://a.example/"), "http:// or https://"),
            (spec("GET", "a.example/x"), "http:// or https://"),
            (spec("GET", "https://{host}/x"), "not in the host"),
            (spec("GET", "https://a.example:{port}/x"), "not in the host"),
            (spec("GET", "https://a.example/{x"), "without a closing"),
            (spec("GET", "https://a.example/x}"), "without a matching"),
            (spec("GET", "https://a.example/{a-b}"), "is not a placeholder"),
            (spec("GET", "https://a.example/{}"), "is not a placeholder"),
            (spec("GET", "https://a.example/x#{frag}"), "fragment"),
            (spec("GET", "https:///x"), "has no host"),
            (spec("GET", "https://"), "has no host"),
            (spec("GET", "https://a.example/x\\{y}"), "not `\\`"),
            (spec("GET", "https://a.example/x\t{y}"), "control characters"),
            (spec("GET", "https://a.example/x y"), "control characters"),
            (spec("GET", "https://a.example:99999/"), "does not parse"),
            (spec("GET", "https://user:pw@a.example/"), "credentials do not belong in the URL"),
        ];
        for (s, want) in cases {
            let err = s.validate().unwrap_err();
            assert!(err.contains(want), "{:?}: {err}", s.url);
        }
        let with_header = |name: &str, value: &str| {
            let mut s = spec("GET", "https://a.example/");
            s.headers.insert(name.into(), value.into());
            s.validate().unwrap_err()
        };
        assert!(with_header("Bad Header", "x").contains("not a valid header name"));
        assert!(with_header("Host", "x").contains("set by Stead"));
        assert!(with_header("Idempotency-Key", "x").contains("set by Stead"));
        assert!(with_header("X-A", "${env:}").contains("is not a `${env:NAME}`"));
        assert!(with_header("X-A", "${vault:X}").contains("is not a `${env:NAME}`"));
        assert!(with_header("X-A", "${env:X").contains("without a closing"));
        assert!(with_header("X-A", "a\nb").contains("not allowed in a header value"));
    }

    #[test]
    fn spec_rejects_unknown_fields() {
        let err = serde_json::from_value::<HttpToolSpec>(json!({"method": "GET", "url": "https://a/", "body": 1}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `body`"), "{err}");
        let ok: HttpToolSpec = serde_json::from_value(json!({"method": "GET", "url": "https://a/"})).unwrap();
        assert!(ok.headers.is_empty());
    }

    #[test]
    fn path_arguments_are_encoded_as_one_segment() {
        let t = "https://api.example.com/tickets/{project}/items";
        assert_eq!(url_for(t, json!({"project": "abc"})).unwrap(), "https://api.example.com/tickets/abc/items");
        assert_eq!(url_for(t, json!({"project": "a/b"})).unwrap(), "https://api.example.com/tickets/a%2Fb/items");
        assert_eq!(
            url_for(t, json!({"project": "../../admin"})).unwrap(),
            "https://api.example.com/tickets/..%2F..%2Fadmin/items"
        );
        assert_eq!(
            url_for(t, json!({"project": "a b?c#d&e=f\\g%"})).unwrap(),
            "https://api.example.com/tickets/a%20b%3Fc%23d%26e%3Df%5Cg%25/items"
        );
        assert_eq!(url_for(t, json!({"project": "ü"})).unwrap(), "https://api.example.com/tickets/%C3%BC/items");
        assert_eq!(url_for(t, json!({"project": 42})).unwrap(), "https://api.example.com/tickets/42/items");
        assert_eq!(url_for(t, json!({"project": true})).unwrap(), "https://api.example.com/tickets/true/items");
    }

    #[test]
    fn path_arguments_cannot_climb_or_empty_a_segment() {
        let t = "https://api.example.com/tickets/{project}/items";
        for bad in [".", "..", ""] {
            let err = url_for(t, json!({"project": bad})).unwrap_err();
            assert!(err.contains("argument `project`"), "{bad:?}: {err}");
        }
        // Two arguments that are harmless alone but `..` together.
        let err = url_for("https://a.example/x/{a}{b}/y", json!({"a": ".", "b": "."})).unwrap_err();
        assert!(err.contains("`a` and `b`"), "{err}");
        // A literal `%2e` next to an argument is a dot segment too.
        assert!(url_for("https://a.example/x/%2e{a}/y", json!({"a": "."})).is_err());
        // Dots inside a segment are fine.
        assert_eq!(url_for(t, json!({"project": "..a"})).unwrap(), "https://api.example.com/tickets/..a/items");
    }

    #[test]
    fn bad_arguments_are_named() {
        let t = "https://a.example/{id}";
        assert!(url_for(t, json!({})).unwrap_err().contains("missing argument `id`"));
        assert!(url_for(t, json!({"id": null})).unwrap_err().contains("must be a string, number or boolean"));
        assert!(url_for(t, json!({"id": [1]})).unwrap_err().contains("must be a string, number or boolean"));
    }

    #[test]
    fn unused_arguments_go_to_the_query_for_get_and_delete() {
        let a = args(json!({"id": "7", "q": "a b&c", "n": 3, "tags": ["x", "y"], "skip": null, "o": {"k": 1}}));
        for method in ["GET", "DELETE"] {
            let p = prepare(&spec(method, "https://a.example/items/{id}?fixed=1"), &a, &no_env, &no_env).unwrap();
            assert!(p.body.is_none());
            assert_eq!(
                p.url.as_str(),
                "https://a.example/items/7?fixed=1&n=3&o=%7B%22k%22%3A1%7D&q=a+b%26c&tags=x&tags=y"
            );
            assert!(!p.headers.contains_key(CONTENT_TYPE));
        }
    }

    #[test]
    fn unused_arguments_go_to_the_json_body_for_the_others() {
        let a = args(json!({"id": "7", "title": "hi", "n": 3, "skip": null}));
        for method in ["POST", "PUT", "PATCH"] {
            let p = prepare(&spec(method, "https://a.example/items/{id}"), &a, &no_env, &no_env).unwrap();
            assert_eq!(p.url.as_str(), "https://a.example/items/7");
            let body: Value = serde_json::from_slice(p.body.as_deref().unwrap()).unwrap();
            assert_eq!(body, json!({"title": "hi", "n": 3, "skip": null}));
            assert_eq!(p.headers[CONTENT_TYPE], "application/json");
        }
        let p =
            prepare(&spec("POST", "https://a.example/items/{id}"), &args(json!({"id": 1})), &no_env, &no_env).unwrap();
        assert_eq!(p.body.as_deref(), Some(&b"{}"[..]));
    }

    #[test]
    fn query_placeholders_are_encoded() {
        assert_eq!(
            url_for("https://a.example/search?q={q}&lang=en", json!({"q": "a&b=c d"})).unwrap(),
            "https://a.example/search?q=a%26b%3Dc%20d&lang=en"
        );
    }

    #[test]
    fn env_references_are_substituted_and_remembered_as_secrets() {
        let mut s = spec("GET", "https://a.example/");
        s.headers.insert("Authorization".into(), "Bearer ${env:TOKEN}".into());
        s.headers.insert("X-Plain".into(), "$literal".into());
        let env = |name: &str| (name == "TOKEN").then(|| "s3cret-value".to_owned());
        let p = prepare(&s, &Map::new(), &env, &no_env).unwrap();
        assert_eq!(p.headers["authorization"], "Bearer s3cret-value");
        assert!(p.headers["authorization"].is_sensitive());
        assert_eq!(p.headers["x-plain"], "$literal");
        assert!(!p.headers["x-plain"].is_sensitive());
        assert_eq!(p.secrets, vec!["s3cret-value".to_owned()]);
    }

    #[test]
    fn a_missing_or_unusable_variable_is_a_clear_error_without_its_value() {
        let mut s = spec("GET", "https://a.example/");
        s.headers.insert("Authorization".into(), "Bearer ${env:TOKEN}".into());
        let err = prepare(&s, &Map::new(), &no_env, &no_env).err().unwrap();
        assert!(err.contains("`TOKEN`") && err.contains("not set") && err.contains("no request was sent"), "{err}");
        let env = |_: &str| Some("line\nbreak-secret".to_owned());
        let err = prepare(&s, &Map::new(), &env, &no_env).err().unwrap();
        assert!(err.contains("not allowed in a header value") && !err.contains("break-secret"), "{err}");
    }
}
