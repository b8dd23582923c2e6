//! `HttpCaller` against real HTTP servers on 127.0.0.1: the guard on literal and resolved
//! addresses and on every redirect hop, templating as the server sees it, headers and
//! credentials, limits, and the wording of failures.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use serde_json::{Map, Value, json};
use stead_tools_http::{Error, Guard, GuardConfig, HttpCaller, HttpToolSpec, Limits, ToolResult};

/// One request as the server received it.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    /// Path and query exactly as sent.
    uri: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(Clone, Default)]
struct Shared {
    seen: Arc<Mutex<Vec<Seen>>>,
}

struct Server {
    port: u16,
    shared: Shared,
}

impl Server {
    async fn start() -> Self {
        let shared = Shared::default();
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { port, shared }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    fn hits(&self) -> usize {
        self.shared.seen.lock().unwrap().len()
    }
}

fn query_param(uri: &axum::http::Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')).map(str::to_owned)
}

fn reply(status: u16, content_type: &str, body: impl Into<Body>) -> Response {
    Response::builder().status(status).header("content-type", content_type).body(body.into()).unwrap()
}

/// Routes by path:
/// - `/redirect?code=N&to=URL`: a redirect (`to` is taken raw, so it must not contain `&`);
/// - `/loop`: redirects to itself;
/// - `/big`: 10 000 bytes of `a`; `/chunked`: 10 000 bytes of `b` without a Content-Length;
/// - `/status/N`: status N with a 5 000-byte body;
/// - `/slow`: never answers;
/// - `/png`: a small image;
/// - `/no-type`: bytes without a content type (`?binary` for non-UTF-8);
/// - `/echo-headers`: the request headers as text;
/// - anything else: `{"ok": true, "method", "uri"}` as JSON.
async fn handle(State(shared): State<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = to_bytes(body, usize::MAX).await.unwrap().to_vec();
    let uri = parts.uri.clone();
    let path_and_query = uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    shared.seen.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        uri: path_and_query.clone(),
        headers: parts.headers.clone(),
        body,
    });
    match uri.path() {
        "/redirect" => {
            let code: u16 = query_param(&uri, "code").map_or(302, |c| c.parse().unwrap());
            let to = query_param(&uri, "to").unwrap();
            Response::builder().status(code).header("location", to).body(Body::empty()).unwrap()
        }
        "/loop" => Response::builder().status(302).header("location", "/loop").body(Body::empty()).unwrap(),
        "/big" => reply(200, "text/plain; charset=utf-8", "a".repeat(10_000)),
        "/chunked" => {
            // A streamed body has no Content-Length: the total is unknown to the client.
            let chunks = (0..10).map(|_| Ok::<_, std::io::Error>("b".repeat(1_000)));
            reply(200, "text/plain", Body::from_stream(futures_util::stream::iter(chunks)))
        }
        "/png" => reply(200, "image/png", vec![0x89, b'P', b'N', b'G']),
        "/no-type" => {
            let bytes = if uri.query() == Some("binary") { vec![0xff, 0x00, 0xfe] } else { b"plain words".to_vec() };
            Response::builder().status(200).body(Body::from(bytes)).unwrap()
        }
        "/slow" => std::future::pending().await,
        "/echo-headers" => {
            let text: Vec<String> =
                parts.headers.iter().map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?"))).collect();
            reply(200, "text/plain", text.join("\n"))
        }
        p if p.starts_with("/status/") => {
            let code: u16 = p["/status/".len()..].parse().unwrap();
            reply(code, "text/plain", format!("problem: {}", "x".repeat(5_000)))
        }
        _ => reply(
            200,
            "application/json",
            json!({"ok": true, "method": parts.method.as_str(), "uri": path_and_query}).to_string(),
        ),
    }
}

fn limits() -> Limits {
    Limits { timeout: Duration::from_secs(10), max_response_bytes: 1_000, max_redirects: 3 }
}

fn caller(allow: &[&str]) -> HttpCaller {
    let guard =
        Guard::new(GuardConfig { allow: allow.iter().map(|s| (*s).to_owned()).collect(), allow_all: false }).unwrap();
    HttpCaller::new(guard, limits()).unwrap()
}

fn spec(method: &str, url: String, headers: &[(&str, &str)]) -> HttpToolSpec {
    let headers: BTreeMap<String, String> = headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let spec = HttpToolSpec { method: method.into(), url, headers };
    spec.validate().unwrap();
    spec
}

fn args(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[track_caller]
fn assert_error(r: &ToolResult, want: &str) {
    assert!(r.is_error, "expected an error containing {want:?}, got {r:?}");
    assert!(r.text.contains(want), "expected {want:?} in {:?}", r.text);
}

#[track_caller]
fn assert_ok(r: &ToolResult) {
    assert!(!r.is_error, "expected success, got {r:?}");
    assert_eq!(r.status, Some(200), "{r:?}");
}

// --- the guard ---------------------------------------------------------------------------

#[tokio::test]
async fn loopback_by_address_or_by_name_is_refused_by_default() {
    let server = Server::start().await;
    let c = caller(&[]);
    let r = c.fetch(&server.url("/"), "k").await;
    assert_error(&r, "refused: 127.0.0.1 is loopback; allow it with `allow: [\"127.0.0.1/32\"]`");
    assert_eq!(r.status, None);
    let r = c.fetch(&format!("http://localhost:{}/", server.port), "k").await;
    assert_error(&r, "refused: localhost resolves only to refused addresses: 127.0.0.1 is loopback");
    assert_error(&r, "allow: [\"localhost\"]");
    let r = c.call_tool(&spec("POST", server.url("/x"), &[]), &Map::new(), "k").await;
    assert_error(&r, "refused: 127.0.0.1 is loopback");
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn an_allowed_cidr_opens_the_address_and_names_resolving_to_it() {
    let server = Server::start().await;
    let c = caller(&["127.0.0.1/32"]);
    assert_ok(&c.fetch(&server.url("/"), "k").await);
    assert_ok(&c.fetch(&format!("http://localhost:{}/", server.port), "k").await);
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn an_allowed_name_opens_that_name_only() {
    let server = Server::start().await;
    let c = caller(&["localhost"]);
    assert_ok(&c.fetch(&format!("http://localhost:{}/", server.port), "k").await);
    assert_error(&c.fetch(&server.url("/"), "k").await, "refused: 127.0.0.1 is loopback");
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn numeric_and_mapped_host_forms_are_refused_before_connecting() {
    // A server listens on 127.0.0.1 at this port: any bypass would reach it.
    let server = Server::start().await;
    let p = server.port;
    let c = caller(&[]);
    let cases = [
        (format!("http://2130706433:{p}/"), "127.0.0.1 is loopback"),
        (format!("http://0x7f.1:{p}/"), "127.0.0.1 is loopback"),
        (format!("http://0x7f000001:{p}/"), "127.0.0.1 is loopback"),
        (format!("http://0177.0.0.1:{p}/"), "127.0.0.1 is loopback"),
        (format!("http://017700000001:{p}/"), "127.0.0.1 is loopback"),
        (format!("http://127.1:{p}/"), "127.0.0.1 is loopback"),
        (format!("http://127.0.0.1.:{p}/"), "127.0.0.1 is loopback"),
        (format!("http://[::ffff:127.0.0.1]:{p}/"), "IPv4-mapped form of 127.0.0.1"),
        (format!("http://[::ffff:7f00:1]:{p}/"), "IPv4-mapped form of 127.0.0.1"),
        (format!("http://[0:0:0:0:0:ffff:127.0.0.1]:{p}/"), "IPv4-mapped form of 127.0.0.1"),
        (format!("http://[::127.0.0.1]:{p}/"), "IPv4-compatible form of 127.0.0.1"),
        (format!("http://[64:ff9b::7f00:1]:{p}/"), "NAT64 form of 127.0.0.1"),
        (format!("http://[::1]:{p}/"), "::1 is loopback"),
        (format!("http://0:{p}/"), "0.0.0.0 is unspecified"),
        (format!("http://[::]:{p}/"), ":: is unspecified"),
        ("http://169.254.169.254/latest/meta-data/".to_owned(), "169.254.169.254 is link-local (cloud metadata)"),
        ("http://0xa9fea9fe/".to_owned(), "169.254.169.254 is link-local (cloud metadata)"),
        ("http://[fd00:ec2::254]/".to_owned(), "fd00:ec2::254 is unique local (cloud metadata)"),
        ("http://10.0.0.1/".to_owned(), "10.0.0.1 is private"),
        ("https://192.168.0.1/".to_owned(), "192.168.0.1 is private"),
        ("http://100.64.0.1/".to_owned(), "carrier-grade NAT"),
    ];
    for (url, want) in cases {
        assert_error(&c.fetch(&url, "k").await, want);
    }
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn a_redirect_to_a_refused_address_is_refused() {
    let server = Server::start().await;
    let p = server.port;
    let c = caller(&["127.0.0.1/32"]);
    for (to, want) in [
        ("http://169.254.169.254/latest/meta-data/".to_owned(), "169.254.169.254 is link-local (cloud metadata)"),
        ("http://0xa9fea9fe/".to_owned(), "169.254.169.254 is link-local (cloud metadata)"),
        (format!("http://[::1]:{p}/"), "::1 is loopback"),
        ("http://10.1.2.3/".to_owned(), "10.1.2.3 is private"),
    ] {
        for code in [301, 302, 303, 307, 308] {
            let r = c.fetch(&server.url(&format!("/redirect?code={code}&to={to}")), "k").await;
            assert_error(&r, want);
        }
    }
    // Allowed by name, refused by address: the literal hop is checked too.
    let c = caller(&["localhost"]);
    let r = c.fetch(&format!("http://localhost:{p}/redirect?to=http://127.0.0.1:{p}/final"), "k").await;
    assert_error(&r, "refused: 127.0.0.1 is loopback");
    assert!(server.seen().iter().all(|s| !s.uri.starts_with("/final")));
}

#[tokio::test]
async fn redirects_are_followed_up_to_the_limit() {
    let server = Server::start().await;
    let c = caller(&["127.0.0.1/32"]);
    let r = c.fetch(&server.url(&format!("/redirect?to={}", server.url("/final"))), "k").await;
    assert_ok(&r);
    assert!(r.text.contains("\"uri\":\"/final\""), "{}", r.text);

    let r = c.fetch(&server.url("/loop"), "k").await;
    assert_error(&r, "too many redirects");
    assert_error(&r, "limit of 3 redirects");
    assert_eq!(r.status, Some(302));
    assert_eq!(server.hits(), 2 + 4);

    let no_redirects = HttpCaller::new(
        Guard::new(GuardConfig { allow: vec!["127.0.0.1/32".into()], allow_all: false }).unwrap(),
        Limits { max_redirects: 0, ..limits() },
    )
    .unwrap();
    assert_error(&no_redirects.fetch(&server.url("/loop"), "k").await, "limit of 0 redirects");
}

#[tokio::test]
async fn credentials_stay_with_their_origin_across_redirects() {
    let a = Server::start().await;
    let b = Server::start().await;
    let c = caller(&["127.0.0.1/32"]).with_env_lookup(|name| (name == "TOKEN").then(|| "tok-secret-1".to_owned()));
    let headers = [("Authorization", "Bearer ${env:TOKEN}"), ("X-Api-Key", "${env:TOKEN}"), ("X-Plain", "plain")];

    // Same origin: everything is kept; a 307 keeps the method and the body.
    let same = a.url("/final");
    let r = c
        .call_tool(
            &spec("POST", a.url(&format!("/redirect?code=307&to={same}")), &headers),
            &args(json!({"n": 1})),
            "key-1",
        )
        .await;
    assert_ok(&r);
    let last = a.seen().pop().unwrap();
    assert_eq!(last.uri, "/final");
    assert_eq!(last.method, Method::POST);
    assert_eq!(last.headers["authorization"], "Bearer tok-secret-1");
    assert_eq!(last.headers["x-api-key"], "tok-secret-1");
    assert_eq!(last.body, br#"{"n":1}"#);

    // Another origin (another port; then another host name): no spec header goes along.
    for other in [b.url("/final"), format!("http://localhost:{}/final", a.port)] {
        let r = c
            .call_tool(
                &spec("POST", a.url(&format!("/redirect?code=307&to={other}")), &headers),
                &args(json!({"n": 2})),
                "key-2",
            )
            .await;
        assert_ok(&r);
        let last = if other.contains("localhost") { a.seen().pop().unwrap() } else { b.seen().pop().unwrap() };
        assert_eq!(last.uri, "/final");
        assert_eq!(last.method, Method::POST);
        assert_eq!(last.body, br#"{"n":2}"#);
        assert_eq!(last.headers["content-type"], "application/json");
        assert_eq!(last.headers["idempotency-key"], "key-2");
        for name in ["authorization", "x-api-key", "x-plain"] {
            assert!(!last.headers.contains_key(name), "{name} was forwarded to {other}");
        }
    }
}

#[tokio::test]
async fn see_other_after_a_post_becomes_a_get_without_a_body() {
    let server = Server::start().await;
    let c = caller(&["127.0.0.1/32"]);
    let to = server.url("/final");
    let r = c
        .call_tool(&spec("POST", server.url(&format!("/redirect?code=303&to={to}")), &[]), &args(json!({"a": 1})), "k")
        .await;
    assert_ok(&r);
    let last = server.seen().pop().unwrap();
    assert_eq!(last.method, Method::GET);
    assert!(last.body.is_empty());
    assert!(!last.headers.contains_key("content-type"));
}

// --- requests as the server sees them ----------------------------------------------------

#[tokio::test]
async fn the_idempotency_key_is_sent() {
    let server = Server::start().await;
    let c = caller(&["127.0.0.1/32"]);
    assert_ok(&c.call_tool(&spec("PUT", server.url("/t"), &[]), &Map::new(), "call_0123-attempt").await);
    assert_ok(&c.fetch(&server.url("/f"), "fetch-key").await);
    let seen = server.seen();
    assert_eq!(seen[0].headers["idempotency-key"], "call_0123-attempt");
    assert_eq!(seen[1].headers["idempotency-key"], "fetch-key");
    assert_error(&c.fetch(&server.url("/f"), "bad\nkey").await, "idempotency key");
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn path_arguments_cannot_leave_their_segment() {
    let server = Server::start().await;
    let c = caller(&["127.0.0.1/32"]);
    let s = spec("GET", server.url("/tickets/{project}/items"), &[]);
    for (project, want) in [
        ("../admin", "/tickets/..%2Fadmin/items"),
        ("a/b", "/tickets/a%2Fb/items"),
        ("..\\..\\x", "/tickets/..%5C..%5Cx/items"),
        ("%2e%2e", "/tickets/%252e%252e/items"),
        ("x?y#z", "/tickets/x%3Fy%23z/items"),
    ] {
        assert_ok(&c.call_tool(&s, &args(json!({"project": project})), "k").await);
        assert_eq!(server.seen().pop().unwrap().uri, want);
    }
    let before = server.hits();
    for project in ["..", ".", ""] {
        let r = c.call_tool(&s, &args(json!({"project": project})), "k").await;
        assert_error(&r, "argument `project`");
    }
    assert_error(&c.call_tool(&s, &Map::new(), "k").await, "missing argument `project`");
    assert_eq!(server.hits(), before, "no request may be sent for a refused argument");
}

#[tokio::test]
async fn unused_arguments_go_to_the_query_or_the_body() {
    let server = Server::start().await;
    let c = caller(&["127.0.0.1/32"]);
    let a = args(json!({"id": "T-1", "q": "a b&c", "limit": 5}));
    for method in ["GET", "DELETE"] {
        assert_ok(&c.call_tool(&spec(method, server.url("/tickets/{id}"), &[]), &a, "k").await);
        let last = server.seen().pop().unwrap();
        assert_eq!(last.method.as_str(), method);
        assert_eq!(last.uri, "/tickets/T-1?limit=5&q=a+b%26c");
        assert!(last.body.is_empty());
    }
    for method in ["POST", "PUT", "PATCH"] {
        assert_ok(&c.call_tool(&spec(method, server.url("/tickets/{id}"), &[]), &a, "k").await);
        let last = server.seen().pop().unwrap();
        assert_eq!(last.method.as_str(), method);
        assert_eq!(last.uri, "/tickets/T-1");
        assert_eq!(last.headers["content-type"], "application/json");
        assert_eq!(serde_json::from_slice::<Value>(&last.body).unwrap(), json!({"q": "a b&c", "limit": 5}));
    }
}

#[tokio::test]
async fn env_headers_are_substituted_at_call_time_and_echoes_redacted() {
    let server = Server::start().await;
    let c = caller(&["127.0.0.1/32"]).with_env_lookup(|name| match name {
        "TOKEN" => Some("tok-abcdef-123".to_owned()),
        _ => None,
    });
    let s = spec("GET", server.url("/echo-headers"), &[("Authorization", "Bearer ${env:TOKEN}"), ("X-Team", "core")]);
    let r = c.call_tool(&s, &Map::new(), "k").await;
    assert_ok(&r);
    assert_eq!(server.seen()[0].headers["authorization"], "Bearer tok-abcdef-123");
    assert!(r.text.contains("authorization: Bearer [redacted]"), "{}", r.text);
    assert!(r.text.contains("x-team: core"), "{}", r.text);
    assert!(!r.text.contains("tok-abcdef-123"), "{}", r.text);

    // A variable that is not set: a clear error, and nothing is sent.
    let s = spec("GET", server.url("/echo-headers"), &[("X-Api-Key", "${env:STEAD_TEST_SURELY_UNSET_VAR}")]);
    let r = c.call_tool(&s, &Map::new(), "k").await;
    assert_error(
        &r,
        "header `X-Api-Key` needs the environment variable `STEAD_TEST_SURELY_UNSET_VAR`, which is not set",
    );
    assert_error(&r, "no request was sent");
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn the_default_lookup_reads_the_process_environment() {
    let server = Server::start().await;
    let path = std::env::var("PATH").expect("tests run with PATH set");
    let c = caller(&["127.0.0.1/32"]);
    let s = spec("GET", server.url("/echo-headers"), &[("X-Path", "${env:PATH}")]);
    let r = c.call_tool(&s, &Map::new(), "k").await;
    assert_ok(&r);
    assert_eq!(server.seen()[0].headers["x-path"], path.as_str());
    assert!(r.text.contains("x-path: [redacted]"), "{}", r.text);
}

// --- responses and limits ----------------------------------------------------------------

#[tokio::test]
async fn a_long_response_is_cut_with_a_marker() {
    let server = Server::start().await;
    let r = caller(&["127.0.0.1/32"]).fetch(&server.url("/big"), "k").await;
    assert_ok(&r);
    let (shown, marker) = r.text.split_once('\n').unwrap();
    assert_eq!(shown, "a".repeat(1_000));
    assert_eq!(marker, "[stead: response truncated: 1000 of 10000 bytes shown]");

    // Without a Content-Length the rest is not downloaded just to count it.
    let r = caller(&["127.0.0.1/32"]).fetch(&server.url("/chunked"), "k").await;
    assert_ok(&r);
    let (shown, marker) = r.text.split_once('\n').unwrap();
    assert_eq!(shown, "b".repeat(1_000));
    assert_eq!(marker, "[stead: response truncated: 1000 of more than 1000 bytes shown]");
}

#[tokio::test]
async fn non_success_statuses_are_errors_with_status_and_cut_body() {
    let server = Server::start().await;
    let c = caller(&["127.0.0.1/32"]);
    for (code, head) in [
        (404, "HTTP 404 Not Found: problem: xxx"),
        (500, "HTTP 500 Internal Server Error: problem:"),
        (418, "HTTP 418 I'm a teapot: problem:"),
    ] {
        let r = c.fetch(&server.url(&format!("/status/{code}")), "k").await;
        assert_error(&r, head);
        assert_error(&r, "[stead: response truncated: 1000 of 5009 bytes shown]");
        assert_eq!(r.status, Some(code));
    }
    let r = c.call_tool(&spec("DELETE", server.url("/status/409"), &[]), &Map::new(), "k").await;
    assert_error(&r, "HTTP 409 Conflict");
    assert_eq!(r.status, Some(409));
}

#[tokio::test]
async fn a_slow_server_times_out_naming_the_limit() {
    let server = Server::start().await;
    let guard = Guard::new(GuardConfig { allow: vec!["127.0.0.1/32".into()], allow_all: false }).unwrap();
    let c = HttpCaller::new(guard, Limits { timeout: Duration::from_millis(300), ..limits() }).unwrap();
    let r = c.fetch(&server.url("/slow"), "k").await;
    assert_error(&r, "timed out after 300ms");
    assert_eq!(r.status, None);
    let r = c.call_tool(&spec("POST", server.url("/slow"), &[]), &Map::new(), "k").await;
    assert_error(&r, "timed out after 300ms");
}

#[tokio::test]
async fn fetch_shows_text_and_json_and_summarizes_the_rest() {
    let server = Server::start().await;
    let c = caller(&["127.0.0.1/32"]);
    let r = c.fetch(&server.url("/hello?x=1"), "k").await;
    assert_ok(&r);
    assert_eq!(
        serde_json::from_str::<Value>(&r.text).unwrap(),
        json!({"ok": true, "method": "GET", "uri": "/hello?x=1"})
    );
    let r = c.fetch(&server.url("/png"), "k").await;
    assert_ok(&r);
    assert_eq!(r.text, "[stead: image/png response not shown: 4 bytes]");
    let r = c.fetch(&server.url("/no-type"), "k").await;
    assert_eq!(r.text, "plain words");
    let r = c.fetch(&server.url("/no-type?binary"), "k").await;
    assert_eq!(r.text, "[stead: binary response without a content type not shown: 3 bytes]");
}

#[tokio::test]
async fn fetch_refuses_what_is_not_an_http_url() {
    let c = caller(&[]);
    assert_error(&c.fetch("not a url", "k").await, "is not a valid URL");
    assert_error(&c.fetch("file:///etc/passwd", "k").await, "not an http:// or https:// URL");
    assert_error(&c.fetch("gopher://127.0.0.1/", "k").await, "not an http:// or https:// URL");
}

#[tokio::test]
async fn unreachable_hosts_are_tool_errors() {
    // Bind, learn the port, close: nothing listens there any more.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let r = caller(&["127.0.0.1/32"]).fetch(&format!("http://127.0.0.1:{port}/"), "k").await;
    assert_error(&r, "the request failed");
    assert_eq!(r.status, None);
}

#[test]
fn the_fetch_schema_takes_one_url() {
    assert_eq!(
        HttpCaller::fetch_tool_schema(),
        json!({
            "type": "object",
            "properties": {"url": {"type": "string", "description": "The http:// or https:// URL to GET."}},
            "required": ["url"],
            "additionalProperties": false
        })
    );
}

#[test]
fn limits_must_be_usable() {
    let guard = || Guard::new(GuardConfig::default()).unwrap();
    assert!(matches!(HttpCaller::new(guard(), Limits { timeout: Duration::ZERO, ..limits() }), Err(Error::Limits(_))));
    assert!(matches!(HttpCaller::new(guard(), Limits { max_response_bytes: 0, ..limits() }), Err(Error::Limits(_))));
}

/// The engine runs calls on a multi-threaded runtime behind `async_trait`: the caller and its
/// futures must be `Send` and `Sync`.
#[test]
fn callers_and_their_futures_can_cross_threads() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: T) {}
    let c = caller(&[]);
    send_sync(&c);
    let s = spec("GET", "https://api.example.com/{id}".into(), &[]);
    let a = Map::new();
    send(c.call_tool(&s, &a, "k"));
    send(c.fetch("https://example.com/", "k"));
}
