//! Identity end to end (issue 9): the real binary accepting tokens from a real OpenID provider
//! this project did not write (`oidc-provider-mock` from PyPI, installed by
//! `.ci/oidc-provider.sh`): principals named by issuer and subject, tenants and roles from
//! claims, key rotation at the provider without a restart, one key fetch for a flood of
//! unknown `kid`s, and every forged token refused with its code and nothing stored.

mod support;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Method;
use serde_json::{Value, json};
use support::{Options, Stead, scripted_agent};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The provider's executable, or `None` (the test then says SKIPPED, or fails when the whole
/// suite is required).
fn provider_bin() -> Option<String> {
    match std::env::var("STEAD_OIDC_PROVIDER") {
        Ok(p) if !p.is_empty() => Some(p),
        _ if std::env::var("STEAD_REQUIRE_ALL_TESTS").is_ok_and(|v| v == "1") => {
            panic!("STEAD_OIDC_PROVIDER is not set: run `eval \"$(bash .ci/oidc-provider.sh)\"` (scripts/test does)")
        }
        _ => {
            eprintln!("SKIPPED: STEAD_OIDC_PROVIDER is not set (eval \"$(bash .ci/oidc-provider.sh)\")");
            None
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `oidc-provider-mock`; its request log is kept to count key fetches.
struct Provider {
    child: tokio::process::Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Provider {
    async fn start(bin: &str, port: u16) -> Provider {
        support::http_client(); // installs the TLS crypto provider reqwest needs
        let mut child = tokio::process::Command::new(bin)
            .args(["--port", &port.to_string(), "--host", "127.0.0.1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start oidc-provider-mock");
        let log = Arc::new(Mutex::new(Vec::new()));
        for out in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child.stderr.take().map(|s| Box::new(s) as _),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    log.lock().unwrap().push(l);
                }
            });
        }
        let p = Provider { child, port, log };
        let url = format!("{}/.well-known/openid-configuration", p.issuer());
        for _ in 0..300 {
            if reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("oidc-provider-mock did not start: {:?}", p.log.lock().unwrap());
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How many times its JWKS was fetched.
    fn jwks_fetches(&self) -> usize {
        self.log.lock().unwrap().iter().filter(|l| l.contains("GET /jwks")).count()
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// An ID token for `sub` with `claims`, issued to `client` by the authorization-code flow.
    async fn token(&self, client: &str, sub: &str, claims: Value) -> String {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let base = self.issuer();
        let r = http.put(format!("{base}/users/{sub}")).json(&claims).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 204, "set user claims");
        let redirect = "http://127.0.0.1/callback";
        let authorize = reqwest::Url::parse_with_params(
            &format!("{base}/oauth2/authorize"),
            &[
                ("client_id", client),
                ("redirect_uri", redirect),
                ("response_type", "code"),
                ("scope", "openid"),
                ("state", "s1"),
            ],
        )
        .unwrap();
        let r = http.post(authorize).header("content-type", FORM).body(form(&[("sub", sub)])).send().await.unwrap();
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let code =
            reqwest::Url::parse(&location).unwrap().query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
        let body = form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", redirect),
            ("client_id", client),
            ("client_secret", "any-secret"),
        ]);
        let r = http.post(format!("{base}/oauth2/token")).header("content-type", FORM).body(body).send().await.unwrap();
        let body: Value = r.json().await.unwrap();
        body["id_token"].as_str().unwrap_or_else(|| panic!("no id_token in {body}")).to_owned()
    }
}

const FORM: &str = "application/x-www-form-urlencoded";

/// `application/x-www-form-urlencoded` of `pairs`.
fn form(pairs: &[(&str, &str)]) -> String {
    reqwest::Url::parse_with_params("http://x/", pairs).unwrap().query().unwrap_or_default().to_owned()
}

fn claims_of(token: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

fn segment(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

async fn as_token(stead: &Stead, token: &str, method: Method, path: &str) -> support::Resp {
    stead.send(stead.req_as(Some(token), method, path)).await
}

fn assert_refused(r: &support::Resp, code: &str, what: &str) {
    assert_eq!((r.status, r.code()), (401, code), "{what}: {}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_a_real_provider_name_principals_and_forgeries_are_refused() {
    let Some(bin) = provider_bin() else { return };
    let port = free_port();
    let provider = Provider::start(&bin, port).await;
    let issuer = provider.issuer();
    let stead = Options::new()
        .arg("--oidc-issuer")
        .arg(&issuer)
        .arg("--oidc-audience")
        .arg("stead")
        .arg("--oidc-tenant-claim")
        .arg("tenant")
        .arg("--oidc-keys-cooldown-secs")
        .arg("1")
        .start()
        .await;

    // Alice of acme: her token works; what she creates is acted by `<issuer>|alice`.
    let alice = provider.token("stead", "alice", json!({"tenant": "acme", "roles": ["approver"]})).await;
    let r = stead
        .send(
            stead
                .req_as(Some(&alice), Method::POST, "/v1/agents")
                .header("content-type", "application/yaml")
                .body(scripted_agent("helper", "")),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r =
        stead.send(stead.req_as(Some(&alice), Method::POST, "/v1/sessions").json(&json!({"agent": "helper"}))).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let session = r.body["id"].as_str().unwrap().to_owned();
    let events = as_token(&stead, &alice, Method::GET, &format!("/v1/sessions/{session}/events")).await;
    assert_eq!(events.status, 200, "{}", events.text);
    assert!(events.text.contains(&format!("principal:{issuer}|alice")), "the actor is issuer|subject: {}", events.text);
    assert!(!events.text.contains(&alice), "the token never reaches the log");

    // Bob of another tenant sees nothing of acme's.
    let bob = provider.token("stead", "bob", json!({"tenant": "globex"})).await;
    let r = as_token(&stead, &bob, Method::GET, &format!("/v1/sessions/{session}")).await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(as_token(&stead, &bob, Method::GET, "/v1/sessions").await.body["data"], json!([]));

    // Forgeries, each refused with its code.
    let sessions_before = as_token(&stead, &alice, Method::GET, "/v1/sessions").await.body;
    let other_client = provider.token("someone-else", "alice", json!({"tenant": "acme"})).await;
    assert_refused(
        &as_token(&stead, &other_client, Method::GET, "/v1/sessions").await,
        "wrong_audience",
        "another audience",
    );
    let (h, rest) = alice.split_once('.').unwrap();
    let sig = rest.split_once('.').unwrap().1;
    let mut c = claims_of(&alice);
    c["tenant"] = json!("globex");
    let tampered = format!("{h}.{}.{sig}", segment(&c));
    assert_refused(&as_token(&stead, &tampered, Method::GET, "/v1/sessions").await, "invalid_token", "changed claims");
    let none = format!("{}.{}.", segment(&json!({"alg": "none", "typ": "JWT"})), segment(&claims_of(&alice)));
    assert_refused(&as_token(&stead, &none, Method::GET, "/v1/sessions").await, "unsupported_algorithm", "alg none");
    // Algorithm confusion: HS256 keyed with the provider's public RSA modulus.
    let jwks: Value = reqwest::get(format!("{issuer}/jwks")).await.unwrap().json().await.unwrap();
    let n = URL_SAFE_NO_PAD.decode(jwks["keys"][0]["n"].as_str().unwrap()).unwrap();
    let input =
        format!("{}.{}", segment(&json!({"alg": "HS256", "kid": jwks["keys"][0]["kid"]})), segment(&claims_of(&alice)));
    let mac = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &n), input.as_bytes());
    let hs = format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()));
    assert_refused(
        &as_token(&stead, &hs, Method::GET, "/v1/sessions").await,
        "unsupported_algorithm",
        "HS256 with the public key",
    );
    // Another provider's genuine token.
    let stranger = Provider::start(&bin, free_port()).await;
    let foreign = stranger.token("stead", "alice", json!({"tenant": "acme"})).await;
    assert_refused(&as_token(&stead, &foreign, Method::GET, "/v1/sessions").await, "unknown_issuer", "another issuer");
    // A foreign token relabelled with our issuer: no key of ours verifies it.
    let mut c = claims_of(&foreign);
    c["iss"] = json!(issuer);
    let (fh, frest) = foreign.split_once('.').unwrap();
    let relabelled = format!("{fh}.{}.{}", segment(&c), frest.split_once('.').unwrap().1);
    let r = as_token(&stead, &relabelled, Method::GET, "/v1/sessions").await;
    assert!(r.status == 401 && ["unknown_key", "invalid_token"].contains(&r.code()), "{}", r.text);
    stranger.stop().await;
    let missing_tenant = provider.token("stead", "carol", json!({})).await;
    assert_refused(
        &as_token(&stead, &missing_tenant, Method::GET, "/v1/sessions").await,
        "invalid_token",
        "no tenant claim",
    );
    assert_eq!(as_token(&stead, &alice, Method::GET, "/v1/sessions").await.body, sessions_before, "nothing changed");

    // A flood of unknown kids costs at most one fetch per cooldown.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = provider.jwks_fetches();
    let (ah, arest) = alice.split_once('.').unwrap();
    let mut header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(ah).unwrap()).unwrap();
    header["kid"] = json!("no-such-key");
    let bogus = format!("{}.{arest}", segment(&header));
    let flood: Vec<_> = (0..40).map(|_| as_token(&stead, &bogus, Method::GET, "/v1/sessions")).collect();
    for r in futures_util::future::join_all(flood).await {
        assert_refused(&r, "unknown_key", "an unknown kid");
    }
    let fetched = provider.jwks_fetches() - before;
    assert!(fetched <= 1, "40 requests with an unknown kid fetched the keys {fetched} times");

    // Rotation: the provider restarts with a new key; new tokens work without restarting Stead,
    // and tokens signed with the old key no longer do.
    provider.stop().await;
    let provider = Provider::start(&bin, port).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rotated = provider.token("stead", "alice", json!({"tenant": "acme", "roles": ["approver"]})).await;
    let r = as_token(&stead, &rotated, Method::GET, &format!("/v1/sessions/{session}")).await;
    assert_eq!(r.status, 200, "a token signed with the new key: {}", r.text);
    let r = as_token(&stead, &alice, Method::GET, "/v1/sessions").await;
    assert!(r.status == 401 && ["unknown_key", "invalid_token"].contains(&r.code()), "the old key's token: {}", r.text);
    provider.stop().await;
}
