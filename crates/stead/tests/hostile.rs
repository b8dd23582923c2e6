//! Hostile agent specs on the real binary (issue item 6): a YAML spec of 100,000 nested flow
//! sequences (`[[[[…]]]]`, ~200 KB) once cost a YAML parser time quadratic in its depth, so two
//! of them held the server's threads for minutes. Now a linear pre-scan
//! (`stead_core::spec_depth`) refuses them, naming the limit and the line, and the server keeps
//! answering `/healthz` while they are in flight.

mod support;

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use stead_core::spec_depth::MAX_SPEC_DEPTH;
use support::{Options, Resp, TIMEOUT};
use tokio::time::Instant;

const DEPTH: usize = 100_000;
/// Each `/healthz` must answer within this: a correctness bound (the server is not blocked),
/// not a benchmark.
const HEALTHZ_BOUND: Duration = Duration::from_secs(2);

/// A spec whose `tools` is `DEPTH` nested flow sequences, on line 3.
fn deep_spec(name: &str) -> String {
    format!("name: {name}\nmodel: {{provider: scripted, name: s}}\ntools: {}{}\n", "[".repeat(DEPTH), "]".repeat(DEPTH))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_concurrent_deeply_nested_specs_are_refused_while_healthz_keeps_answering() {
    let stead = Options::new().start().await;
    let specs = [deep_spec("hostile-a"), deep_spec("hostile-b")];
    assert!(specs.iter().all(|s| (190_000..1024 * 1024).contains(&s.len())), "~200 KB, under the body limit");

    let hostile: Vec<_> = specs
        .into_iter()
        .map(|spec| {
            let request = stead.req(Method::POST, "/v1/agents").header("content-type", "application/yaml").body(spec);
            tokio::spawn(
                async move { Resp::read(request.send().await.expect("the hostile request is answered")).await },
            )
        })
        .collect();

    // While they are in flight (and once after), every /healthz answers 200 within the bound.
    let probe = reqwest::Client::builder().timeout(HEALTHZ_BOUND).build().unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let mut probes = 0;
    loop {
        let done = hostile.iter().all(|h| h.is_finished());
        let started = Instant::now();
        let answer = probe.get(format!("{}/healthz", stead.url)).send().await;
        match answer {
            Ok(r) => assert_eq!(r.status(), 200, "/healthz during the hostile requests"),
            Err(e) => panic!(
                "/healthz did not answer within {HEALTHZ_BOUND:?} while the hostile specs were in flight \
                 (after {:?}): {e}\nstderr:\n{}",
                started.elapsed(),
                stead.stderr()
            ),
        }
        probes += 1;
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "the hostile requests were not answered within {TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(probes >= 1);

    let refusal = format!("nested deeper than {MAX_SPEC_DEPTH} levels (line 3)");
    for h in hostile {
        let r = h.await.unwrap();
        assert!((400..500).contains(&r.status), "a hostile spec must be refused with a 4xx: {} {}", r.status, r.text);
        assert_eq!((r.status, r.code()), (422, "invalid_agent_spec"), "{}", r.text);
        let message = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(&refusal), "the error names the nesting limit and the line: {message}");
    }

    // Nothing was stored.
    let agents = stead.get_ok("/v1/agents").await;
    assert_eq!(agents["data"], json!([]), "no agent may be stored: {agents}");
    for name in ["hostile-a", "hostile-b"] {
        let r = stead.get(&format!("/v1/agents/{name}")).await;
        assert_eq!((r.status, r.code()), (404, "agent_not_found"), "{}", r.text);
    }
}
