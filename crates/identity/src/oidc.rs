//! One OpenID Connect issuer: its configuration, discovery, and a cache of its signing keys.
//!
//! Keys are fetched on first use (or by [`Issuer::prefetch`] at start) and again when a token
//! names a key the cache lacks — at most once per `cooldown`, single-flight, however many
//! requests carry unknown `kid`s — and when the cache is older than `max_age`. A failed fetch
//! keeps the keys already held.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use crate::jwt::{self, Jwk, TokenError, Unverified};

/// How an issuer is configured (`--oidc-issuer` and friends, or an `[[oidc]]` table).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The issuer URL exactly as tokens carry it in `iss`.
    pub issuer: String,
    /// Accepted `aud` values (at least one).
    pub audiences: Vec<String>,
    /// The claim naming the tenant; without one every principal is in the default tenant.
    #[serde(default)]
    pub tenant_claim: Option<String>,
    /// The claim whose values become roles (a string or an array of strings).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// The JWKS URL, when the issuer has no discovery document.
    #[serde(default)]
    pub jwks_url: Option<String>,
}

pub fn default_roles_claim() -> String {
    "roles".into()
}

/// Timings of the key cache.
#[derive(Clone, Copy, Debug)]
pub struct KeyPolicy {
    /// Least time between two fetches caused by unknown keys.
    pub cooldown: Duration,
    /// Keys older than this are fetched again on the next use.
    pub max_age: Duration,
    /// Clock skew tolerated on `exp`, `nbf`, `iat`.
    pub leeway: Duration,
    pub fetch_timeout: Duration,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        Self {
            cooldown: Duration::from_secs(30),
            max_age: Duration::from_secs(3600),
            leeway: Duration::from_secs(60),
            fetch_timeout: Duration::from_secs(10),
        }
    }
}

/// Largest discovery or JWKS document read.
const MAX_DOC_BYTES: usize = 1024 * 1024;

/// What the held keys say about a token.
struct Lookup {
    /// The key its signature verifies with.
    key: Option<Jwk>,
    /// Whether any held key could have signed it (type, algorithm and `kid` match).
    candidates: bool,
    /// Whether the held keys are younger than `max_age`.
    fresh: bool,
}

#[derive(Default)]
struct Fetched {
    keys: Arc<Vec<Jwk>>,
    at: Option<Instant>,
}

pub struct Issuer {
    config: IssuerConfig,
    policy: KeyPolicy,
    client: reqwest::Client,
    fetched: RwLock<Fetched>,
    /// Serializes fetches; holds when the last one was attempted.
    fetching: tokio::sync::Mutex<Option<Instant>>,
    fetches: std::sync::atomic::AtomicU64,
}

impl Issuer {
    /// Checks the configuration: an `https` issuer (or `http` on a loopback host), at least one
    /// audience, claim names that are not empty.
    pub fn new(config: IssuerConfig, policy: KeyPolicy) -> Result<Self, String> {
        check_url("issuer", &config.issuer)?;
        if let Some(u) = &config.jwks_url {
            check_url("jwks_url", u)?;
        }
        if config.audiences.is_empty() || config.audiences.iter().any(|a| a.is_empty()) {
            return Err(format!("issuer {}: give at least one audience (--oidc-audience)", config.issuer));
        }
        if config.roles_claim.is_empty() || config.tenant_claim.as_deref().is_some_and(str::is_empty) {
            return Err(format!("issuer {}: claim names must not be empty", config.issuer));
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(policy.fetch_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| format!("cannot build the HTTP client for {}: {e}", config.issuer))?;
        Ok(Self {
            config,
            policy,
            client,
            fetched: RwLock::default(),
            fetching: tokio::sync::Mutex::new(None),
            fetches: 0.into(),
        })
    }

    pub fn config(&self) -> &IssuerConfig {
        &self.config
    }

    /// Key fetches made so far (for tests and metrics).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Fetches the keys now; an error is reported, and the next token tries again.
    pub async fn prefetch(&self) -> Result<usize, TokenError> {
        let mut last = self.fetching.lock().await;
        self.fetch(&mut last).await
    }

    /// Verifies a token of this issuer: signature with one of its keys, then the claims.
    pub async fn verify(&self, token: &Unverified<'_>, now_secs: u64) -> Result<(), TokenError> {
        self.verified_key(token).await?;
        let expect = jwt::Expect {
            issuer: &self.config.issuer,
            audiences: &self.config.audiences,
            now: now_secs,
            leeway_secs: self.policy.leeway.as_secs(),
        };
        jwt::check_claims(&token.claims, &expect)
    }

    /// The key whose signature the token carries, fetching the issuer's keys when none of
    /// those held verifies it (a rotation) and the cooldown allows.
    async fn verified_key(&self, token: &Unverified<'_>) -> Result<Jwk, TokenError> {
        let first = self.lookup(token);
        if let (Some(k), true) = (&first.key, first.fresh) {
            return Ok(k.clone());
        }
        let mut last = self.fetching.lock().await;
        // Someone else may have fetched while we waited.
        let again = self.lookup(token);
        if let (Some(k), true) = (&again.key, again.fresh) {
            return Ok(k.clone());
        }
        let cooled = last.is_none_or(|t| t.elapsed() >= self.policy.cooldown);
        if cooled && let Err(e) = self.fetch(&mut last).await {
            tracing::warn!(issuer = %self.config.issuer, error = %e, "fetching the issuer's keys failed");
            // Stale keys still verify; with none that does, the token can't be checked.
            return again.key.ok_or(e);
        }
        let now = self.lookup(token);
        match (now.key.or(again.key), now.candidates) {
            (Some(k), _) => Ok(k),
            (None, true) => Err(TokenError::BadSignature),
            (None, false) => {
                Err(TokenError::UnknownKey(token.kid.as_deref().unwrap_or_default().chars().take(64).collect()))
            }
        }
    }

    fn lookup(&self, token: &Unverified<'_>) -> Lookup {
        let f = self.fetched.read().expect("jwks lock");
        let fresh = f.at.is_some_and(|t| t.elapsed() < self.policy.max_age);
        let mut candidates = f.keys.iter().filter(|k| k.fits(token.alg) && (token.kid.is_none() || k.kid == token.kid));
        let any = candidates.clone().next().is_some();
        let key = candidates.find(|k| token.verify_with(k)).cloned();
        Lookup { key, candidates: any, fresh }
    }

    async fn fetch(&self, last: &mut Option<Instant>) -> Result<usize, TokenError> {
        *last = Some(Instant::now());
        self.fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let jwks_url = match &self.config.jwks_url {
            Some(u) => u.clone(),
            None => self.discover().await?,
        };
        let doc = self.get_json(&jwks_url).await?;
        let (keys, skipped) = jwt::parse_jwks(&doc).map_err(TokenError::KeysUnavailable)?;
        tracing::info!(issuer = %self.config.issuer, keys = keys.len(), skipped, "fetched the issuer's signing keys");
        let n = keys.len();
        *self.fetched.write().expect("jwks lock") = Fetched { keys: Arc::new(keys), at: Some(Instant::now()) };
        Ok(n)
    }

    /// The JWKS URL from the discovery document, whose `issuer` must be ours.
    async fn discover(&self) -> Result<String, TokenError> {
        let url = format!("{}/.well-known/openid-configuration", self.config.issuer.trim_end_matches('/'));
        let doc = self.get_json(&url).await?;
        if doc["issuer"].as_str() != Some(self.config.issuer.as_str()) {
            return Err(TokenError::KeysUnavailable(format!(
                "the discovery document at {url} names issuer {}, not {}",
                doc["issuer"], self.config.issuer
            )));
        }
        let jwks = doc["jwks_uri"]
            .as_str()
            .ok_or_else(|| TokenError::KeysUnavailable(format!("the discovery document at {url} has no jwks_uri")))?;
        check_url("jwks_uri", jwks).map_err(TokenError::KeysUnavailable)?;
        Ok(jwks.to_owned())
    }

    async fn get_json(&self, url: &str) -> Result<Value, TokenError> {
        let fail = |m: String| TokenError::KeysUnavailable(format!("{url}: {m}"));
        let mut resp = self.client.get(url).send().await.map_err(|e| fail(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP {}", resp.status().as_u16())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.without_url().to_string()))? {
            if body.len() + chunk.len() > MAX_DOC_BYTES {
                return Err(fail("the document is over 1 MiB".into()));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| fail(format!("not JSON: {e}")))
    }
}

/// `https://…`, or `http://` to a loopback host (a provider on this machine).
fn check_url(what: &str, raw: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(raw).map_err(|e| format!("{what} {raw:?} is not a URL: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!("{what} {raw:?} must be https (plain http only to a loopback host)")),
    }
}
