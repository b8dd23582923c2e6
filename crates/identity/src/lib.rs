//! Who is calling: a request's credential turned into a [`Principal`].
//!
//! Two kinds of credential, both as `Authorization: Bearer …`: API keys for machines (only a
//! SHA-256 of each key is held, never the key) and OIDC tokens from the configured issuers
//! (JWS verified against the issuer's published keys, see [`oidc`]). The rest of Stead sees
//! principals only, never a token.
//!
//! **Invariant:** a principal is returned only for a credential that verified: a known key's
//! hash, or a token whose signature, issuer, audience and lifetime all check out. Every refusal
//! has a stable code; no refusal says which part of a key or token was right.

pub mod jwt;
pub mod oidc;

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use stead_core::ids::TenantId;

pub use jwt::TokenError;
pub use oidc::{Issuer, IssuerConfig, KeyPolicy};

/// The authenticated caller: every handler that touches data takes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub tenant: TenantId,
    /// `<issuer>|<subject>` for a token; the configured name for an API key.
    pub id: String,
    /// Roles for approvals; `*` holds them all (the local principal without authentication).
    pub roles: Vec<String>,
}

/// A refused credential: HTTP status, stable code, message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AuthError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl AuthError {
    fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self { status: 401, code, message: message.into() }
    }
}

impl From<TokenError> for AuthError {
    fn from(e: TokenError) -> Self {
        let status = if matches!(e, TokenError::KeysUnavailable(_)) { 503 } else { 401 };
        Self { status, code: e.code(), message: e.to_string() }
    }
}

/// The credentials a server accepts.
#[derive(Default)]
pub struct Auth {
    /// SHA-256 of each API key → its principal.
    keys: HashMap<[u8; 32], Principal>,
    issuers: Vec<Arc<Issuer>>,
}

fn key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Auth {
    /// No authentication: every caller is `local` in the default tenant.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds an API key that acts as `principal` in `tenant`, holding `roles` (e.g. `approver`).
    pub fn with_key(mut self, key: &str, tenant: TenantId, principal: &str, roles: &[String]) -> Self {
        self.keys.insert(key_hash(key), Principal { tenant, id: principal.to_owned(), roles: roles.to_vec() });
        self
    }

    /// Accepts tokens of this issuer.
    pub fn with_issuer(mut self, issuer: Arc<Issuer>) -> Self {
        self.issuers.push(issuer);
        self
    }

    pub fn issuers(&self) -> &[Arc<Issuer>] {
        &self.issuers
    }

    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty() || !self.issuers.is_empty()
    }

    /// The caller a request's `Authorization: Bearer` credential names (without any configured,
    /// the local principal of the default tenant, holding every role).
    pub async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Principal, AuthError> {
        if !self.is_enabled() {
            return Ok(Principal { tenant: TenantId::default_tenant(), id: "local".into(), roles: vec!["*".into()] });
        }
        let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
        let header = values.next().ok_or_else(|| {
            AuthError::unauthorized("unauthorized", "send `Authorization: Bearer <api key or token>`")
        })?;
        // Two credentials are ambiguous (a proxy may have added one): refuse rather than pick.
        if values.next().is_some() {
            return Err(AuthError {
                status: 400,
                code: "duplicate_authorization",
                message: "send exactly one `Authorization` header; this request has several".into(),
            });
        }
        let credential =
            header.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim).ok_or_else(|| {
                AuthError::unauthorized("unauthorized", "the Authorization header must be `Bearer <credential>`")
            })?;
        if let Some(p) = self.keys.get(&key_hash(credential)) {
            return Ok(p.clone());
        }
        if self.issuers.is_empty() || credential.bytes().filter(|&b| b == b'.').count() != 2 {
            return Err(AuthError::unauthorized("unauthorized", "unknown API key"));
        }
        self.verify_token(credential).await
    }

    async fn verify_token(&self, token: &str) -> Result<Principal, AuthError> {
        let t = jwt::Unverified::parse(token)?;
        let iss = t.claims.get("iss").and_then(|v| v.as_str()).unwrap_or_default();
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config().issuer == iss)
            .ok_or_else(|| TokenError::UnknownIssuer(iss.chars().take(200).collect()))?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        issuer.verify(&t, now).await?;
        principal_of(issuer.config(), &t.claims)
    }
}

/// The principal a verified token's claims name.
fn principal_of(
    cfg: &IssuerConfig,
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<Principal, AuthError> {
    let sub = claims.get("sub").and_then(|v| v.as_str()).unwrap_or_default();
    let tenant = match &cfg.tenant_claim {
        None => TenantId::default_tenant(),
        Some(name) => {
            let value = claims.get(name).and_then(|v| v.as_str()).ok_or_else(|| {
                AuthError::unauthorized("invalid_token", format!("the token has no `{name}` claim naming its tenant"))
            })?;
            TenantId::new(value)
                .map_err(|e| AuthError::unauthorized("invalid_token", format!("claim `{name}`: {e}")))?
        }
    };
    let roles = match claims.get(&cfg.roles_claim) {
        Some(serde_json::Value::String(r)) => r.split_whitespace().map(str::to_owned).collect(),
        Some(serde_json::Value::Array(list)) => list.iter().filter_map(|v| v.as_str()).map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    // `*` means every role; no token may claim it.
    let roles = roles.into_iter().filter(|r: &String| r != "*" && !r.is_empty()).collect();
    Ok(Principal { tenant, id: format!("{}|{sub}", cfg.issuer), roles })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[tokio::test]
    async fn keys_are_looked_up_by_hash() {
        let auth = Auth::none().with_key("key-0123456789abcdef", TenantId::new("acme").unwrap(), "acme/key1", &[]);
        assert!(!format!("{:?}", auth.keys).contains("key-0123456789abcdef"), "the key itself is not held");
        let p = auth.authenticate(&headers("Bearer key-0123456789abcdef")).await.unwrap();
        assert_eq!((p.tenant.as_str(), p.id.as_str()), ("acme", "acme/key1"));
        let e = auth.authenticate(&headers("Bearer key-0123456789abcdeX")).await.unwrap_err();
        assert_eq!((e.status, e.code), (401, "unauthorized"));
        let e = auth.authenticate(&headers("Basic abc")).await.unwrap_err();
        assert_eq!(e.code, "unauthorized");
        // A token-shaped credential without configured issuers is just an unknown key.
        let e = auth.authenticate(&headers("Bearer a.b.c")).await.unwrap_err();
        assert_eq!(e.code, "unauthorized");
    }

    #[test]
    fn claims_name_the_tenant_and_roles() {
        let cfg = IssuerConfig {
            issuer: "https://id.example".into(),
            audiences: vec!["stead".into()],
            tenant_claim: Some("org".into()),
            roles_claim: "groups".into(),
            jwks_url: None,
        };
        let claims = |v: serde_json::Value| v.as_object().unwrap().clone();
        let p = principal_of(
            &cfg,
            &claims(serde_json::json!({"sub": "u1", "org": "acme", "groups": ["approver", "*", 3]})),
        )
        .unwrap();
        assert_eq!(
            p,
            Principal {
                tenant: TenantId::new("acme").unwrap(),
                id: "https://id.example|u1".into(),
                roles: vec!["approver".into()]
            }
        );
        let e = principal_of(&cfg, &claims(serde_json::json!({"sub": "u1"}))).unwrap_err();
        assert_eq!(e.code, "invalid_token");
        let e = principal_of(&cfg, &claims(serde_json::json!({"sub": "u1", "org": "no spaces allowed"}))).unwrap_err();
        assert_eq!(e.code, "invalid_token");
    }
}
