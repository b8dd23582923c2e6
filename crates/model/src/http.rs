//! What the HTTP providers share: the client, connection details, sending a request, reading
//! bodies within limits, status and transport errors, timeouts, streaming, and keeping the API
//! key out of errors. Each provider brings its URL, its headers and its wire format (`Wire`).

use std::marker::PhantomData;
use std::sync::{Arc, Once};
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::Value;
use stead_core::error::error_chain;

use crate::sse::SseDecoder;
use crate::wire::{error_message, quoted};
use crate::{Error, ErrorKind, ModelRequest, ModelResponse};

/// A complete response body larger than this is refused rather than buffered.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Error bodies are only read this far: we want the message, not a megabyte of HTML.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// Builds the HTTP client all providers share (one connection pool).
///
/// reqwest is built with `rustls-no-provider` to avoid compiling aws-lc; `ring` is installed as
/// the process-wide rustls provider first, unless someone installed one already.
pub fn http_client() -> Result<reqwest::Client, Error> {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        // A redirect would either turn our POST into a GET or carry the key to another host;
        // the operator should configure the final URL instead.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("stead/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::new(ErrorKind::Config, format!("cannot build the HTTP client: {e}")))
}

/// A provider's wire format: the request body, a complete response body, and stream events
/// (`S` builds the response from them).
pub(crate) struct Wire<S> {
    request_body: fn(&ModelRequest) -> Value,
    parse_response: fn(&[u8], &str) -> Result<ModelResponse, Error>,
    stream: PhantomData<fn() -> S>,
}

impl<S: Accumulator> Wire<S> {
    /// `parse_response(body, requested_model)` parses a complete (non-streamed) response body.
    pub(crate) const fn new(
        request_body: fn(&ModelRequest) -> Value,
        parse_response: fn(&[u8], &str) -> Result<ModelResponse, Error>,
    ) -> Self {
        Self { request_body, parse_response, stream: PhantomData }
    }
}

#[cfg(test)]
impl<S: Accumulator> Wire<S> {
    /// Feeds `body` in as a complete response and as one stream event, for tests that only
    /// check nothing panics.
    pub(crate) fn feed(&self, body: &str) {
        let _ = (self.parse_response)(body.as_bytes(), "m");
        let mut acc = S::default();
        let _ = acc.event(&[body.to_owned()]);
        let _ = acc.finish("m");
    }
}

/// Builds a response from stream events, in arrival order.
pub(crate) trait Accumulator: Default {
    /// Takes one event's data lines. Returns the content delta it carried, if any.
    fn event(&mut self, lines: &[String]) -> Result<Option<String>, Error>;
    /// Whether the server said the response is over; nothing after that matters.
    fn done(&self) -> bool;
    /// Ends the stream, or says it was cut short.
    fn finish(self, requested_model: &str) -> Result<ModelResponse, Error>;
}

/// The full URL of an API below `base_url`; `url` gets the base without trailing slashes.
pub(crate) fn api_url(base_url: &str, url: impl FnOnce(&str) -> String) -> Result<reqwest::Url, Error> {
    let base = base_url.trim().trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(Error::new(
            ErrorKind::Config,
            format!("model base URL `{base}` must start with http:// or https://"),
        ));
    }
    reqwest::Url::parse(&url(base))
        .map_err(|e| Error::new(ErrorKind::Config, format!("model base URL `{base}` is invalid: {e}")))
}

/// A header value carrying the API key, marked sensitive so it is never logged.
pub(crate) fn key_header(value: &str) -> Result<HeaderValue, Error> {
    let mut v = HeaderValue::from_str(value)
        .map_err(|_| Error::new(ErrorKind::Config, "the model API key contains characters not allowed in a header"))?;
    v.set_sensitive(true);
    Ok(v)
}

/// Connection details shared by every provider for one (URL, key) pair.
struct Endpoint {
    http: reqwest::Client,
    url: reqwest::Url,
    /// Sent with every request: the provider's authentication and version headers.
    headers: HeaderMap,
    /// Kept only to scrub it from anything a server echoes back.
    key: Option<String>,
}

/// The HTTP side of one provider: an endpoint and a per-request timeout. Cloning is cheap and
/// shares the connection pool.
#[derive(Clone)]
pub(crate) struct Client {
    endpoint: Arc<Endpoint>,
    timeout: Duration,
}

impl Client {
    /// `headers` go out with every request; `key` is what to scrub from errors.
    pub(crate) fn new(
        http: reqwest::Client,
        url: reqwest::Url,
        headers: HeaderMap,
        key: Option<String>,
        timeout: Duration,
    ) -> Self {
        Self { endpoint: Arc::new(Endpoint { http, url, headers, key }), timeout }
    }

    /// The same endpoint and connection pool with another per-request timeout.
    pub(crate) fn with_timeout(&self, timeout: Duration) -> Self {
        Self { endpoint: self.endpoint.clone(), timeout }
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn url(&self) -> &str {
        self.endpoint.url.as_str()
    }

    #[cfg(test)]
    pub(crate) fn same_endpoint(&self, other: &Client) -> bool {
        Arc::ptr_eq(&self.endpoint, &other.endpoint)
    }

    /// `Debug` for a provider named `name`: URL, whether there is a key (never the key), timeout.
    pub(crate) fn debug(&self, name: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(name)
            .field("url", &self.url())
            .field("has_key", &self.endpoint.key.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }

    /// One model call in format `wire`. Non-streaming calls must finish within the timeout;
    /// streaming calls must start within it and never pause longer than it between chunks.
    pub(crate) async fn complete<S: Accumulator + Send>(
        &self,
        wire: &Wire<S>,
        req: &ModelRequest,
        on_delta: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<ModelResponse, Error> {
        tracing::debug!(url = %self.endpoint.url, model = %req.model, stream = req.stream, "model call");
        self.complete_inner(wire, req, on_delta).await.map_err(|e| self.scrubbed(e))
    }

    /// Replaces the key wherever a server echoed it.
    pub(crate) fn scrubbed(&self, mut err: Error) -> Error {
        if let Some(k) = &self.endpoint.key
            && err.message.contains(k.as_str())
        {
            err.message = err.message.replace(k.as_str(), "[redacted]");
        }
        err
    }

    async fn send<S>(&self, wire: &Wire<S>, req: &ModelRequest) -> Result<reqwest::Response, Error> {
        let body = serde_json::to_vec(&(wire.request_body)(req))
            .map_err(|e| Error::new(ErrorKind::Config, format!("cannot encode the model request: {e}")))?;
        let mut builder = self
            .endpoint
            .http
            .post(self.endpoint.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .headers(self.endpoint.headers.clone())
            .body(body);
        if req.stream {
            builder = builder.header(reqwest::header::ACCEPT, "text/event-stream");
        }
        let resp = builder.send().await.map_err(|e| transport_error(&e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let headers = resp.headers().clone();
        let body = read_limited(resp, MAX_ERROR_BODY_BYTES, true).await.unwrap_or_default();
        Err(status_error(status.as_u16(), &headers, &body))
    }

    async fn complete_inner<S: Accumulator + Send>(
        &self,
        wire: &Wire<S>,
        req: &ModelRequest,
        on_delta: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<ModelResponse, Error> {
        if !req.stream {
            // One deadline covers connecting, waiting and reading the whole body.
            return tokio::time::timeout(self.timeout, async {
                let resp = self.send(wire, req).await?;
                let body = read_limited(resp, MAX_BODY_BYTES, false).await?;
                (wire.parse_response)(&body, &req.model)
            })
            .await
            .unwrap_or_else(|_| Err(self.timed_out()));
        }

        // Streaming: the deadline covers the response headers, and then each gap between
        // chunks, so a long but steady generation is not cut off (Anthropic pings meanwhile).
        let mut resp =
            tokio::time::timeout(self.timeout, self.send(wire, req)).await.map_err(|_| self.timed_out())??;
        if !is_event_stream(resp.headers()) {
            // Some servers and proxies ignore `stream: true` and answer with one JSON body.
            let body = tokio::time::timeout(self.timeout, read_limited(resp, MAX_BODY_BYTES, false))
                .await
                .map_err(|_| self.timed_out())??;
            let r = (wire.parse_response)(&body, &req.model)?;
            if let Some(c) = &r.content {
                on_delta(c);
            }
            return Ok(r);
        }
        let mut decoder = SseDecoder::default();
        let mut acc = S::default();
        let handle = |acc: &mut S, events: Vec<Vec<String>>| -> Result<(), Error> {
            for lines in events {
                if acc.done() {
                    break;
                }
                if let Some(delta) = acc.event(&lines)? {
                    on_delta(&delta);
                }
            }
            Ok(())
        };
        loop {
            let chunk = tokio::time::timeout(self.timeout, resp.chunk()).await.map_err(|_| self.timed_out())?;
            match chunk {
                Ok(Some(bytes)) => handle(&mut acc, decoder.push(&bytes)?)?,
                Ok(None) => {
                    handle(&mut acc, decoder.finish()?)?;
                    break;
                }
                Err(e) if e.is_timeout() => return Err(self.timed_out()),
                // The connection broke mid-body: whatever we have is incomplete.
                Err(e) => {
                    return Err(Error::new(
                        ErrorKind::StreamCut,
                        format!("model stream broke off: {}", error_chain(&e)),
                    ));
                }
            }
            if acc.done() {
                // Nothing after the end (`[DONE]`, `message_stop`) matters, but reading the
                // (normally immediate) end of the body lets the connection go back to the pool;
                // a server that keeps it open just loses that connection.
                let _ = tokio::time::timeout(Duration::from_millis(250), async {
                    while let Ok(Some(_)) = resp.chunk().await {}
                })
                .await;
                break;
            }
        }
        acc.finish(&req.model)
    }

    fn timed_out(&self) -> Error {
        Error::new(ErrorKind::Timeout, format!("model call timed out after {}s", self.timeout.as_secs_f64()))
    }
}

/// The part of an HTTP provider (a struct with a `client: Client` field) that is the same for
/// every provider: `Debug` (URL, whether there is a key, timeout), `with_timeout`, `timeout`,
/// `url` (documented by `url_doc`) and `ModelProvider`, calling in format `wire`.
macro_rules! http_provider {
    ($provider:ident, $wire:expr, $url_doc:literal) => {
        impl std::fmt::Debug for $provider {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.client.debug(stringify!($provider), f)
            }
        }

        impl $provider {
            /// The same server and connection pool with another per-request timeout.
            pub fn with_timeout(&self, timeout: std::time::Duration) -> Self {
                Self { client: self.client.with_timeout(timeout) }
            }

            pub fn timeout(&self) -> std::time::Duration {
                self.client.timeout()
            }

            #[doc = $url_doc]
            pub fn url(&self) -> &str {
                self.client.url()
            }

            #[cfg(test)]
            pub(crate) fn same_endpoint(&self, other: &Self) -> bool {
                self.client.same_endpoint(&other.client)
            }
        }

        #[async_trait::async_trait]
        impl $crate::ModelProvider for $provider {
            /// Non-streaming calls must finish within the timeout; streaming calls must start
            /// within it and never pause longer than it between chunks.
            async fn complete(
                &self,
                req: &$crate::ModelRequest,
                on_delta: &(dyn for<'s> Fn(&'s str) + Send + Sync),
            ) -> Result<$crate::ModelResponse, $crate::Error> {
                self.client.complete(&$wire, req, on_delta).await
            }
        }
    };
}
pub(crate) use http_provider;

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| !ct.trim_start().to_ascii_lowercase().starts_with("application/json"))
}

/// Reads a body up to `limit` bytes; beyond that it is cut (`truncate`, for error bodies) or
/// refused.
async fn read_limited(mut resp: reqwest::Response, limit: usize, truncate: bool) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(bytes)) => {
                if out.len() + bytes.len() > limit {
                    if truncate {
                        out.extend_from_slice(&bytes[..limit - out.len()]);
                        return Ok(out);
                    }
                    return Err(Error::new(ErrorKind::Malformed, "model response body is too large"));
                }
                out.extend_from_slice(&bytes);
            }
            Ok(None) => return Ok(out),
            Err(e) if e.is_timeout() => return Err(Error::new(ErrorKind::Timeout, "model call timed out")),
            Err(e) => {
                return Err(Error::new(ErrorKind::StreamCut, format!("model response broke off: {}", error_chain(&e))));
            }
        }
    }
}

fn transport_error(e: &reqwest::Error) -> Error {
    let kind = if e.is_timeout() { ErrorKind::Timeout } else { ErrorKind::Transport };
    Error::new(kind, format!("cannot reach the model server: {}", error_chain(e)))
}

/// Maps a non-success HTTP status to an error kind, quoting the server's own message. Anthropic's
/// 529 (overloaded) is a 5xx and so a retryable server error; its 413 a bad request.
fn status_error(status: u16, headers: &HeaderMap, body: &[u8]) -> Error {
    let kind = match status {
        401 | 403 => ErrorKind::Auth,
        408 => ErrorKind::Timeout,
        409 | 429 => ErrorKind::RateLimited,
        300..=399 => ErrorKind::Config,
        400..=499 => ErrorKind::BadRequest,
        _ => ErrorKind::Server,
    };
    let detail = server_message(body);
    let reason = reqwest::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    let mut message = format!("model server returned {status} {reason}").trim_end().to_owned();
    if kind == ErrorKind::Config {
        let to = headers.get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("elsewhere");
        message.push_str(&format!(" (redirect to {to}); configure the final base URL"));
    } else if !detail.is_empty() {
        message.push_str(": ");
        message.push_str(&detail);
    }
    Error::new(kind, message).with_status(status).with_retry_after(retry_after(headers))
}

fn server_message(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(v) => error_message(&v),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    quoted(&text)
}

/// `retry-after-ms` (OpenAI) or `Retry-After` in seconds. HTTP dates are not worth a date
/// parser here: without a value, backoff applies.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite() && *v >= 0.0) {
        return Some(Duration::from_secs_f64((ms / 1000.0).min(86_400.0)));
    }
    get("retry-after")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn statuses_map_to_kinds() {
        let cases = [
            (400, ErrorKind::BadRequest),
            (401, ErrorKind::Auth),
            (403, ErrorKind::Auth),
            (404, ErrorKind::BadRequest),
            (408, ErrorKind::Timeout),
            (409, ErrorKind::RateLimited),
            (422, ErrorKind::BadRequest),
            (429, ErrorKind::RateLimited),
            (500, ErrorKind::Server),
            (503, ErrorKind::Server),
            (302, ErrorKind::Config),
        ];
        for (status, kind) in cases {
            let e = status_error(status, &HeaderMap::new(), b"");
            assert_eq!(e.kind, kind, "{status}");
            assert_eq!(e.status, Some(status));
        }
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(retry_after(&headers(&[("retry-after", "3")])), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(&headers(&[("retry-after", "0.5")])), Some(Duration::from_millis(500)));
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "250"), ("retry-after", "9")])),
            Some(Duration::from_millis(250))
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")])), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "-1")])), None);
    }

    #[test]
    fn server_message_is_quoted_and_cut() {
        let e =
            status_error(400, &HeaderMap::new(), br#"{"error":{"message":"model `x` not found","type":"invalid"}}"#);
        assert_eq!(e.message, "model server returned 400 Bad Request: model `x` not found");
        let long = "é".repeat(2000);
        let e = status_error(500, &HeaderMap::new(), long.as_bytes());
        assert!(e.message.chars().count() < 600);
    }
}
