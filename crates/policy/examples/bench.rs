//! Authorization cost per tool call with a boundary of 20 policies in three layers, request
//! building (principal, tool, context from JSON arguments) included. Prints figures, asserts
//! nothing. Run: `cargo run --release -p stead-policy --example bench [-- CALLS]`.

use std::time::Instant;

use serde_json::json;
use stead_policy::{Boundary, CallRequest, PrincipalInfo, ToolInfo, ToolKind};

const TENANT: &str = r#"
@id("tenant-only") permit(principal, action, resource) when { principal.tenant == "acme" };
@id("no-client-for-interns") forbid(principal, action, resource)
  when { principal.roles.contains("intern") && resource.kind == "client" };
@id("no-evil-hosts") forbid(principal, action, resource)
  when { resource has host && (resource.host like "*.evil.example" || resource.host == "169.254.169.254") };
@id("verified") forbid(principal, action, resource)
  unless { principal.claims has email_verified && principal.claims.email_verified };
"#;

const AGENT: &str = r#"
@id("weather-cities") permit(principal, action, resource == Stead::Tool::"weather")
  when { ["Paris", "Oslo", "Rome", "Lima"].contains(context.arguments.city) };
@id("weather-days") forbid(principal, action, resource == Stead::Tool::"weather")
  when { context.arguments has days && context.arguments.days > 10 };
@id("fetch-https") permit(principal, action, resource == Stead::Tool::"fetch")
  when { context.arguments.url like "https://*" };
@id("fetch-internal") forbid(principal, action, resource == Stead::Tool::"fetch")
  when { context.arguments.url like "*internal*" };
@id("files-srv") permit(principal, action, resource == Stead::Tool::"files/read")
  when { context.arguments.path like "/srv/*" };
@id("files-dotdot") forbid(principal, action, resource == Stead::Tool::"files/read")
  when { context.arguments.path like "*..*" };
@id("calc") permit(principal, action, resource == Stead::Tool::"calc")
  when { context.arguments.x.lessThan(decimal("1000.0")) };
@id("deploy-staging") permit(principal, action, resource == Stead::Tool::"deploy")
  when { context.arguments.env == "staging" };
@approval("release") @id("deploy-prod") permit(principal, action, resource == Stead::Tool::"deploy")
  when { context.arguments.env == "prod" && principal.roles.contains("dev") };
@id("mcp-only-internal") forbid(principal, action, resource)
  when { resource.kind == "mcp" && !(resource has host && resource.host == "mcp.internal") };
"#;

const SESSION: &str = r#"
@id("session-all") permit(principal, action, resource);
@id("session-no-tags") forbid(principal, action, resource)
  when { context.arguments has tags && context.arguments.tags.contains("secret") };
@id("session-quota") forbid(principal, action, resource == Stead::Tool::"calc")
  when { context.arguments has x && context.arguments.x.greaterThan(decimal("500.0")) };
@id("session-id") forbid(principal, action, resource) when { context.session == "blocked" };
@id("session-groups") forbid(principal, action, resource == Stead::Tool::"deploy")
  when { principal.claims has groups && principal.claims.groups.contains("contractors") };
@id("session-path") forbid(principal, action, resource == Stead::Tool::"files/read")
  when { context.arguments.path like "/srv/private/*" };
"#;

fn tools() -> Vec<ToolInfo> {
    let object = |props: serde_json::Value| Some(json!({"type": "object", "properties": props}));
    vec![
        ToolInfo {
            name: "weather".into(),
            kind: ToolKind::Builtin,
            host: None,
            arguments_schema: object(json!({"city": {"type": "string"}, "days": {"type": "integer"}})),
        },
        ToolInfo {
            name: "fetch".into(),
            kind: ToolKind::Http,
            host: Some("api.example.com".into()),
            arguments_schema: object(json!({"url": {"type": "string"}})),
        },
        ToolInfo {
            name: "files/read".into(),
            kind: ToolKind::Mcp,
            host: Some("mcp.internal".into()),
            arguments_schema: object(json!({"path": {"type": "string"}})),
        },
        ToolInfo {
            name: "calc".into(),
            kind: ToolKind::Client,
            host: None,
            arguments_schema: object(json!({
                "x": {"type": "number"},
                "tags": {"type": "array", "items": {"type": "string"}},
            })),
        },
        ToolInfo {
            name: "deploy".into(),
            kind: ToolKind::Builtin,
            host: None,
            arguments_schema: object(json!({"env": {"type": "string"}})),
        },
    ]
}

fn main() {
    let calls: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let tools = tools();
    let started = Instant::now();
    let boundary = Boundary::compose(&tools, &[("tenant", TENANT), ("agent", AGENT), ("session", SESSION)])
        .unwrap_or_else(|e| panic!("{e}"));
    let build = started.elapsed();
    assert_eq!(boundary.policy_count(), 20);

    let principal = PrincipalInfo {
        id: "https://idp.example|alice".into(),
        tenant: "acme".into(),
        roles: vec!["dev".into(), "staff".into()],
        claims: json!({"email": "alice@acme.example", "email_verified": true, "groups": ["staff"]})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    };
    let cases = [
        ("weather", json!({"city": "Paris", "days": 3})),
        ("weather", json!({"city": "London"})),
        ("fetch", json!({"url": "https://api.example.com/v1/items?q=1"})),
        ("fetch", json!({"url": "https://internal.example.com/"})),
        ("files/read", json!({"path": "/srv/docs/readme.md"})),
        ("calc", json!({"x": 12.25, "tags": ["a", "b", "c"]})),
        ("deploy", json!({"env": "prod"})),
        ("deploy", json!({"env": "staging"})),
    ];
    let by_name = |n: &str| tools.iter().find(|t| t.name == n).cloned();
    let cases: Vec<(ToolInfo, serde_json::Value)> =
        cases.into_iter().filter_map(|(n, a)| Some((by_name(n)?, a))).collect();

    let mut outcomes = [0usize; 3];
    let mut times = Vec::with_capacity(calls);
    for i in 0..calls {
        let (tool, arguments) = &cases[i % cases.len()];
        let req = CallRequest { principal: &principal, tool, arguments, session: "sess_0192" };
        let t = Instant::now();
        let decision = boundary.authorize(&req);
        times.push(t.elapsed());
        outcomes[match decision {
            stead_policy::Decision::Allow => 0,
            stead_policy::Decision::RequireApproval { .. } => 1,
            stead_policy::Decision::Deny { .. } => 2,
        }] += 1;
    }
    times.sort();
    let us = |q: f64| {
        let i = ((times.len() as f64 * q) as usize).min(times.len() - 1);
        times[i].as_secs_f64() * 1e6
    };
    println!(
        "authorize, 20 policies in 3 layers, request building included, {calls} calls \
         ({} allow, {} approval, {} deny):",
        outcomes[0], outcomes[1], outcomes[2]
    );
    println!(
        "  p50 {:.1} µs  p90 {:.1} µs  p99 {:.1} µs  max {:.1} µs  (target p99 <= 100 µs)",
        us(0.50),
        us(0.90),
        us(0.99),
        us(1.0)
    );

    let t = Instant::now();
    let rounds = 1_000;
    for _ in 0..rounds {
        std::hint::black_box(boundary.visible_tools(&principal, &tools));
    }
    println!(
        "visible_tools over {} tools: {:.1} µs per call (mean of {rounds})",
        tools.len(),
        t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
    );
    println!("building the boundary (schema, parse, validate 3 layers): {:.2} ms", build.as_secs_f64() * 1e3);
}
