//! Tools and principals shared by the boundary tests.

#![allow(dead_code)]

use serde_json::{Value, json};
use stead_policy::{CallRequest, Decision, PrincipalInfo, ToolInfo, ToolKind};

pub fn tools() -> Vec<ToolInfo> {
    vec![
        ToolInfo {
            name: "weather".into(),
            kind: ToolKind::Builtin,
            host: None,
            arguments_schema: Some(json!({
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            })),
        },
        ToolInfo {
            name: "fetch".into(),
            kind: ToolKind::Http,
            host: Some("api.example.com".into()),
            arguments_schema: Some(json!({
                "type": "object",
                "properties": {"url": {"type": "string"}},
            })),
        },
        ToolInfo {
            name: "files/read".into(),
            kind: ToolKind::Mcp,
            host: Some("mcp.internal".into()),
            arguments_schema: Some(json!({
                "type": "object",
                "properties": {"path": {"type": "string"}},
            })),
        },
        ToolInfo {
            name: "calc".into(),
            kind: ToolKind::Client,
            host: None,
            arguments_schema: Some(json!({
                "type": "object",
                "properties": {
                    "x": {"type": "number"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "opts": {"type": "object", "properties": {"verbose": {"type": ["boolean", "null"]}}},
                },
            })),
        },
        ToolInfo {
            name: "deploy".into(),
            kind: ToolKind::Builtin,
            host: None,
            arguments_schema: Some(json!({
                "type": "object",
                "properties": {"env": {"type": "string", "enum": ["staging", "prod"]}},
            })),
        },
    ]
}

pub fn tool(name: &str) -> ToolInfo {
    tools().into_iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no test tool {name}"))
}

pub fn alice() -> PrincipalInfo {
    PrincipalInfo {
        id: "https://idp.example|alice".into(),
        tenant: "acme".into(),
        roles: vec!["dev".into()],
        claims: json!({"email": "alice@acme.example", "groups": "staff", "picture": 1.23456})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    }
}

/// Authorizes `tool(name)` called by `principal` with `arguments` in session `s1`.
pub fn call(boundary: &stead_policy::Boundary, principal: &PrincipalInfo, name: &str, arguments: Value) -> Decision {
    let tool = tool(name);
    boundary.authorize(&CallRequest { principal, tool: &tool, arguments: &arguments, session: "s1" })
}

/// The reason of a denial, or a panic naming what was decided instead.
pub fn denial(decision: Decision) -> (Vec<String>, String) {
    match decision {
        Decision::Deny { by, reason } => (by, reason),
        other => panic!("expected a denial, got {other:?}"),
    }
}
