//! What the provider suites share: a real HTTP server on 127.0.0.1 whose replies a script
//! decides (JSON, SSE in pieces, delays, stalls, broken connections), and helpers for calls.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use serde_json::Value;
use stead_core::agent::{ModelSpec, Provider};
use stead_core::message::Message;
use stead_model::{Error, ModelProvider, ModelRequest, ModelResponse, RetryPolicy, complete_with_retry};
use tokio_util::sync::CancellationToken;

/// The API a provider speaks, as far as the test server needs to know it.
pub trait Api {
    /// The path the server answers.
    const ROUTE: &'static str;
    /// What the provider's base URL adds to the server's address.
    const BASE_PATH: &'static str;
    /// The content type of SSE replies.
    const SSE_CONTENT_TYPE: &'static str;

    /// The provider, for a base URL.
    fn provider(base_url: &str, key: Option<&str>, timeout: Duration) -> Self;
}

/// What the test server does for one request.
pub enum Reply {
    Json {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    /// Raw SSE bytes, sent in pieces of `split` bytes with a short pause between them so they
    /// reach the client as separate reads; `abort` breaks the connection after the last piece.
    Sse {
        text: String,
        split: usize,
        abort: bool,
    },
    /// Waits, then replies.
    Delay(Duration, Box<Reply>),
    /// Sends `first` as SSE, then stalls.
    Stall {
        first: String,
    },
}

type Script = dyn Fn(usize, &Value) -> Reply + Send + Sync;

#[derive(Clone)]
pub struct Shared {
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
    script: Arc<Script>,
    /// Notified when a request has arrived.
    pub arrived: Arc<tokio::sync::Notify>,
    sse_content_type: &'static str,
}

/// A server speaking the API of provider `P`.
pub struct TestServer<P> {
    pub base_url: String,
    pub shared: Shared,
    api: PhantomData<P>,
}

impl<P: Api> TestServer<P> {
    pub async fn start(script: impl Fn(usize, &Value) -> Reply + Send + Sync + 'static) -> Self {
        let shared = Shared {
            hits: Arc::default(),
            seen: Arc::default(),
            script: Arc::new(script),
            arrived: Arc::new(tokio::sync::Notify::new()),
            sse_content_type: P::SSE_CONTENT_TYPE,
        };
        let app = Router::new().route(P::ROUTE, post(handle)).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base_url: format!("http://{addr}{}", P::BASE_PATH), shared, api: PhantomData }
    }

    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<(HeaderMap, Value)> {
        self.shared.seen.lock().unwrap().clone()
    }

    pub fn provider(&self, key: Option<&str>, timeout: Duration) -> P {
        P::provider(&self.base_url, key, timeout)
    }
}

async fn handle(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let n = s.hits.fetch_add(1, Ordering::SeqCst);
    let body: Value = serde_json::from_slice(&body).expect("client sent invalid JSON");
    let reply = (s.script)(n, &body);
    s.seen.lock().unwrap().push((headers, body));
    s.arrived.notify_one();
    render(reply, s.sse_content_type).await
}

async fn render(reply: Reply, sse_content_type: &'static str) -> Response {
    match reply {
        Reply::Json { status, headers, body } => {
            let mut b = Response::builder().status(status).header("content-type", "application/json");
            for (k, v) in headers {
                b = b.header(k, v);
            }
            b.body(Body::from(body)).unwrap()
        }
        Reply::Sse { text, split, abort } => {
            let pieces: Vec<Bytes> = text.into_bytes().chunks(split.max(1)).map(Bytes::copy_from_slice).collect();
            let stream = futures_util::stream::unfold((pieces.into_iter(), false), move |(mut it, ended)| async move {
                if ended {
                    return None;
                }
                match it.next() {
                    Some(piece) => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        Some((Ok::<_, std::io::Error>(piece), (it, false)))
                    }
                    None if abort => Some((Err(std::io::Error::other("server went away")), (it, true))),
                    None => None,
                }
            });
            sse_response(Body::from_stream(stream), sse_content_type)
        }
        Reply::Delay(d, inner) => {
            tokio::time::sleep(d).await;
            Box::pin(render(*inner, sse_content_type)).await
        }
        Reply::Stall { first } => {
            let stream = futures_util::stream::unfold(Some(first), |first| async move {
                match first {
                    Some(text) => Some((Ok::<_, std::io::Error>(Bytes::from(text)), None)),
                    None => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        None
                    }
                }
            });
            sse_response(Body::from_stream(stream), sse_content_type)
        }
    }
}

fn sse_response(body: Body, content_type: &'static str) -> Response {
    Response::builder().status(200).header("content-type", content_type).body(body).unwrap()
}

pub fn ok_json(body: Value) -> Reply {
    Reply::Json { status: 200, headers: vec![], body: body.to_string() }
}

pub fn status(status: u16, headers: Vec<(&'static str, String)>, body: Value) -> Reply {
    Reply::Json { status, headers, body: body.to_string() }
}

/// A request for `model` saying "hi", with nothing else set.
pub fn request(model: &str, stream: bool) -> ModelRequest {
    ModelRequest {
        model: model.into(),
        messages: [Message::User { content: "hi".into() }].into_iter().map(Arc::new).collect(),
        tools: vec![],
        temperature: None,
        max_tokens: None,
        stream,
        tool_choice: None,
        parallel_tool_calls: None,
    }
}

/// A spec for `model` of `provider`, with defaults for everything else and no retries.
pub fn spec(provider: Provider, model: &str) -> ModelSpec {
    ModelSpec {
        provider,
        name: model.into(),
        base_url: None,
        api_key_env: None,
        temperature: None,
        max_tokens: None,
        stream: false,
        timeout_secs: 10,
        max_retries: 0,
        chunk_delay_ms: 0,
        tool_choice: None,
        parallel_tool_calls: None,
    }
}

pub const NO_DELTA: &(dyn Fn(&str) + Send + Sync) = &|_| {};
pub const NO_RETRY: &(dyn Fn(u32, &Error) + Send + Sync) = &|_, _| {};

pub fn fast_policy(max_retries: u32) -> RetryPolicy {
    RetryPolicy { max_retries, base_delay: Duration::from_millis(5), max_delay: Duration::from_millis(20) }
}

/// `complete_with_retry` with `fast_policy(max_retries)`, never cancelled.
pub async fn retrying(
    provider: &dyn ModelProvider,
    req: &ModelRequest,
    max_retries: u32,
    on_delta: &(dyn Fn(&str) + Send + Sync),
    on_retry: &(dyn Fn(u32, &Error) + Send + Sync),
) -> Result<ModelResponse, Error> {
    complete_with_retry(provider, req, &fast_policy(max_retries), &CancellationToken::new(), on_delta, on_retry).await
}

/// Collects deltas as they arrive.
#[derive(Default, Clone)]
pub struct Deltas(Arc<Mutex<Vec<String>>>);

impl Deltas {
    pub fn sink(&self) -> impl Fn(&str) + Send + Sync + use<> {
        let v = self.0.clone();
        move |d: &str| v.lock().unwrap().push(d.to_owned())
    }
    pub fn get(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// An address on 127.0.0.1 where nothing listens.
pub async fn closed_address() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

pub const SECS: Duration = Duration::from_secs(10);
