//! Properties over random small boundaries and random calls: narrowing never widens, and a
//! tool that some call may use is always among the visible tools.

mod common;

use common::{tool, tools};
use proptest::prelude::*;
use serde_json::{Value, json};
use stead_policy::{Boundary, CallRequest, Decision, PrincipalInfo};

/// Policies the layers are drawn from: scopes, argument conditions, principal conditions,
/// forbids, approvals, and policies that error on some calls.
const POLICIES: &[&str] = &[
    "permit(principal, action, resource);",
    r#"permit(principal, action, resource == Stead::Tool::"weather");"#,
    r#"permit(principal, action, resource) when { resource in [Stead::Tool::"fetch", Stead::Tool::"calc"] };"#,
    r#"permit(principal, action, resource) when { context.arguments has city && context.arguments.city == "Paris" };"#,
    r#"permit(principal, action, resource == Stead::Tool::"weather") when { context.arguments.days < 3 };"#,
    r#"permit(principal, action, resource) when { principal.tenant == "acme" };"#,
    r#"permit(principal, action, resource) when { principal.roles.contains("ops") && resource.kind != "client" };"#,
    r#"@approval("ops") permit(principal, action, resource == Stead::Tool::"deploy");"#,
    r#"@approval("approver") permit(principal, action, resource) when { context.arguments has env };"#,
    r#"forbid(principal, action, resource == Stead::Tool::"fetch");"#,
    r#"forbid(principal, action, resource) when { principal.roles.contains("intern") };"#,
    r#"forbid(principal, action, resource) when { context.arguments has env && context.arguments.env == "prod" };"#,
    r#"forbid(principal, action, resource) unless { resource.kind == "builtin" || resource.kind == "mcp" };"#,
    r#"forbid(principal, action, resource == Stead::Tool::"calc") when { context.arguments.x.greaterThan(decimal("10.0")) };"#,
];

const TOOLS: &[&str] = &["weather", "fetch", "files/read", "calc", "deploy"];

fn arguments() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        Just(json!({"city": "Paris"})),
        Just(json!({"city": "Oslo", "days": 1})),
        Just(json!({"city": "Paris", "days": 5})),
        Just(json!({"env": "prod"})),
        Just(json!({"env": "staging"})),
        Just(json!({"x": 12.5})),
        Just(json!({"x": 2})),
        Just(json!({"x": 0.123456})),
        Just(json!({"path": "/srv/a", "url": "https://x"})),
    ]
}

fn principal() -> impl Strategy<Value = PrincipalInfo> {
    (prop_oneof![Just("acme"), Just("globex")], proptest::sample::subsequence(vec!["ops", "intern", "dev"], 0..=2))
        .prop_map(|(tenant, roles)| PrincipalInfo {
            id: "issuer|user".into(),
            tenant: tenant.into(),
            roles: roles.into_iter().map(String::from).collect(),
            claims: Default::default(),
        })
}

fn layer() -> impl Strategy<Value = String> {
    proptest::sample::subsequence((0..POLICIES.len()).collect::<Vec<_>>(), 0..=3)
        .prop_map(|picked| picked.into_iter().map(|i| POLICIES[i]).collect::<Vec<_>>().join("\n"))
}

/// Deny < RequireApproval < Allow: how much a decision lets through.
fn rank(d: &Decision) -> u8 {
    match d {
        Decision::Deny { .. } => 0,
        Decision::RequireApproval { .. } => 1,
        Decision::Allow => 2,
    }
}

fn build(layers: &[String]) -> Boundary {
    let named: Vec<(&str, &str)> =
        layers.iter().enumerate().map(|(i, text)| (["tenant", "agent", "session"][i % 3], text.as_str())).collect();
    Boundary::compose(&tools(), &named).unwrap_or_else(|e| panic!("{e}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn narrowing_never_widens(
        layers in proptest::collection::vec(layer(), 0..3),
        extra in layer(),
        calls in proptest::collection::vec(
            (proptest::sample::select(TOOLS), arguments(), principal()), 1..8),
    ) {
        let original = build(&layers);
        let narrowed = original.narrow("narrowing", &extra).unwrap_or_else(|e| panic!("{e}"));
        for (name, args, who) in &calls {
            let t = tool(name);
            let req = CallRequest { principal: who, tool: &t, arguments: args, session: "s" };
            let before = original.authorize(&req);
            let after = narrowed.authorize(&req);
            prop_assert!(
                rank(&after) <= rank(&before),
                "narrowing by {extra:?} widened {name} {args}: {before:?} -> {after:?}"
            );
            // explain decides as authorize does.
            prop_assert_eq!(rank(&narrowed.explain(&req).decision), rank(&after));
        }
    }

    #[test]
    fn a_usable_tool_is_visible(
        layers in proptest::collection::vec(layer(), 1..4),
        who in principal(),
        args in arguments(),
    ) {
        let boundary = build(&layers);
        let visible = boundary.visible_tools(&who, &tools());
        for name in TOOLS {
            let t = tool(name);
            let req = CallRequest { principal: &who, tool: &t, arguments: &args, session: "s" };
            let decision = boundary.authorize(&req);
            prop_assert!(
                decision.is_deny() || visible.iter().any(|v| v == name),
                "{name} is hidden but {args} gives {decision:?} under {layers:?}"
            );
        }
    }
}
