//! A boundary's decisions, built from real Cedar text against the schema generated from the
//! test tools: the semantics stated in the crate docs, one test each.

mod common;

use common::{alice, call, denial, tool, tools};
use serde_json::json;
use stead_policy::limits::{MAX_ARGUMENT_DEPTH, MAX_POLICIES, MAX_POLICY_TEXT_BYTES};
use stead_policy::{Boundary, CallRequest, Decision, Error, PrincipalInfo, Verdict};

fn agent(text: &str) -> Boundary {
    Boundary::compose(&tools(), &[("agent", text)]).unwrap_or_else(|e| panic!("{e}"))
}

fn refused(layers: &[(&str, &str)]) -> Error {
    match Boundary::compose(&tools(), layers) {
        Ok(_) => panic!("expected the policies to be refused"),
        Err(e) => e,
    }
}

#[test]
fn without_policies_every_declared_tool_is_allowed_and_no_other() {
    for text in ["", "  // only a comment\n"] {
        let b = Boundary::compose(&tools(), &[("tenant", text), ("agent", text)]).unwrap();
        assert!(b.is_unrestricted());
        for t in tools() {
            assert_eq!(call(&b, &alice(), &t.name, json!({"anything": 1.234567})), Decision::Allow);
        }
        let stranger = stead_policy::ToolInfo { name: "shell".into(), ..tool("weather") };
        let d =
            b.authorize(&CallRequest { principal: &alice(), tool: &stranger, arguments: &json!({}), session: "s1" });
        assert!(denial(d).1.contains("`shell` is not one of the tools"));
    }
}

#[test]
fn arguments_allow_some_calls_and_deny_others() {
    let b = agent(
        r#"permit(principal, action, resource == Stead::Tool::"weather")
           when { context.arguments.city == "Paris" };"#,
    );
    assert_eq!(call(&b, &alice(), "weather", json!({"city": "Paris"})), Decision::Allow);
    let (by, reason) = denial(call(&b, &alice(), "weather", json!({"city": "London"})));
    assert!(by.is_empty());
    assert!(reason.contains("no `agent` policy permits this call"), "{reason}");
}

#[test]
fn with_policies_what_is_not_permitted_is_denied() {
    let b = agent(r#"permit(principal, action, resource == Stead::Tool::"weather");"#);
    assert_eq!(call(&b, &alice(), "weather", json!({"city": "Oslo"})), Decision::Allow);
    for other in ["fetch", "files/read", "calc", "deploy"] {
        assert!(call(&b, &alice(), other, json!({})).is_deny(), "{other}");
    }
}

#[test]
fn forbid_overrides_permit() {
    let b = agent(
        r#"permit(principal, action, resource);
           @id("no-prod")
           forbid(principal, action, resource == Stead::Tool::"deploy")
           when { context.arguments has env && context.arguments.env == "prod" };"#,
    );
    assert_eq!(call(&b, &alice(), "deploy", json!({"env": "staging"})), Decision::Allow);
    let (by, reason) = denial(call(&b, &alice(), "deploy", json!({"env": "prod"})));
    assert_eq!(by, ["agent:no-prod"]);
    assert!(reason.contains("forbidden by agent:no-prod"), "{reason}");
}

#[test]
fn a_later_layer_never_widens() {
    let b = Boundary::compose(
        &tools(),
        &[
            ("agent", r#"permit(principal, action, resource == Stead::Tool::"weather");"#),
            ("session", "permit(principal, action, resource);"),
        ],
    )
    .unwrap();
    assert_eq!(b.sources(), ["agent", "session"]);
    assert_eq!(call(&b, &alice(), "weather", json!({"city": "Rome"})), Decision::Allow);
    let (_, reason) = denial(call(&b, &alice(), "fetch", json!({"url": "https://x"})));
    assert!(reason.contains("no `agent` policy permits"), "{reason}");

    // And narrowing does narrow: the session layer denies what the agent layer allows.
    let narrowed = b
        .narrow(
            "narrow-1",
            r#"permit(principal, action, resource);
               forbid(principal, action, resource) when { context.arguments has city && context.arguments.city == "Rome" };"#,
        )
        .unwrap();
    assert!(call(&narrowed, &alice(), "weather", json!({"city": "Rome"})).is_deny());
    assert_eq!(call(&narrowed, &alice(), "weather", json!({"city": "Oslo"})), Decision::Allow);
    // A layer of forbids only permits nothing (each layer is a whole Cedar policy set).
    let forbids_only = b.narrow("narrow-1", r#"forbid(principal, action, resource == Stead::Tool::"fetch");"#).unwrap();
    assert!(call(&forbids_only, &alice(), "weather", json!({"city": "Oslo"})).is_deny());
    // The original is unchanged.
    assert_eq!(call(&b, &alice(), "weather", json!({"city": "Rome"})), Decision::Allow);
}

#[test]
fn a_narrowing_of_an_unrestricted_boundary_is_default_deny() {
    let b = Boundary::new(&tools())
        .unwrap()
        .narrow("session", r#"permit(principal, action, resource == Stead::Tool::"calc");"#)
        .unwrap();
    assert!(!b.is_unrestricted());
    assert_eq!(call(&b, &alice(), "calc", json!({"x": 1})), Decision::Allow);
    assert!(call(&b, &alice(), "weather", json!({"city": "Oslo"})).is_deny());
}

#[test]
fn approval_annotation_requires_approval_even_beside_a_plain_permit() {
    let b = agent(
        r#"permit(principal, action, resource);
           @approval("approver")
           permit(principal, action, resource == Stead::Tool::"deploy");"#,
    );
    assert_eq!(
        call(&b, &alice(), "deploy", json!({"env": "prod"})),
        Decision::RequireApproval { role: "approver".into(), by: "agent#1".into() }
    );
    assert_eq!(call(&b, &alice(), "weather", json!({"city": "Oslo"})), Decision::Allow);
    // The tenant layer's approval comes first.
    let b = Boundary::compose(
        &tools(),
        &[
            ("tenant", r#"@id("ops-ok") @approval("ops") permit(principal, action, resource);"#),
            ("agent", r#"@approval("approver") permit(principal, action, resource);"#),
        ],
    )
    .unwrap();
    assert_eq!(
        call(&b, &alice(), "deploy", json!({})),
        Decision::RequireApproval { role: "ops".into(), by: "tenant:ops-ok".into() }
    );
    // A forbid still wins over an approval.
    let b = Boundary::compose(
        &tools(),
        &[
            ("agent", r#"@approval("approver") permit(principal, action, resource);"#),
            (
                "session",
                r#"permit(principal, action, resource); forbid(principal, action, resource == Stead::Tool::"deploy");"#,
            ),
        ],
    )
    .unwrap();
    assert_eq!(denial(call(&b, &alice(), "deploy", json!({}))).0, ["session#1"]);
}

#[test]
fn a_policy_that_errors_denies_and_is_named() {
    // A permit reading an argument the call lacks.
    let b = agent(
        r#"permit(principal, action, resource == Stead::Tool::"weather")
           when { context.arguments.days == 1 };"#,
    );
    let (by, reason) = denial(call(&b, &alice(), "weather", json!({"city": "Oslo"})));
    assert_eq!(by, ["agent#0"]);
    assert!(reason.contains("agent#0") && reason.contains("days"), "{reason}");
    assert!(reason.contains("a policy that errors denies"), "{reason}");

    // A forbid that errors: Cedar alone would skip it and allow.
    let b = agent(
        r#"permit(principal, action, resource);
           @id("max-days") forbid(principal, action, resource == Stead::Tool::"weather")
           when { context.arguments.days > 3 };"#,
    );
    assert_eq!(call(&b, &alice(), "weather", json!({"city": "Oslo", "days": 2})), Decision::Allow);
    let (by, _) = denial(call(&b, &alice(), "weather", json!({"city": "Oslo"})));
    assert_eq!(by, ["agent:max-days"]);
    // A type error at evaluation: the schema says integer, the call sends a string.
    let (by, reason) = denial(call(&b, &alice(), "weather", json!({"city": "Oslo", "days": "three"})));
    assert_eq!(by, ["agent:max-days"]);
    assert!(reason.contains("type error") || reason.contains("expected"), "{reason}");
}

#[test]
fn an_unknown_tool_literal_is_refused_with_its_line() {
    let text = "permit(principal, action, resource == Stead::Tool::\"weather\");\n\
                // a comment\n\
                permit(principal, action, resource) when { resource == Stead::Tool::\"wether\" };\n";
    let e = refused(&[("agent", text)]);
    let problems = e.problems();
    assert_eq!(problems.len(), 1, "{e}");
    assert_eq!(problems[0].line, 3, "{e}");
    assert_eq!(problems[0].policy.as_deref(), Some("agent#1"));
    let message = e.to_string();
    assert!(message.starts_with("invalid `agent` policies: line 3"), "{message}");
    assert!(message.contains("wether") && message.contains("weather"), "{message}");

    // In the scope, in a set, in the session layer.
    let e = refused(&[
        ("agent", "permit(principal, action, resource);"),
        (
            "session",
            "forbid(principal, action, resource) when { resource in [Stead::Tool::\"fetch\", Stead::Tool::\"rm\"] };",
        ),
    ]);
    assert!(e.to_string().starts_with("invalid `session` policies: line 1"), "{e}");
    assert!(e.to_string().contains("rm"), "{e}");
}

#[test]
fn a_syntax_error_is_refused_with_line_and_column() {
    let e = refused(&[("tenant", "permit(principal, action, resource);\n  permit(principal, action resource);\n")]);
    let p = &e.problems()[0];
    assert_eq!((p.line, p.column), (2, 28), "{e}");
    assert!(e.to_string().starts_with("invalid `tenant` policies: line 2, column 28: unexpected token `resource`"));
}

#[test]
fn type_errors_and_unknown_attributes_are_refused_at_build() {
    let e =
        refused(&[("agent", "permit(principal, action, resource)\n when { context.arguments.ctiy == \"Paris\" };")]);
    assert_eq!(e.problems()[0].line, 2, "{e}");
    assert!(e.to_string().contains("ctiy"), "{e}");

    let e = refused(&[("agent", "permit(principal, action, resource) when { principal.tenant > 3 };")]);
    assert_eq!(e.problems()[0].line, 1, "{e}");

    // An optional attribute outside the arguments needs `has`, as Cedar asks.
    let e = refused(&[("agent", "permit(principal, action, resource) when { resource.host == \"x\" };")]);
    assert!(e.to_string().contains("host"), "{e}");
    agent("permit(principal, action, resource) when { resource has host && resource.host == \"x\" };");

    // An undeclared action.
    refused(&[("agent", "permit(principal, action == Stead::Action::\"delete\", resource);")]);
}

#[test]
fn annotations_names_and_templates_are_checked() {
    let e = refused(&[(
        "agent",
        "permit(principal, action, resource);\n@approval(\"ops\") forbid(principal, action, resource);",
    )]);
    assert_eq!(e.problems()[0].line, 2, "{e}");
    assert!(e.to_string().contains("belongs on a permit"), "{e}");

    let e = refused(&[(
        "agent",
        "@id(\"a\") permit(principal, action, resource);\n@id(\"a\") permit(principal, action, resource);",
    )]);
    assert!(e.to_string().contains("two policies are named `agent:a`"), "{e}");

    let e = refused(&[("agent", "permit(principal == ?principal, action, resource);")]);
    assert!(e.to_string().contains("templates"), "{e}");
}

#[test]
fn arguments_cedar_cannot_hold_deny() {
    let b = agent(
        r#"permit(principal, action, resource == Stead::Tool::"calc")
           when { context.arguments.x.lessThan(decimal("3.0")) };"#,
    );
    // Decimals with up to 4 fractional digits, and integers for a `number`.
    assert_eq!(call(&b, &alice(), "calc", json!({"x": 2.5})), Decision::Allow);
    assert_eq!(call(&b, &alice(), "calc", json!({"x": 2})), Decision::Allow);
    assert_eq!(call(&b, &alice(), "calc", json!({"x": -0.0001})), Decision::Allow);
    assert!(call(&b, &alice(), "calc", json!({"x": 3.5})).is_deny());

    let cases = [
        (json!({"x": 2.12345}), "4 fractional digits"),
        (json!({"x": 1e300}), "beyond Cedar's decimals"),
        (json!({"y": 18446744073709551615_u64}), "larger than Cedar's integers"),
        (json!({"tags": ["a", null]}), "null inside an array"),
        (json!("just a string"), "must be a JSON object"),
    ];
    for (arguments, why) in cases {
        let (by, reason) = denial(call(&b, &alice(), "calc", arguments.clone()));
        assert!(by.is_empty());
        assert!(reason.contains("cannot be given to the policies"), "{reason}");
        assert!(reason.contains(why), "{arguments}: {reason}");
    }
    let mut deep = json!(1);
    for _ in 0..MAX_ARGUMENT_DEPTH {
        deep = json!({"a": deep});
    }
    let (_, reason) = denial(call(&b, &alice(), "calc", json!({"x": 1, "deep": deep})));
    assert!(reason.contains("nested deeper than"), "{reason}");
    assert!(reason.contains("arguments.deep.a.a"), "{reason}");
    // Unrepresentable means denied, even with a permit-everything boundary.
    let open = agent("permit(principal, action, resource);");
    assert!(call(&open, &alice(), "calc", json!({"x": 0.1 + 0.2})).is_deny());
}

#[test]
fn null_attributes_are_absent_and_arrays_are_sets() {
    let b = agent(
        r#"permit(principal, action, resource == Stead::Tool::"calc")
           when { !(context.arguments has opts) || !(context.arguments.opts has verbose) };
           forbid(principal, action, resource) when { context.arguments has tags && context.arguments.tags.contains("secret") };"#,
    );
    assert_eq!(call(&b, &alice(), "calc", json!({"opts": {"verbose": null}, "tags": ["a", "a"]})), Decision::Allow);
    assert!(call(&b, &alice(), "calc", json!({"opts": {"verbose": true}})).is_deny());
    assert!(call(&b, &alice(), "calc", json!({"tags": ["x", "secret"]})).is_deny());
    assert_eq!(call(&b, &alice(), "calc", serde_json::Value::Null), Decision::Allow);
}

#[test]
fn an_argument_cannot_forge_an_entity() {
    let b = agent(
        r#"permit(principal, action, resource) when { context.arguments has url && context.arguments.url == "ok" };"#,
    );
    // Cedar's JSON escape is just a record here, of the wrong type: the policy errors.
    let forged = json!({"url": {"__entity": {"type": "Stead::User", "id": "admin"}}});
    assert!(call(&b, &alice(), "fetch", forged).is_deny());
    assert_eq!(call(&b, &alice(), "fetch", json!({"url": "ok"})), Decision::Allow);
}

#[test]
fn principal_roles_tenant_and_claims() {
    let b = agent(
        r#"permit(principal, action, resource) when {
             principal.tenant == "acme" && principal.roles.contains("dev")
           };
           forbid(principal, action, resource == Stead::Tool::"deploy") unless {
             principal.claims has groups && principal.claims.groups.contains("release")
           };
           forbid(principal, action, resource) when {
             principal.claims has email && principal.claims.email like "*@evil.example"
           };"#,
    );
    let a = alice();
    assert_eq!(call(&b, &a, "weather", json!({"city": "Oslo"})), Decision::Allow);
    assert!(call(&b, &a, "deploy", json!({})).is_deny());
    let releaser =
        PrincipalInfo { claims: json!({"groups": ["staff", "release"]}).as_object().cloned().unwrap(), ..alice() };
    assert_eq!(call(&b, &releaser, "deploy", json!({})), Decision::Allow);
    let other_tenant = PrincipalInfo { tenant: "globex".into(), ..alice() };
    assert!(call(&b, &other_tenant, "weather", json!({"city": "Oslo"})).is_deny());
    let no_role = PrincipalInfo { roles: vec![], ..alice() };
    assert!(call(&b, &no_role, "weather", json!({"city": "Oslo"})).is_deny());
    let evil = PrincipalInfo { claims: json!({"email": "eve@evil.example"}).as_object().cloned().unwrap(), ..alice() };
    assert!(call(&b, &evil, "weather", json!({"city": "Oslo"})).is_deny());
    // A declared claim of another type cannot be represented: denied.
    let odd = PrincipalInfo { claims: json!({"email_verified": "yes"}).as_object().cloned().unwrap(), ..alice() };
    let (_, reason) = denial(call(&b, &odd, "weather", json!({"city": "Oslo"})));
    assert!(reason.contains("claims.email_verified"), "{reason}");
    // The principal's id is the entity's.
    let b = agent(r#"permit(principal == Stead::User::"https://idp.example|alice", action, resource);"#);
    assert_eq!(call(&b, &alice(), "calc", json!({})), Decision::Allow);
    let key = PrincipalInfo { id: "key:ci".into(), ..alice() };
    assert!(call(&b, &key, "calc", json!({})).is_deny());
}

#[test]
fn mcp_names_kinds_and_hosts() {
    let b = agent(
        r#"permit(principal, action, resource == Stead::Tool::"files/read")
             when { resource.kind == "mcp" && context.arguments.path like "/srv/*" };
           permit(principal, action, resource)
             when { resource has host && resource.host == "api.example.com" };"#,
    );
    assert_eq!(call(&b, &alice(), "files/read", json!({"path": "/srv/a.txt"})), Decision::Allow);
    assert!(call(&b, &alice(), "files/read", json!({"path": "/etc/passwd"})).is_deny());
    assert_eq!(call(&b, &alice(), "fetch", json!({"url": "https://api.example.com/x"})), Decision::Allow);
    // The host of the call is the request's: the same tool pointed elsewhere is denied.
    let moved = stead_policy::ToolInfo { host: Some("evil.example".into()), ..tool("fetch") };
    assert!(
        b.authorize(&CallRequest { principal: &alice(), tool: &moved, arguments: &json!({}), session: "s1" }).is_deny()
    );
}

#[test]
fn the_session_id_is_in_the_context() {
    let b = agent(r#"permit(principal, action, resource) when { context.session == "s1" };"#);
    assert_eq!(call(&b, &alice(), "calc", json!({})), Decision::Allow);
    let t = tool("calc");
    let d = b.authorize(&CallRequest { principal: &alice(), tool: &t, arguments: &json!({}), session: "s2" });
    assert!(d.is_deny());
}

#[test]
fn visible_tools_hide_only_what_no_arguments_could_allow() {
    let b = Boundary::compose(
        &tools(),
        &[
            (
                "tenant",
                r#"permit(principal, action, resource) when { principal.tenant == "acme" };
                   forbid(principal, action, resource) when { resource.kind == "client" };"#,
            ),
            (
                "agent",
                r#"permit(principal, action, resource == Stead::Tool::"weather")
                     when { principal.roles.contains("dev") && context.arguments.city == "Paris" };
                   permit(principal, action, resource) when { resource in [Stead::Tool::"fetch", Stead::Tool::"calc"] };
                   @approval("ops") permit(principal, action, resource == Stead::Tool::"deploy");
                   forbid(principal, action, resource == Stead::Tool::"fetch")
                     when { context.arguments.url like "*internal*" };"#,
            ),
        ],
    )
    .unwrap();
    let all = tools();
    // files/read: no permit names it; calc: forbidden for its kind whatever the arguments;
    // fetch: its forbid depends on the arguments, so it stays visible.
    assert_eq!(b.visible_tools(&alice(), &all), ["weather", "fetch", "deploy"]);
    let ops = PrincipalInfo { roles: vec!["ops".into()], ..alice() };
    assert_eq!(b.visible_tools(&ops, &all), ["fetch", "deploy"]);
    let other = PrincipalInfo { tenant: "globex".into(), ..alice() };
    assert!(b.visible_tools(&other, &all).is_empty());
    // Without policies: every declared tool.
    let open = Boundary::new(&all).unwrap();
    assert_eq!(open.visible_tools(&alice(), &all).len(), all.len());
}

#[test]
fn explain_says_which_policy_decided_in_each_layer() {
    let b = Boundary::compose(
        &tools(),
        &[
            ("tenant", "permit(principal, action, resource);"),
            (
                "agent",
                r#"@id("no-deploy") forbid(principal, action, resource == Stead::Tool::"deploy");
                   permit(principal, action, resource);"#,
            ),
            ("session", r#"permit(principal, action, resource == Stead::Tool::"weather");"#),
        ],
    )
    .unwrap();
    let t = tool("deploy");
    let x = b.explain(&CallRequest { principal: &alice(), tool: &t, arguments: &json!({}), session: "s1" });
    let verdicts: Vec<_> = x.layers.iter().map(|l| (l.source.as_str(), l.verdict)).collect();
    assert_eq!(verdicts, [("tenant", Verdict::Allow), ("agent", Verdict::Deny), ("session", Verdict::Deny)]);
    assert_eq!(x.layers[0].determining, ["tenant#0"]);
    assert_eq!(x.layers[1].determining, ["agent:no-deploy"]);
    assert!(x.layers[2].determining.is_empty());
    let (by, reason) = denial(x.decision.clone());
    assert_eq!(by, ["agent:no-deploy"]);
    assert!(reason.contains("no `session` policy permits"), "{reason}");
    let text = x.to_string();
    assert!(text.contains("agent: deny by agent:no-deploy"), "{text}");
    // authorize stops at the first denying layer, with the same decision's policies.
    assert_eq!(denial(call(&b, &alice(), "deploy", json!({}))).0, ["agent:no-deploy"]);
}

#[test]
fn limits_are_enforced_and_reported() {
    let big = format!("// {}\npermit(principal, action, resource);", "x".repeat(MAX_POLICY_TEXT_BYTES));
    let e = refused(&[("agent", &big)]);
    assert!(matches!(e, Error::Limit { .. }), "{e}");
    assert!(e.to_string().contains(&MAX_POLICY_TEXT_BYTES.to_string()), "{e}");

    let many = "permit(principal, action, resource);\n".repeat(MAX_POLICIES / 2 + 1);
    let e = refused(&[("tenant", &many), ("agent", &many)]);
    assert!(e.to_string().starts_with("`agent` policies exceed a limit: the number of policies"), "{e}");
}

#[test]
fn layer_sources_are_unique_names() {
    let b = agent("permit(principal, action, resource);");
    let e = b.narrow("agent", "permit(principal, action, resource);").unwrap_err();
    assert!(e.to_string().contains("has a `agent` layer already"), "{e}");
    assert!(b.narrow("a:b", "").is_err());
    assert!(b.narrow("", "").is_err());
    assert_eq!(b.narrow("narrow-1", "").unwrap().sources(), ["agent"]);
}

#[test]
fn tools_that_cannot_make_a_schema_are_refused() {
    let mut twice = tools();
    twice.push(tool("weather"));
    assert!(matches!(Boundary::new(&twice), Err(Error::Tools(_))));
}

#[test]
fn arguments_typed_differently_by_two_tools_are_left_out() {
    let mut ts = tools();
    ts.push(stead_policy::ToolInfo {
        name: "forecast".into(),
        kind: stead_policy::ToolKind::Builtin,
        host: None,
        arguments_schema: Some(json!({"type": "object", "properties": {"days": {"type": "string"}}})),
    });
    let b = Boundary::new(&ts).unwrap();
    assert!(!b.schema().contains("days"), "{}", b.schema());
    assert!(b.schema().contains("city"), "{}", b.schema());
    let e = match b.narrow("agent", "permit(principal, action, resource) when { context.arguments.days == 1 };") {
        Ok(_) => panic!("expected a refusal"),
        Err(e) => e,
    };
    assert!(e.to_string().contains("left out of the schema: days"), "{e}");
}
