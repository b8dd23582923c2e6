//! The Anthropic Messages API provider: HTTP, status and transport errors, timeouts and
//! streaming. The wire format itself lives in `anthropic_wire`; the API key never reaches a log
//! or an error.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use stead_core::error::error_chain;

use crate::anthropic_wire::{ANTHROPIC_VERSION, StreamAccumulator, parse_response, request_body};
use crate::openai::status_error;
use crate::sse::SseDecoder;
use crate::{Error, ErrorKind, ModelProvider, ModelRequest, ModelResponse};

/// A complete response body larger than this is refused rather than buffered.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Error bodies are only read this far: we want the message, not a megabyte of HTML.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// Connection details shared by every provider for one (base URL, key) pair.
struct Endpoint {
    http: reqwest::Client,
    url: reqwest::Url,
    /// The `x-api-key` header, marked sensitive.
    api_key: Option<HeaderValue>,
    /// Kept only to scrub it from anything a server echoes back.
    key: Option<String>,
}

/// A client of the Anthropic Messages API (or a server speaking it). Cloning is cheap and
/// shares the connection pool.
#[derive(Clone)]
pub struct AnthropicProvider {
    endpoint: Arc<Endpoint>,
    timeout: Duration,
}

impl std::fmt::Debug for AnthropicProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicProvider")
            .field("url", &self.endpoint.url.as_str())
            .field("has_key", &self.endpoint.key.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl AnthropicProvider {
    /// `base_url` is the API root (e.g. `https://api.anthropic.com`); requests go to
    /// `{base_url}/v1/messages`, or to `{base_url}/messages` when the root already ends in `/v1`.
    /// `http` is normally [`crate::http_client`]. `timeout` bounds each request (see `complete`).
    pub fn new(http: reqwest::Client, base_url: &str, api_key: Option<&str>, timeout: Duration) -> Result<Self, Error> {
        let base = base_url.trim().trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("model base URL `{base}` must start with http:// or https://"),
            ));
        }
        let full = if base.ends_with("/v1") { format!("{base}/messages") } else { format!("{base}/v1/messages") };
        let url = reqwest::Url::parse(&full)
            .map_err(|e| Error::new(ErrorKind::Config, format!("model base URL `{base}` is invalid: {e}")))?;
        let key = api_key.map(str::trim).filter(|k| !k.is_empty()).map(str::to_owned);
        let header = match &key {
            Some(k) => {
                let mut v = HeaderValue::from_str(k).map_err(|_| {
                    Error::new(ErrorKind::Config, "the model API key contains characters not allowed in a header")
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Self { endpoint: Arc::new(Endpoint { http, url, api_key: header, key }), timeout })
    }

    /// The same server and connection pool with another per-request timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self { endpoint: self.endpoint.clone(), timeout }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The full messages URL.
    pub fn url(&self) -> &str {
        self.endpoint.url.as_str()
    }

    #[cfg(test)]
    pub(crate) fn same_endpoint(&self, other: &AnthropicProvider) -> bool {
        Arc::ptr_eq(&self.endpoint, &other.endpoint)
    }

    /// Replaces the key wherever a server echoed it.
    fn scrubbed(&self, mut err: Error) -> Error {
        if let Some(k) = &self.endpoint.key
            && err.message.contains(k.as_str())
        {
            err.message = err.message.replace(k.as_str(), "[redacted]");
        }
        err
    }

    async fn send(&self, req: &ModelRequest) -> Result<reqwest::Response, Error> {
        let body = serde_json::to_vec(&request_body(req))
            .map_err(|e| Error::new(ErrorKind::Config, format!("cannot encode the model request: {e}")))?;
        let mut builder = self
            .endpoint
            .http
            .post(self.endpoint.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("anthropic-version", ANTHROPIC_VERSION)
            .body(body);
        if let Some(key) = &self.endpoint.api_key {
            builder = builder.header("x-api-key", key.clone());
        }
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
        // 529 (overloaded) is a 5xx and so a retryable server error; 413 a bad request.
        Err(status_error(status.as_u16(), &headers, &body))
    }

    async fn complete_inner(
        &self,
        req: &ModelRequest,
        on_delta: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<ModelResponse, Error> {
        if !req.stream {
            // One deadline covers connecting, waiting and reading the whole body.
            return tokio::time::timeout(self.timeout, async {
                let resp = self.send(req).await?;
                let body = read_limited(resp, MAX_BODY_BYTES, false).await?;
                parse_response(&body, &req.model)
            })
            .await
            .unwrap_or_else(|_| Err(self.timed_out()));
        }

        // Streaming: the deadline covers the response headers, and then each gap between
        // chunks, so a long but steady generation is not cut off (Anthropic pings meanwhile).
        let mut resp = tokio::time::timeout(self.timeout, self.send(req)).await.map_err(|_| self.timed_out())??;
        if !is_event_stream(resp.headers()) {
            // A proxy that ignores `stream: true` and answers with one JSON body.
            let body = tokio::time::timeout(self.timeout, read_limited(resp, MAX_BODY_BYTES, false))
                .await
                .map_err(|_| self.timed_out())??;
            let r = parse_response(&body, &req.model)?;
            if let Some(c) = &r.content {
                on_delta(c);
            }
            return Ok(r);
        }
        let mut decoder = SseDecoder::default();
        let mut acc = StreamAccumulator::default();
        let handle = |acc: &mut StreamAccumulator, events: Vec<Vec<String>>| -> Result<(), Error> {
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
                // Nothing after `message_stop` matters, but reading the (normally immediate) end
                // of the body lets the connection go back to the pool.
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

#[async_trait]
impl ModelProvider for AnthropicProvider {
    /// Non-streaming calls must finish within the timeout; streaming calls must start within
    /// it and never pause longer than it between chunks.
    async fn complete(
        &self,
        req: &ModelRequest,
        on_delta: &(dyn for<'s> Fn(&'s str) + Send + Sync),
    ) -> Result<ModelResponse, Error> {
        tracing::debug!(url = %self.endpoint.url, model = %req.model, stream = req.stream, "model call");
        self.complete_inner(req, on_delta).await.map_err(|e| self.scrubbed(e))
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(base: &str) -> Result<AnthropicProvider, Error> {
        AnthropicProvider::new(crate::http_client().unwrap(), base, Some(" sk-ant-1 "), Duration::from_secs(1))
    }

    #[test]
    fn urls() {
        assert_eq!(provider("https://api.anthropic.com").unwrap().url(), "https://api.anthropic.com/v1/messages");
        assert_eq!(provider("https://api.anthropic.com/").unwrap().url(), "https://api.anthropic.com/v1/messages");
        assert_eq!(
            provider("http://proxy:8080/anthropic/v1/").unwrap().url(),
            "http://proxy:8080/anthropic/v1/messages"
        );
        assert_eq!(provider("ftp://x").unwrap_err().kind, ErrorKind::Config);
        assert_eq!(provider("http://").unwrap_err().kind, ErrorKind::Config);
    }

    #[test]
    fn debug_and_errors_hide_the_key() {
        let p = provider("https://api.anthropic.com").unwrap();
        assert!(!format!("{p:?}").contains("sk-ant-1"));
        let e = p.scrubbed(Error::new(ErrorKind::Auth, "bad key sk-ant-1!"));
        assert_eq!(e.message, "bad key [redacted]!");
    }
}
