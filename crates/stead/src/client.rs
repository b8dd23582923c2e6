//! The client verbs: thin calls to the HTTP API. Data to stdout, messages to stderr; exit
//! status 1 when the server reports an error (its code and message are printed).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::ClientArgs;
use crate::render::{Renderer, SseFrame, SseParser};

struct Client {
    base: String,
    key: Option<String>,
    http: reqwest::Client,
}

/// An error the server answered with, printed as `error: CODE: message`.
#[derive(Debug)]
struct ServerError {
    status: u16,
    code: String,
    message: String,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.message)
    }
}

impl std::error::Error for ServerError {}

impl Client {
    fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().build().context("cannot build the HTTP client")?;
        Ok(Self { base: args.url.trim_end_matches('/').to_owned(), key: args.api_key.clone(), http })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(k) = &self.key {
            r = r.bearer_auth(k);
        }
        r
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.with_context(|| format!("cannot reach the Stead server at {}", self.base))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let err = &body["error"];
        Err(ServerError {
            status,
            code: err["code"].as_str().unwrap_or("http_error").to_owned(),
            message: err["message"].as_str().unwrap_or("the server gave no details").to_owned(),
        }
        .into())
    }

    async fn json(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = self.send(req).await?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        resp.json().await.context("the server's answer is not JSON")
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub async fn get_print(args: &ClientArgs, path: &str) -> anyhow::Result<ExitCode> {
    let c = Client::new(args)?;
    let v = c.json(c.request(reqwest::Method::GET, path)).await?;
    print_json(&v);
    Ok(ExitCode::SUCCESS)
}

pub async fn delete(args: &ClientArgs, path: &str) -> anyhow::Result<ExitCode> {
    let c = Client::new(args)?;
    c.json(c.request(reqwest::Method::DELETE, path)).await?;
    eprintln!("deleted");
    Ok(ExitCode::SUCCESS)
}

pub async fn agent_apply(args: &ClientArgs, file: &Path) -> anyhow::Result<ExitCode> {
    let text = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("cannot read the spec from stdin")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let is_json = file.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
    let content_type = if is_json { "application/json" } else { "application/yaml" };
    let c = Client::new(args)?;
    let resp =
        c.send(c.request(reqwest::Method::POST, "/v1/agents").header("content-type", content_type).body(text)).await?;
    let created = resp.status() == reqwest::StatusCode::CREATED;
    let v: Value = resp.json().await?;
    if args.json {
        print_json(&v);
    } else {
        println!("{} v{}", v["name"].as_str().unwrap_or("?"), v["version"]);
        eprintln!("{}", if created { "stored a new version" } else { "unchanged (identical to the latest version)" });
    }
    Ok(ExitCode::SUCCESS)
}

/// `stead secrets set NAME`: the value comes from stdin, so it never sits in the shell's history
/// or the process list.
pub async fn secret_set(args: &ClientArgs, name: &str, scope: &str) -> anyhow::Result<ExitCode> {
    let mut value = std::io::read_to_string(std::io::stdin()).context("cannot read the secret from stdin")?;
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    let c = Client::new(args)?;
    let body = json!({"name": name, "value": value, "scope": scope});
    let v = c.json(c.request(reqwest::Method::POST, "/v1/secrets").json(&body)).await?;
    if args.json {
        print_json(&v);
    } else {
        println!("{} v{} ({})", v["name"].as_str().unwrap_or(name), v["version"], v["scope"].as_str().unwrap_or(scope));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn session_create(
    args: &ClientArgs,
    agent: &str,
    version: Option<u32>,
    metadata: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let metadata: Value = match metadata {
        Some(m) => serde_json::from_str(m).context("--metadata must be a JSON object")?,
        None => json!({}),
    };
    let c = Client::new(args)?;
    let body = json!({"agent": agent, "version": version, "metadata": metadata});
    let v = c.json(c.request(reqwest::Method::POST, "/v1/sessions").json(&body)).await?;
    if args.json {
        print_json(&v);
    } else {
        // Just the id, so `SESSION=$(stead session create --agent x)` works.
        println!("{}", v["id"].as_str().unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn events(args: &ClientArgs, session: &str, after: u64, follow: bool) -> anyhow::Result<ExitCode> {
    let c = Client::new(args)?;
    if follow {
        let req = c
            .request(reqwest::Method::GET, &format!("/v1/sessions/{session}/events?after={after}"))
            .header("accept", "text/event-stream");
        let resp = c.send(req).await?;
        let mut renderer = Renderer::new(args.json);
        stream_frames(resp, |f| {
            renderer.event_line(&f);
            true
        })
        .await?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut after = after;
    let mut renderer = Renderer::new(args.json);
    loop {
        let page = c
            .json(c.request(reqwest::Method::GET, &format!("/v1/sessions/{session}/events?after={after}&limit=1000")))
            .await?;
        for e in page["data"].as_array().into_iter().flatten() {
            renderer.stored_event_line(e);
        }
        after = page["next_after"].as_u64().unwrap_or(after);
        if !page["has_more"].as_bool().unwrap_or(false) {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run(args: &ClientArgs, session: &str, text: &str, detach: bool) -> anyhow::Result<ExitCode> {
    let c = Client::new(args)?;
    let body = json!({"input": text, "stream": !detach});
    let req = c.request(reqwest::Method::POST, &format!("/v1/sessions/{session}/runs")).json(&body);
    if detach {
        let v = c.json(req).await?;
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    render_run_stream(&c, c.send(req).await?, args.json).await
}

/// The run that waits for tool outputs: `id` itself, or the waiting run of session `id`.
async fn waiting_run(c: &Client, id: &str) -> anyhow::Result<Value> {
    if !id.starts_with("sess_") {
        return c.json(c.request(reqwest::Method::GET, &format!("/v1/runs/{id}"))).await;
    }
    let mut after = String::new();
    loop {
        let page = c.json(c.request(reqwest::Method::GET, &format!("/v1/sessions/{id}/runs?limit=100{after}"))).await?;
        if let Some(run) = page["data"].as_array().into_iter().flatten().find(|r| r["status"] == "requires_action") {
            return Ok(run.clone());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) if page["has_more"].as_bool() == Some(true) => after = format!("&after={cursor}"),
            _ => bail!("no run of session {id} is waiting for tool outputs"),
        }
    }
}

pub async fn submit(
    args: &ClientArgs,
    id: &str,
    outputs: &[String],
    answer: Option<&str>,
    detach: bool,
) -> anyhow::Result<ExitCode> {
    let c = Client::new(args)?;
    let run_record = waiting_run(&c, id).await?;
    let run = run_record["id"].as_str().unwrap_or(id).to_owned();
    let mut list = Vec::new();
    if let Some(text) = answer {
        let calls = run_record["required_action"]["tool_calls"].as_array().cloned().unwrap_or_default();
        let [call] = calls.as_slice() else {
            bail!(
                "--answer needs exactly one waiting call; run {run} waits for {}: use --output CALL_ID=TEXT",
                calls.len()
            );
        };
        list.push(json!({"call_id": call["id"], "output": text}));
    }
    for o in outputs {
        let Some((call_id, output)) = o.split_once('=') else {
            bail!("--output must be CALL_ID=TEXT, got {o:?}");
        };
        list.push(json!({"call_id": call_id, "output": output}));
    }
    let body = json!({"tool_outputs": list, "stream": !detach});
    let req = c.request(reqwest::Method::POST, &format!("/v1/runs/{run}/tool_outputs")).json(&body);
    if detach {
        print_json(&c.json(req).await?);
        return Ok(ExitCode::SUCCESS);
    }
    render_run_stream(&c, c.send(req).await?, args.json).await
}

pub async fn cancel(args: &ClientArgs, run: &str, reason: Option<&str>) -> anyhow::Result<ExitCode> {
    let c = Client::new(args)?;
    let body = json!({"reason": reason});
    let v = c.json(c.request(reqwest::Method::POST, &format!("/v1/runs/{run}/cancel")).json(&body)).await?;
    print_json(&v);
    Ok(ExitCode::SUCCESS)
}

async fn render_run_stream(_c: &Client, resp: reqwest::Response, json: bool) -> anyhow::Result<ExitCode> {
    let mut renderer = Renderer::new(json);
    let mut final_status = None;
    stream_frames(resp, |f| {
        if f.event == "run" {
            final_status =
                serde_json::from_str::<Value>(&f.data).ok().and_then(|v| v["status"].as_str().map(str::to_owned));
        }
        renderer.run_frame(&f);
        true
    })
    .await?;
    Ok(match final_status.as_deref() {
        Some("completed") | Some("requires_action") => ExitCode::SUCCESS,
        Some(_) => ExitCode::FAILURE,
        None => {
            eprintln!("error: the stream ended before the run finished; see `stead runs get`");
            ExitCode::FAILURE
        }
    })
}

/// Feeds each server-sent event to `on_frame` until the stream ends or it returns false.
async fn stream_frames(resp: reqwest::Response, mut on_frame: impl FnMut(SseFrame) -> bool) -> anyhow::Result<()> {
    let mut parser = SseParser::default();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the event stream broke")?;
        for frame in parser.push(&chunk) {
            if !on_frame(frame) {
                return Ok(());
            }
        }
    }
    Ok(())
}

pub async fn audit_verify(
    args: &ClientArgs,
    session: &str,
    data_dir: Option<&Path>,
    tenant: &str,
) -> anyhow::Result<ExitCode> {
    let report: Value = match data_dir {
        Some(dir) => {
            let store = stead_store_sqlite::SqliteStore::open(stead_store_sqlite::SqliteOptions::new(dir))
                .with_context(|| {
                    format!("cannot open {} (is a server using it? then omit --data-dir)", dir.display())
                })?;
            let tenant = stead_core::ids::TenantId::new(tenant)?;
            let id: stead_core::ids::SessionId = session.parse()?;
            let r = stead_engine::verify_session(store.as_ref(), &tenant, &id).await?;
            serde_json::to_value(r)?
        }
        None => {
            let c = Client::new(args)?;
            c.json(c.request(reqwest::Method::GET, &format!("/v1/sessions/{session}/audit"))).await?
        }
    };
    if args.json {
        print_json(&report);
    } else if report["ok"].as_bool() == Some(true) {
        println!("ok: {} events verified, chain intact", report["events_verified"]);
    } else {
        let b = &report["first_broken"];
        println!("BROKEN at event {}: {}", b["seq"], b["reason"].as_str().unwrap_or("?"));
        println!("({} events before it verified)", report["events_verified"]);
    }
    Ok(if report["ok"].as_bool() == Some(true) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub async fn approvals_list(args: &ClientArgs, all: bool, session: Option<&str>) -> anyhow::Result<ExitCode> {
    let c = Client::new(args)?;
    let mut query = format!("/v1/approvals?limit=100&status={}", if all { "all" } else { "pending" });
    if let Some(s) = session {
        query.push_str(&format!("&session_id={s}"));
    }
    let page = c.json(c.request(reqwest::Method::GET, &query)).await?;
    if args.json {
        print_json(&page);
        return Ok(ExitCode::SUCCESS);
    }
    let items = page["data"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        eprintln!("no approvals {}", if all { "" } else { "waiting" });
    }
    for a in items {
        println!(
            "{} {:<8} {}({}) role={} expires={}  [{}]",
            a["id"].as_str().unwrap_or("?"),
            a["status"].as_str().unwrap_or("?"),
            a["tool_name"].as_str().unwrap_or("?"),
            a["arguments"].as_str().unwrap_or(""),
            a["role"].as_str().unwrap_or("?"),
            a["expires_at"].as_str().unwrap_or("?"),
            a["reason"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn decide(args: &ClientArgs, id: &str, verb: &str, body: Value) -> anyhow::Result<ExitCode> {
    let c = Client::new(args)?;
    let v = c.json(c.request(reqwest::Method::POST, &format!("/v1/approvals/{id}/{verb}")).json(&body)).await?;
    if args.json {
        print_json(&v);
    } else {
        println!("{} {}", v["id"].as_str().unwrap_or(id), v["status"].as_str().unwrap_or("?"));
    }
    Ok(ExitCode::SUCCESS)
}
