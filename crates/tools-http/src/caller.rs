//! The shared HTTP client and the life of one call: the guard's check before every hop,
//! redirects followed by hand, the body read up to the limit, the result worded for the model.
//!
//! Redirects are followed here rather than by reqwest's policy because a policy can refuse a
//! hop but cannot change the request: only by hand can the spec's headers (which may carry
//! `${env:…}` credentials) be dropped when a redirect leaves their origin.

use std::sync::{Arc, Once};
use std::time::Duration;
use stead_core::error::error_chain;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Map, Value};

use crate::guard::{Guard, Refused};
use crate::resolve::GuardedResolver;
use crate::spec::{self, EnvLookup, HttpToolSpec, Prepared};
use crate::{Error, Limits, ToolResult};

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Makes HTTP tool calls through one client (one connection pool) whose every connection
/// goes to an address the guard allowed. Cheap to share behind an `Arc`.
pub struct HttpCaller {
    client: reqwest::Client,
    guard: Arc<Guard>,
    limits: Limits,
    env: Arc<EnvLookup>,
}

impl std::fmt::Debug for HttpCaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCaller").field("guard", &self.guard).field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl HttpCaller {
    /// Builds the client: DNS through the guard, no proxy from the environment (`HTTP_PROXY`
    /// would otherwise connect for us, to anywhere), no automatic redirects.
    pub fn new(guard: Guard, limits: Limits) -> Result<Self, Error> {
        if limits.timeout.is_zero() {
            return Err(Error::Limits("the timeout must be more than zero".into()));
        }
        if limits.max_response_bytes == 0 {
            return Err(Error::Limits("max_response_bytes must be more than zero".into()));
        }
        // reqwest is built with `rustls-no-provider` (no aws-lc); like `stead_model::http_client`,
        // install ring as the process-wide provider unless someone already installed one.
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        let guard = Arc::new(guard);
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver::system(Arc::clone(&guard))))
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            .connect_timeout(limits.timeout)
            .user_agent(concat!("stead/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Client(error_chain(&e)))?;
        let env: Arc<EnvLookup> = Arc::new(|name: &str| std::env::var(name).ok().filter(|v| !v.is_empty()));
        Ok(Self { client, guard, limits, env })
    }

    /// Where `${env:VAR}` header values come from; by default the server's environment (an
    /// empty variable counts as unset). A secret store can plug in here.
    pub fn with_env_lookup(mut self, lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        self.env = Arc::new(lookup);
        self
    }

    /// Calls a `type: http` tool. Sends `Idempotency-Key: <idempotency_key>` so a server that
    /// honours it can recognise a retry after a crash.
    pub async fn call_tool(&self, spec: &HttpToolSpec, args: &Map<String, Value>, idempotency_key: &str) -> ToolResult {
        self.call_tool_with(spec, args, idempotency_key, &|_| None).await
    }

    /// [`HttpCaller::call_tool`] with the vault secrets its headers reference (revealed for
    /// this call only; redacted from anything the server echoes, like `${env:…}` values).
    pub async fn call_tool_with(
        &self,
        spec: &HttpToolSpec,
        args: &Map<String, Value>,
        idempotency_key: &str,
        secrets: &spec::SecretLookup<'_>,
    ) -> ToolResult {
        match spec::prepare(spec, args, &*self.env, secrets) {
            Ok(prepared) => self.execute(prepared, idempotency_key).await,
            Err(message) => ToolResult::error(message),
        }
    }

    /// The built-in `http_fetch`: a GET of `url`. Text and JSON bodies come back as text; other
    /// types are summarized (type and size), not shown.
    pub async fn fetch(&self, url: &str, idempotency_key: &str) -> ToolResult {
        let url = match Url::parse(url.trim()) {
            Ok(u) => u,
            Err(e) => return ToolResult::error(format!("`{url}` is not a valid URL: {e}")),
        };
        if !matches!(url.scheme(), "http" | "https") {
            return ToolResult::error(format!("`{url}` is not an http:// or https:// URL"));
        }
        let prepared =
            Prepared { method: Method::GET, url, headers: HeaderMap::new(), body: None, secrets: Vec::new() };
        self.execute(prepared, idempotency_key).await
    }

    /// JSON Schema of `http_fetch`'s arguments.
    pub fn fetch_tool_schema() -> Value {
        serde_json::json!({
            "type": "object",
            "properties": {
                "url": {"type": "string", "description": "The http:// or https:// URL to GET."}
            },
            "required": ["url"],
            "additionalProperties": false
        })
    }

    async fn execute(&self, prepared: Prepared, idempotency_key: &str) -> ToolResult {
        let Ok(key) = HeaderValue::from_str(idempotency_key) else {
            return ToolResult::error("the idempotency key is not a valid header value; no request was sent");
        };
        // One deadline for everything, so redirects and a slow body cannot add up past it.
        let sent = std::sync::atomic::AtomicBool::new(false);
        match tokio::time::timeout(self.limits.timeout, self.follow(prepared, key, &sent)).await {
            Ok(result) => result,
            // Once a request went out, a deadline says nothing about whether it took effect.
            Err(_) if sent.load(std::sync::atomic::Ordering::SeqCst) => {
                ToolResult::unknown(timeout_message(self.limits.timeout))
            }
            Err(_) => ToolResult::error(timeout_message(self.limits.timeout)),
        }
    }

    async fn follow(&self, prepared: Prepared, key: HeaderValue, sent: &std::sync::atomic::AtomicBool) -> ToolResult {
        let Prepared { mut method, mut url, mut headers, mut body, secrets } = prepared;
        let mut followed = 0;
        loop {
            if let Err(message) = self.guard.check_url(&url) {
                return ToolResult::error(message);
            }
            let mut request =
                self.client.request(method.clone(), url.clone()).headers(headers.clone()).header(IDEMPOTENCY_KEY, &key);
            if let Some(b) = &body {
                request = request.body(b.clone());
            }
            sent.store(true, std::sync::atomic::Ordering::SeqCst);
            let response = match request.send().await {
                Ok(r) => r,
                // Not connected: nothing was sent. Any other failure may come after the
                // server read the request, so its effect is unknown.
                Err(e) if e.is_connect() || e.is_builder() => return ToolResult::error(self.transport_error(&e)),
                Err(e) => return ToolResult::unknown(self.transport_error(&e)),
            };
            let status = response.status();
            let location = response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let Some(location) = location.filter(|_| is_followed_redirect(status)) else {
                return read_response(response, self.limits.max_response_bytes, &secrets).await;
            };
            if followed >= self.limits.max_redirects {
                return ToolResult {
                    text: format!(
                        "too many redirects: {url} answered {status} with a redirect to {location}, and the limit of {} redirects was reached",
                        self.limits.max_redirects
                    ),
                    is_error: true,
                    status: Some(status.as_u16()),
                    outcome_unknown: false,
                };
            }
            let next = match url.join(&location) {
                Ok(next) => next,
                Err(e) => {
                    return ToolResult::error(format!(
                        "{url} redirected to `{location}`, which is not a valid URL: {e}"
                    ));
                }
            };
            if next.origin() != url.origin() {
                // The spec's headers may hold credentials for this origin only.
                let content_type = headers.remove(CONTENT_TYPE);
                headers.clear();
                if let Some(ct) = content_type {
                    headers.insert(CONTENT_TYPE, ct);
                }
            }
            // As browsers and reqwest do: 303 always, and 301/302 after a POST, become a GET.
            if status == StatusCode::SEE_OTHER
                || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND) && method == Method::POST)
            {
                method = Method::GET;
                body = None;
                headers.remove(CONTENT_TYPE);
            }
            url = next;
            followed += 1;
        }
    }

    fn transport_error(&self, e: &reqwest::Error) -> String {
        // The guard's refusal comes back from deep in the connector; say it in its own words.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(s) = source {
            if let Some(refused) = s.downcast_ref::<Refused>() {
                return refused.to_string();
            }
            source = s.source();
        }
        if e.is_timeout() {
            return timeout_message(self.limits.timeout);
        }
        format!("the request failed: {}", error_chain(e))
    }
}

fn is_followed_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

fn timeout_message(limit: Duration) -> String {
    format!("the request timed out after {limit:?} (the HTTP tool timeout limit)")
}

/// The final response as the model sees it: 2xx is a result, anything else a tool error that
/// quotes the status and the (cut) body.
async fn read_response(response: reqwest::Response, max: usize, secrets: &[String]) -> ToolResult {
    let status = response.status();
    let code = status.as_u16();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty());
    let declared = response.content_length();
    let textual = content_type.as_deref().map(is_textual);

    let body = if textual == Some(false) {
        // Not read at all: the model cannot use it, and it may be large.
        let size = declared.map_or_else(|| "unknown size".to_owned(), |n| format!("{n} bytes"));
        format!("[stead: {} response not shown: {size}]", content_type.as_deref().unwrap_or_default())
    } else {
        // A secret cut by the limit must be seen whole to be redacted, so read that much more.
        let slack = secrets.iter().map(String::len).max().unwrap_or(0);
        let read = match read_capped(response, max.saturating_add(slack)).await {
            Ok(read) => read,
            Err(e) => {
                return ToolResult {
                    text: format!("HTTP {code}: the response body broke off: {}", error_chain(&e)),
                    is_error: true,
                    status: Some(code),
                    // The status arrived: the server acted on the request.
                    outcome_unknown: false,
                };
            }
        };
        let total = if read.more {
            declared
                .filter(|&n| n > read.bytes.len() as u64)
                .map_or_else(|| format!("more than {}", read.bytes.len()), |n| n.to_string())
        } else {
            read.bytes.len().to_string()
        };
        if textual.is_none() && looks_binary(&read.bytes[..read.bytes.len().min(max)]) {
            format!("[stead: binary response without a content type not shown: {total} bytes]")
        } else {
            render_text(&read.bytes, read.more, &total, max, secrets)
        }
    };

    let head = format!("HTTP {code} {}", status.canonical_reason().unwrap_or_default()).trim_end().to_owned();
    if status.is_success() {
        let text = if body.is_empty() { format!("{head} (empty body)") } else { body };
        ToolResult { text, is_error: false, status: Some(code), outcome_unknown: false }
    } else {
        let text = if body.is_empty() { head } else { format!("{head}: {body}") };
        ToolResult { text, is_error: true, status: Some(code), outcome_unknown: false }
    }
}

struct Read {
    bytes: Vec<u8>,
    /// The body goes on past `bytes`.
    more: bool,
}

/// Reads at most `cap` bytes of the body, and notes whether there was more. Stops reading
/// there: the rest is never downloaded.
async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Read, reqwest::Error> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = cap - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            return Ok(Read { bytes, more: true });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Read { bytes, more: false })
}

/// The body as text: cut at `max` bytes (on a character boundary, never through a secret) with
/// an explicit marker, and every substituted secret the server echoed replaced.
fn render_text(bytes: &[u8], more: bool, total: &str, max: usize, secrets: &[String]) -> String {
    let truncated = more || bytes.len() > max;
    let mut cut = bytes.len().min(max);
    if truncated {
        // Move the cut before any secret it would split, so no prefix of one is shown.
        loop {
            let before = cut;
            for secret in secrets.iter().map(String::as_bytes) {
                let lowest = cut.saturating_sub(secret.len().saturating_sub(1));
                if let Some(start) = (lowest..cut).find(|&i| bytes[i..].starts_with(secret)) {
                    cut = start;
                }
            }
            if cut == before {
                break;
            }
        }
        while cut > 0 && cut < bytes.len() && (bytes[cut] & 0xc0) == 0x80 {
            cut -= 1;
        }
    }
    let mut text = String::from_utf8_lossy(&bytes[..cut]).into_owned();
    for secret in secrets {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), "[redacted]");
        }
    }
    if truncated {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&format!("[stead: response truncated: {cut} of {total} bytes shown]"));
    }
    text
}

/// Content types whose bodies are text a model can read.
fn is_textual(essence: &str) -> bool {
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || matches!(
            essence,
            "application/json"
                | "application/xml"
                | "application/javascript"
                | "application/ecmascript"
                | "application/x-ndjson"
                | "application/yaml"
                | "application/x-yaml"
                | "application/x-www-form-urlencoded"
        )
}

/// Without a content type: text if it is UTF-8 (possibly cut mid-character) without NULs.
fn looks_binary(bytes: &[u8]) -> bool {
    if bytes.contains(&0) {
        return true;
    }
    match std::str::from_utf8(bytes) {
        Ok(_) => false,
        Err(e) => e.error_len().is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_text_marks_truncation_and_keeps_characters_whole() {
        assert_eq!(render_text(b"hello", false, "5", 10, &[]), "hello");
        assert_eq!(
            render_text(b"hello", true, "more than 5", 5, &[]),
            "hello\n[stead: response truncated: 5 of more than 5 bytes shown]"
        );
        // `é` is two bytes; a cut through it moves before it.
        let text = render_text("aé".as_bytes(), false, "3", 2, &[]);
        assert_eq!(text, "a\n[stead: response truncated: 1 of 3 bytes shown]");
    }

    #[test]
    fn render_text_redacts_secrets_even_across_the_cut() {
        let secrets = vec!["SECRET".to_owned()];
        assert_eq!(render_text(b"a SECRET b", false, "10", 100, &secrets), "a [redacted] b");
        // The limit falls inside the secret: none of it is shown.
        let text = render_text(b"abc SECRET tail", true, "100", 7, &secrets);
        assert_eq!(text, "abc \n[stead: response truncated: 4 of 100 bytes shown]");
        // A secret that ends exactly at the cut is shown whole, so it is redacted.
        let text = render_text(b"abSECRETxx", true, "100", 8, &secrets);
        assert_eq!(text, "ab[redacted]\n[stead: response truncated: 8 of 100 bytes shown]");
    }

    #[test]
    fn textual_types() {
        for t in ["text/plain", "text/html", "application/json", "application/problem+json", "application/atom+xml"] {
            assert!(is_textual(t), "{t}");
        }
        for t in ["image/png", "application/octet-stream", "application/pdf"] {
            assert!(!is_textual(t), "{t}");
        }
        assert!(!looks_binary("héllo".as_bytes()));
        assert!(!looks_binary(&"héllo".as_bytes()[..2]));
        assert!(looks_binary(b"a\0b"));
        assert!(looks_binary(&[0xff, 0xfe, b'a']));
    }
}
