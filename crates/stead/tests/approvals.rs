//! Durable approvals on the real binary: a call behind `require_approval` waits in
//! `awaiting_approval` holding no worker, survives SIGKILL, and resumes on a decision made
//! through the API or the CLI; decisions are single-use, bound to the decider's role, and a
//! denial or an expiry reaches the model as the tool's result.

mod support;

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use support::*;

const AGENT: &str = "name: guarded
model: {provider: scripted, name: s}
tools:
  - {name: echo, type: builtin, require_approval: {when: {path: /text, contains: pay}}, idempotent: false}
  - {name: clock, type: builtin}
";

async fn pending_for(stead: &Stead, run: &str) -> Vec<serde_json::Value> {
    let run_view = stead.run(run).await;
    let ids = run_view["pending_approvals"].as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for id in ids {
        out.push(stead.get_ok(&format!("/v1/approvals/{}", id.as_str().unwrap())).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_survives_a_kill_and_the_cli_approves_it() {
    let mut stead = Options::new().start().await;
    stead.apply_agent(AGENT).await;
    let session = stead.create_session("guarded").await;
    // A call the condition does not match runs without asking.
    let run = stead.create_run(&session, r#"call echo {"text":"hello"}"#).await;
    assert_eq!(stead.wait_run(&run, "completed").await["output"], "echo returned: hello");

    let run = stead.create_run(&session, r#"call echo {"text":"pay 100"}"#).await;
    stead.wait_run(&run, "awaiting_approval").await;
    let pending = pending_for(&stead, &run).await;
    assert_eq!(pending.len(), 1);
    let approval = pending[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(pending[0]["status"], "pending");
    assert_eq!(pending[0]["tool_name"], "echo");
    assert_eq!(pending[0]["arguments"], r#"{"text":"pay 100"}"#);
    let listed = stead.get_ok("/v1/approvals").await;
    assert!(listed["data"].as_array().unwrap().iter().any(|a| a["id"] == approval.as_str()));

    // Hours later, after any number of restarts.
    stead.kill9();
    stead.restart(None).await;
    assert_eq!(stead.run(&run).await["status"], "awaiting_approval");
    let listed = cli(&["approvals", "list", "--url", &stead.url], &[]).await;
    listed.assert_ok("approvals list");
    assert!(listed.stdout.contains(&approval), "{}", listed.stdout);
    let approved = cli(&["approve", &approval, "--reason", "budget ok", "--url", &stead.url], &[]).await;
    approved.assert_ok("approve");
    assert!(approved.stdout.contains("approved"), "{}", approved.stdout);
    let done = stead.wait_run(&run, "completed").await;
    assert_eq!(done["output"], "echo returned: pay 100");
    // Single-use: the same decision again is accepted unchanged, a different one is refused.
    let again = stead.post(&format!("/v1/approvals/{approval}/approve"), &json!({})).await;
    assert_eq!(again.status, 200, "{}", again.text);
    let deny = stead.post(&format!("/v1/approvals/{approval}/deny"), &json!({"reason": "too late"})).await;
    assert_eq!((deny.status, deny.code()), (409, "approval_already_decided"), "{}", deny.text);
    let log = stead.check_session(&session, true).await;
    let r = &log.runs[&run];
    assert_eq!(r.of_type("approval_requested").len(), 1);
    assert_eq!(r.of_type("approval_decided").len(), 1);
    assert_eq!(r.of_type("tool_call_started").len(), 1, "the call ran exactly once");
    let decided = r.of_type("approval_decided")[0];
    assert_eq!(decided["actor"], "principal:local");
    assert_eq!(decided["data"]["reason"], "budget ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denial_edit_and_expiry_reach_the_model() {
    let spec = AGENT.replace("idempotent: false}", "idempotent: false, approval_timeout_secs: 1}");
    let stead = Options::new().arg("--lease-secs").arg("3").start().await;
    stead.apply_agent(&spec).await;
    let session = stead.create_session("guarded").await;

    let run = stead.create_run(&session, r#"call echo {"text":"pay 1"}"#).await;
    stead.wait_run(&run, "awaiting_approval").await;
    let id = pending_for(&stead, &run).await[0]["id"].as_str().unwrap().to_owned();
    let r = stead.post(&format!("/v1/approvals/{id}/deny"), &json!({"reason": "not today"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "denied");
    let done = stead.wait_run(&run, "completed").await;
    let output = done["output"].as_str().unwrap();
    assert!(output.contains("denied by principal:local: not today"), "{output}");

    // Approved with edited arguments: the call runs with the approver's version.
    let run = stead.create_run(&session, r#"call echo {"text":"pay 1000"}"#).await;
    stead.wait_run(&run, "awaiting_approval").await;
    let id = pending_for(&stead, &run).await[0]["id"].as_str().unwrap().to_owned();
    let bad = stead.post(&format!("/v1/approvals/{id}/approve"), &json!({"arguments": [1]})).await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_decision"));
    let wrong = stead.post(&format!("/v1/approvals/{id}/resolve"), &json!({"action": "retry"})).await;
    assert_eq!((wrong.status, wrong.code()), (400, "invalid_decision"), "retry does not answer a tool_call approval");
    let r = stead.post(&format!("/v1/approvals/{id}/approve"), &json!({"arguments": {"text": "pay 10"}})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(stead.wait_run(&run, "completed").await["output"], "echo returned: pay 10");

    // Nobody decides: after approval_timeout_secs it expires and the model is told.
    let run = stead.create_run(&session, r#"call echo {"text":"pay 5"}"#).await;
    stead.wait_run(&run, "awaiting_approval").await;
    let done = stead.wait_run_for(&run, "completed", Duration::from_secs(20)).await;
    assert!(done["output"].as_str().unwrap().contains("expired"), "{done}");
    let all = stead.get_ok("/v1/approvals?status=all&limit=100").await;
    let statuses: Vec<&str> = all["data"].as_array().unwrap().iter().map(|a| a["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, vec!["denied", "approved", "expired"]);
    let pending = stead.get_ok("/v1/approvals").await;
    assert!(pending["data"].as_array().unwrap().is_empty());
    stead.check_session(&session, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_principals_with_the_role_decide() {
    let approver = "approver-key-0123456789";
    let viewer = "viewer-key-0123456789ab";
    let stead = Options::new()
        .arg("--api-key")
        .arg(format!("acme:{approver}:approver"))
        .arg("--api-key")
        .arg(format!("acme:{viewer}"))
        .key(approver)
        .start()
        .await;
    stead.apply_agent(AGENT).await;
    let session = stead.create_session("guarded").await;
    let run = stead.create_run(&session, r#"call echo {"text":"pay 3"}"#).await;
    stead.wait_run(&run, "awaiting_approval").await;
    let id = pending_for(&stead, &run).await[0]["id"].as_str().unwrap().to_owned();
    let r = stead.send(stead.req_as(Some(viewer), Method::POST, &format!("/v1/approvals/{id}/approve"))).await;
    assert_eq!((r.status, r.code()), (403, "forbidden"), "{}", r.text);
    assert_eq!(
        stead.get_ok(&format!("/v1/approvals/{id}")).await["status"],
        "pending",
        "a refused decision changes nothing"
    );
    let r = stead.send(stead.req_as(Some(approver), Method::POST, &format!("/v1/approvals/{id}/approve"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["decided_by"], "principal:acme/key1");
    stead.wait_run(&run, "completed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_outcome_after_a_crash_is_settled_by_a_person() {
    let spec = "name: once\nmodel: {provider: scripted, name: s}\ntools:\n  - {name: echo, type: builtin, idempotent: false}\n";
    let mut stead = Options::new().fault("tool_started").start().await;
    stead.apply_agent(spec).await;
    let session = stead.create_session("once").await;
    let run = stead.create_run(&session, r#"call echo {"text":"charge card"}"#).await;
    assert_eq!(stead.wait_paused("tool_started").await, run);
    stead.kill9();
    stead.restart(None).await;
    stead.wait_run(&run, "awaiting_approval").await;
    let a = &pending_for(&stead, &run).await[0];
    assert_eq!(a["kind"], "outcome_unknown");
    let id = a["id"].as_str().unwrap();
    let r = stead.post(&format!("/v1/approvals/{id}/approve"), &json!({})).await;
    assert_eq!((r.status, r.code()), (400, "invalid_decision"));
    let r = stead.post(&format!("/v1/approvals/{id}/resolve"), &json!({"action": "skip"})).await;
    assert_eq!((r.status, r.code()), (400, "invalid_decision"), "skip needs the output");
    let r = stead
        .post(&format!("/v1/approvals/{id}/resolve"), &json!({"action": "skip", "output": "charged (checked by hand)"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let done = stead.wait_run(&run, "completed").await;
    assert_eq!(done["output"], "echo returned: charged (checked by hand)");
    let log = stead.check_session(&session, true).await;
    assert_eq!(log.runs[&run].of_type("tool_call_started").len(), 1, "never re-run");
}
