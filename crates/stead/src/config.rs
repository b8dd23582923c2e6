//! `stead serve` options. Every option is a flag, a `STEAD_*` environment variable and a key
//! of the TOML config file (`--config`); flags and env vars win over the file, the file over
//! the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;

#[derive(Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML file with any of the options below (keys use underscores: `data_dir = "..."`).
    #[arg(long, env = "STEAD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8787]. Port 0 picks a free port.
    #[arg(long, env = "STEAD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Where the embedded database lives [default: ./stead-data].
    #[arg(long, env = "STEAD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// `full` (fsync every commit group), `normal` or `off` [default: full].
    #[arg(long, env = "STEAD_DURABILITY")]
    pub durability: Option<String>,
    /// Store in PostgreSQL instead of SQLite: `postgres://USER[:PASSWORD]@HOST:PORT/DB`, shared
    /// by every node given the same URL. Without it, SQLite in --data-dir.
    #[arg(long, env = "STEAD_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// API key as `TENANT:KEY`, or `TENANT:KEY:ROLE+ROLE` to grant roles such as `approver`
    /// (repeat, or comma-separate in the env var). Without any, the server only listens on
    /// loopback and everything belongs to the `default` tenant, with every role.
    #[arg(long = "api-key", env = "STEAD_API_KEYS", value_delimiter = ',', hide_env_values = true)]
    pub api_keys: Vec<String>,
    /// Accept OIDC bearer tokens from this issuer (repeat for several; its keys are found
    /// through `URL/.well-known/openid-configuration`). Needs `--oidc-audience`. Per-issuer
    /// settings (several audiences, claims, a JWKS URL) go in `[[oidc]]` tables.
    #[arg(long = "oidc-issuer", env = "STEAD_OIDC_ISSUERS", value_delimiter = ',')]
    pub oidc_issuers: Vec<String>,
    /// An `aud` value tokens of the `--oidc-issuer`s must carry (repeat for several).
    #[arg(long = "oidc-audience", env = "STEAD_OIDC_AUDIENCES", value_delimiter = ',')]
    pub oidc_audiences: Vec<String>,
    /// The token claim naming a principal's tenant [default: none, every principal is in the
    /// `default` tenant].
    #[arg(long, env = "STEAD_OIDC_TENANT_CLAIM")]
    pub oidc_tenant_claim: Option<String>,
    /// The token claim whose values become roles (a string or an array) [default: roles].
    #[arg(long, env = "STEAD_OIDC_ROLES_CLAIM")]
    pub oidc_roles_claim: Option<String>,
    /// Least seconds between two fetches of an issuer's keys caused by tokens naming a key it
    /// does not have (a rotation, or a flood of forged `kid`s; 1 to 3600) [default: 30].
    #[arg(long, env = "STEAD_OIDC_KEYS_COOLDOWN_SECS")]
    pub oidc_keys_cooldown_secs: Option<u64>,
    /// File holding the vault's key-encryption key (32 bytes as 64 hex digits or base64).
    /// `STEAD_VAULT_KEY` may give the key itself instead [default: DATA_DIR/vault.key, created
    /// on first start].
    #[arg(long, env = "STEAD_VAULT_KEY_FILE")]
    pub vault_key_file: Option<PathBuf>,
    /// Addresses HTTP tools and `http_fetch` may reach although they are private, loopback or
    /// link-local: CIDRs (`10.0.0.0/8`) or host names (repeat, or comma-separate in the env
    /// var); `*` allows everything. By default only public addresses are reachable.
    #[arg(long = "http-allow", env = "STEAD_HTTP_ALLOW", value_delimiter = ',')]
    pub http_allow: Vec<String>,
    /// Routes model names of the OpenAI-compatible API (`/v1/responses`, `/v1/chat/completions`)
    /// to providers: `PATTERN=PROVIDER[:BASE_URL]` (PATTERN is a name, `prefix*` or `*`;
    /// PROVIDER is openai, anthropic or scripted; for scripted the suffix is a chunk delay in
    /// ms). First match wins. Without routes every name goes to OPENAI_BASE_URL unchanged.
    #[arg(long = "model-route", env = "STEAD_MODEL_ROUTES", value_delimiter = ',')]
    pub model_routes: Vec<String>,
    /// Addresses that `server_url`s of `mcp` tools in API requests may reach although they are
    /// private, loopback or link-local (CIDRs or host names; `*` allows everything). While
    /// Stead listens on loopback only, every address is allowed by default.
    #[arg(long = "mcp-url-allow", env = "STEAD_MCP_URL_ALLOW", value_delimiter = ',')]
    pub mcp_url_allow: Vec<String>,
    /// Tenants trusted as the operator: their agent specs may start MCP server commands, choose
    /// model base URLs and key variables, and read any `${env:…}` (repeat, or comma-separate in
    /// the env var). Without API keys the local user is the operator (tenant `default`).
    #[arg(long = "trusted-tenant", env = "STEAD_TRUSTED_TENANTS", value_delimiter = ',')]
    pub trusted_tenants: Vec<String>,
    /// Environment variables tenants' specs may read with `${env:VAR}`: `VAR` (every tenant)
    /// or `TENANT:VAR` (repeat, or comma-separate in the env var). Nothing else is readable.
    #[arg(long = "expose-env", env = "STEAD_EXPOSE_ENV", value_delimiter = ',')]
    pub expose_env: Vec<String>,
    /// Largest request body, in bytes (1024 to 1 GiB) [default: 1048576].
    #[arg(long, env = "STEAD_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Largest run input, in bytes (1 to 256 MiB) [default: 262144].
    #[arg(long, env = "STEAD_MAX_INPUT_BYTES")]
    pub max_input_bytes: Option<usize>,
    /// Tool output beyond this is cut with an explicit marker (1 to 256 MiB) [default: 65536].
    #[arg(long, env = "STEAD_MAX_TOOL_OUTPUT_BYTES")]
    pub max_tool_output_bytes: Option<usize>,
    /// Events one session may hold (1 to 10^9) [default: 1000000].
    #[arg(long, env = "STEAD_MAX_EVENTS_PER_SESSION")]
    pub max_events_per_session: Option<u64>,
    /// Largest single event payload, in bytes (1024 to 256 MiB) [default: 1048576].
    #[arg(long, env = "STEAD_MAX_EVENT_BYTES")]
    pub max_event_bytes: Option<usize>,
    /// Runs this process drives at once (1 to 10000) [default: 512].
    #[arg(long, env = "STEAD_MAX_CONCURRENT_RUNS")]
    pub max_concurrent_runs: Option<usize>,
    /// Seconds a run's lease lasts without renewal (3 to 3600) [default: 30].
    #[arg(long, env = "STEAD_LEASE_SECS")]
    pub lease_secs: Option<u64>,
    /// Longest a `wait` request may block, in seconds (1 to 86400) [default: 600].
    #[arg(long, env = "STEAD_MAX_WAIT_SECS")]
    pub max_wait_secs: Option<u64>,
    /// Name of this node in leases and event actors [default: node_<pid>].
    #[arg(long, env = "STEAD_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Log filter, e.g. `info` or `stead_engine=debug` [default: info].
    #[arg(long, env = "STEAD_LOG")]
    pub log: Option<String>,
    /// Seconds a client may take to send a request's headers, from its connection (or from the
    /// first byte of a request on a kept-alive one; 1 to 3600) [default: 10].
    #[arg(long, env = "STEAD_HEADER_TIMEOUT_SECS")]
    pub header_timeout_secs: Option<u64>,
    /// Seconds a kept-alive connection may stay open with no request in flight (streams in
    /// progress are never cut; 1 to 86400) [default: 60].
    #[arg(long, env = "STEAD_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Open connections at most (1 to 100000). At the cap the connection idle for longest is
    /// closed to admit a new one; if every one has a request in flight, the new one is closed
    /// [default: 4096].
    #[arg(long, env = "STEAD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Rendered conversation items kept in memory across sessions, so that a page of a long
    /// conversation costs O(page) (0 to 10000000; 0 renders every page from the log)
    /// [default: 100000].
    #[arg(long, env = "STEAD_ITEM_CACHE_ITEMS")]
    pub item_cache_items: Option<usize>,
}

/// The config file: the same options, all optional.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    /// `[[oidc]] issuer = "https://…", audiences = ["stead"], tenant_claim = "org", roles_claim = "roles"`.
    #[serde(default)]
    oidc: Vec<stead_identity::IssuerConfig>,
    data_dir: Option<PathBuf>,
    durability: Option<String>,
    store: Option<String>,
    api_keys: Option<Vec<String>>,
    http_allow: Option<Vec<String>>,
    model_routes: Option<Vec<String>>,
    /// Full routes: `[[model_route]] match = "claude-*", provider = "anthropic", ...`.
    #[serde(default)]
    model_route: Vec<stead_openai::ModelRoute>,
    mcp_url_allow: Option<Vec<String>>,
    trusted_tenants: Option<Vec<String>>,
    /// `[[expose_env]] name = "TICKETS_TOKEN", tenants = ["acme"]` (or a plain list of names).
    #[serde(default)]
    expose_env: Vec<stead_core::grants::ExposedVar>,
    /// Model endpoints tenants may use by name: `[[provider]] name = "local", kind = "openai", ...`.
    #[serde(default)]
    provider: Vec<stead_core::grants::NamedProvider>,
    /// MCP servers tenants may use by name: `[[mcp_server]] name = "files", command = "npx", ...`.
    #[serde(default)]
    mcp_server: Vec<stead_core::grants::CatalogServer>,
    max_body_bytes: Option<usize>,
    max_input_bytes: Option<usize>,
    max_tool_output_bytes: Option<usize>,
    max_events_per_session: Option<u64>,
    max_event_bytes: Option<usize>,
    max_concurrent_runs: Option<usize>,
    lease_secs: Option<u64>,
    max_wait_secs: Option<u64>,
    worker_id: Option<String>,
    log: Option<String>,
    header_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    item_cache_items: Option<usize>,
    oidc_keys_cooldown_secs: Option<u64>,
    vault_key_file: Option<PathBuf>,
}

/// Options after merging flags, env, file and defaults.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub durability: stead_store_sqlite::Durability,
    /// A PostgreSQL URL; `None`: SQLite in `data_dir`.
    pub store: Option<String>,
    /// (tenant, key, roles)
    pub api_keys: Vec<(String, String, Vec<String>)>,
    /// OIDC issuers whose tokens are accepted.
    pub oidc: Vec<stead_identity::IssuerConfig>,
    pub http_allow: Vec<String>,
    pub model_routes: Vec<stead_openai::ModelRoute>,
    /// `None`: any address (loopback-only server with nothing configured).
    pub mcp_url_allow: Option<Vec<String>>,
    /// What the operator grants tenants (providers, catalog MCP servers, exposed variables,
    /// trusted tenants); the model routes' own endpoints are added by `serve`.
    pub grants: stead_core::grants::Grants,
    pub max_body_bytes: usize,
    pub max_input_bytes: usize,
    pub max_tool_output_bytes: usize,
    pub max_events_per_session: u64,
    pub max_event_bytes: usize,
    pub max_concurrent_runs: usize,
    pub lease: Duration,
    pub max_wait: Duration,
    pub worker_id: String,
    pub log: String,
    pub connections: crate::http_server::ConnectionLimits,
    pub item_cache_items: usize,
    /// How often unknown keys may make an issuer's keys be fetched again.
    pub oidc_keys_cooldown: Duration,
    pub vault_key_file: Option<PathBuf>,
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

impl ServeArgs {
    pub fn resolve(self) -> anyhow::Result<ServeConfig> {
        let file = match &self.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let durability_text = self.durability.or(file.durability).unwrap_or_else(|| "full".into());
        let durability = durability_text
            .parse::<stead_store_sqlite::Durability>()
            .map_err(|_| anyhow::anyhow!("durability must be `full`, `normal` or `off`, not {durability_text:?}"))?;
        let raw_keys = if self.api_keys.is_empty() { file.api_keys.unwrap_or_default() } else { self.api_keys };
        let mut api_keys = Vec::new();
        for k in raw_keys {
            let Some((tenant, rest)) = k.split_once(':') else {
                bail!("an API key must be given as TENANT:KEY or TENANT:KEY:ROLE+ROLE");
            };
            let (key, roles) = match rest.split_once(':') {
                Some((key, roles)) => (key, roles.split('+').filter(|r| !r.is_empty()).map(str::to_owned).collect()),
                None => (rest, Vec::new()),
            };
            stead_core::ids::TenantId::new(tenant).map_err(|e| anyhow::anyhow!("API key for {tenant:?}: {e}"))?;
            check_api_key(tenant, key, &api_keys)?;
            api_keys.push((tenant.to_owned(), key.to_owned(), roles));
        }
        let mut model_routes = file.model_route;
        let flags =
            if self.model_routes.is_empty() { file.model_routes.unwrap_or_default() } else { self.model_routes };
        for r in flags {
            model_routes.push(stead_openai::ModelRoute::parse_flag(&r).map_err(|e| anyhow::anyhow!(e))?);
        }
        for r in &model_routes {
            r.validate().map_err(|e| anyhow::anyhow!(e))?;
        }
        let listen = self.listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:8787".parse().expect("valid default"));
        let mcp_allow =
            if self.mcp_url_allow.is_empty() { file.mcp_url_allow.unwrap_or_default() } else { self.mcp_url_allow };
        // A server reachable only from this machine lets its callers reach what they already can.
        let mcp_url_allow = if mcp_allow.is_empty() && listen.ip().is_loopback() { None } else { Some(mcp_allow) };
        let trusted = if self.trusted_tenants.is_empty() {
            file.trusted_tenants.unwrap_or_default()
        } else {
            self.trusted_tenants
        };
        let mut oidc = file.oidc;
        for issuer in self.oidc_issuers {
            oidc.push(stead_identity::IssuerConfig {
                issuer,
                audiences: self.oidc_audiences.clone(),
                tenant_claim: self.oidc_tenant_claim.clone(),
                roles_claim: self.oidc_roles_claim.clone().unwrap_or_else(stead_identity::oidc::default_roles_claim),
                jwks_url: None,
            });
        }
        if oidc.is_empty() && (!self.oidc_audiences.is_empty() || self.oidc_tenant_claim.is_some()) {
            bail!("--oidc-audience and --oidc-tenant-claim need an --oidc-issuer");
        }
        let authenticated = !api_keys.is_empty() || !oidc.is_empty();
        let grants = grants(authenticated, trusted, self.expose_env, file.expose_env, file.provider, file.mcp_server)?;
        let cfg = ServeConfig {
            grants,
            listen,
            model_routes,
            mcp_url_allow,
            data_dir: self.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("./stead-data")),
            durability,
            store: store_url(self.store.or(file.store))?,
            api_keys,
            oidc,
            http_allow: if self.http_allow.is_empty() { file.http_allow.unwrap_or_default() } else { self.http_allow },
            max_body_bytes: self.max_body_bytes.or(file.max_body_bytes).unwrap_or(1024 * 1024),
            max_input_bytes: self.max_input_bytes.or(file.max_input_bytes).unwrap_or(256 * 1024),
            max_tool_output_bytes: self.max_tool_output_bytes.or(file.max_tool_output_bytes).unwrap_or(64 * 1024),
            max_events_per_session: self.max_events_per_session.or(file.max_events_per_session).unwrap_or(1_000_000),
            max_event_bytes: self.max_event_bytes.or(file.max_event_bytes).unwrap_or(1024 * 1024),
            max_concurrent_runs: self.max_concurrent_runs.or(file.max_concurrent_runs).unwrap_or(512),
            lease: Duration::from_secs(self.lease_secs.or(file.lease_secs).unwrap_or(30)),
            max_wait: Duration::from_secs(self.max_wait_secs.or(file.max_wait_secs).unwrap_or(600)),
            worker_id: self.worker_id.or(file.worker_id).unwrap_or_else(|| format!("node_{}", std::process::id())),
            log: self.log.or(file.log).unwrap_or_else(|| "info".into()),
            connections: crate::http_server::ConnectionLimits {
                header_timeout: Duration::from_secs(
                    self.header_timeout_secs.or(file.header_timeout_secs).unwrap_or(10),
                ),
                idle_timeout: Duration::from_secs(self.idle_timeout_secs.or(file.idle_timeout_secs).unwrap_or(60)),
                max_connections: self.max_connections.or(file.max_connections).unwrap_or(4096),
            },
            item_cache_items: self
                .item_cache_items
                .or(file.item_cache_items)
                .unwrap_or(stead_openai::DEFAULT_ITEM_CACHE_ITEMS),
            vault_key_file: self.vault_key_file.or(file.vault_key_file),
            oidc_keys_cooldown: Duration::from_secs(
                self.oidc_keys_cooldown_secs.or(file.oidc_keys_cooldown_secs).unwrap_or(30),
            ),
        };
        cfg.check()?;
        Ok(cfg)
    }
}

/// `--store`: a PostgreSQL URL, or nothing (SQLite). The message never repeats the value (it
/// may hold a password).
fn store_url(store: Option<String>) -> anyhow::Result<Option<String>> {
    match store {
        Some(url) if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) => {
            bail!(
                "--store must be a PostgreSQL URL (postgres://USER@HOST:PORT/DB); omit it to use SQLite in --data-dir"
            )
        }
        other => Ok(other),
    }
}

/// A key a client can send and no other key equals: at least 16 visible ASCII characters (a
/// header value is trimmed, so a key of spaces — or with any — could never match).
fn check_api_key(tenant: &str, key: &str, earlier: &[(String, String, Vec<String>)]) -> anyhow::Result<()> {
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("API key for tenant {tenant:?} must be visible ASCII characters only, without spaces");
    }
    if key.len() < 16 {
        bail!("API key for tenant {tenant:?} is too short: use at least 16 characters");
    }
    if earlier.iter().any(|(_, k, _)| k == key) {
        bail!("API key for tenant {tenant:?} is configured twice: every key must be distinct");
    }
    Ok(())
}

/// The operator's grants from the options. Without authentication the local user is the operator.
fn grants(
    authenticated: bool,
    trusted: Vec<String>,
    expose_flags: Vec<String>,
    mut exposed: Vec<stead_core::grants::ExposedVar>,
    providers: Vec<stead_core::grants::NamedProvider>,
    catalog: Vec<stead_core::grants::CatalogServer>,
) -> anyhow::Result<stead_core::grants::Grants> {
    use stead_core::grants::{ExposedVar, Grants, TenantSet};
    let tenant = |t: &str| {
        stead_core::ids::TenantId::new(t).map(|_| t.to_owned()).map_err(|e| anyhow::anyhow!("--trusted-tenant: {e}"))
    };
    let mut g = Grants::default();
    if !authenticated {
        g.trusted_tenants.insert(stead_core::ids::TenantId::default_tenant().as_str().to_owned());
    }
    for t in trusted {
        g.trusted_tenants.insert(tenant(t.trim())?);
    }
    for flag in expose_flags {
        let (tenants, var) = match flag.split_once(':') {
            Some((t, v)) => (TenantSet(Some([tenant(t.trim())?].into())), v.trim()),
            None => (TenantSet::default(), flag.trim()),
        };
        exposed.push(ExposedVar { name: var.to_owned(), tenants });
    }
    for v in &exposed {
        if v.name.is_empty() || !v.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            bail!("--expose-env: {:?} is not an environment variable name", v.name);
        }
    }
    g.exposed_env = exposed;
    for p in providers {
        if g.providers.insert(p.name.clone(), p.clone()).is_some() {
            bail!("[[provider]] `{}` is declared twice", p.name);
        }
    }
    for m in catalog {
        if g.mcp_catalog.insert(m.name.clone(), m.clone()).is_some() {
            bail!("[[mcp_server]] `{}` is declared twice", m.name);
        }
    }
    g.validate().map_err(|e| anyhow::anyhow!(e))?;
    Ok(g)
}

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// Refuses a numeric option outside `least..=most`, naming its flag and its config key.
fn check_range(key: &str, value: u64, least: u64, most: u64) -> anyhow::Result<()> {
    if !(least..=most).contains(&value) {
        let flag = key.replace('_', "-");
        bail!("--{flag} (config key `{key}`) must be between {least} and {most}, not {value}");
    }
    Ok(())
}

impl ServeConfig {
    fn check(&self) -> anyhow::Result<()> {
        if !self.listen.ip().is_loopback() && self.api_keys.is_empty() && self.oidc.is_empty() {
            bail!(
                "refusing to listen on {} without authentication: configure an API key (--api-key TENANT:KEY) or an OIDC issuer (--oidc-issuer), or listen on loopback",
                self.listen
            );
        }
        let c = &self.connections;
        // (config key, value, least, most): beyond these a value is a mistake that would fail
        // later and worse (a dispatcher that cannot start, a deadline past the clock's end).
        let ranges = [
            ("max_body_bytes", self.max_body_bytes as u64, 1024, GIB),
            ("max_input_bytes", self.max_input_bytes as u64, 1, 256 * MIB),
            ("max_tool_output_bytes", self.max_tool_output_bytes as u64, 1, 256 * MIB),
            ("max_events_per_session", self.max_events_per_session, 1, 1_000_000_000),
            ("max_event_bytes", self.max_event_bytes as u64, 1024, 256 * MIB),
            ("max_concurrent_runs", self.max_concurrent_runs as u64, 1, 10_000),
            ("lease_secs", self.lease.as_secs(), 3, 3600),
            ("max_wait_secs", self.max_wait.as_secs(), 1, 86_400),
            ("header_timeout_secs", c.header_timeout.as_secs(), 1, 3600),
            ("idle_timeout_secs", c.idle_timeout.as_secs(), 1, 86_400),
            ("max_connections", c.max_connections as u64, 1, 100_000),
            ("item_cache_items", self.item_cache_items as u64, 0, 10_000_000),
            ("oidc_keys_cooldown_secs", self.oidc_keys_cooldown.as_secs(), 1, 3600),
        ];
        for (key, value, least, most) in ranges {
            check_range(key, value, least, most)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_loopback_and_local_data() {
        let cfg = ServeArgs::default().resolve().unwrap();
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:8787");
        assert_eq!(cfg.data_dir, PathBuf::from("./stead-data"));
    }

    #[test]
    fn public_address_without_keys_is_refused() {
        let args = ServeArgs { listen: Some("0.0.0.0:8787".parse().unwrap()), ..Default::default() };
        let err = args.resolve().unwrap_err().to_string();
        assert!(err.contains("without authentication"), "{err}");
        let args = ServeArgs {
            listen: Some("0.0.0.0:8787".parse().unwrap()),
            api_keys: vec!["acme:0123456789abcdef".into()],
            ..Default::default()
        };
        assert!(args.resolve().is_ok());
    }

    #[test]
    fn every_numeric_option_is_bounded_and_its_flag_named() {
        type Set = fn(&mut ServeArgs, u64);
        let options: [(&str, Set, u64, u64); 13] = [
            ("max-body-bytes", |a, v| a.max_body_bytes = Some(v as usize), 1024, 1 << 30),
            ("max-input-bytes", |a, v| a.max_input_bytes = Some(v as usize), 1, 256 << 20),
            ("max-tool-output-bytes", |a, v| a.max_tool_output_bytes = Some(v as usize), 1, 256 << 20),
            ("max-events-per-session", |a, v| a.max_events_per_session = Some(v), 1, 1_000_000_000),
            ("max-event-bytes", |a, v| a.max_event_bytes = Some(v as usize), 1024, 256 << 20),
            ("max-concurrent-runs", |a, v| a.max_concurrent_runs = Some(v as usize), 1, 10_000),
            ("lease-secs", |a, v| a.lease_secs = Some(v), 3, 3600),
            ("max-wait-secs", |a, v| a.max_wait_secs = Some(v), 1, 86_400),
            ("header-timeout-secs", |a, v| a.header_timeout_secs = Some(v), 1, 3600),
            ("idle-timeout-secs", |a, v| a.idle_timeout_secs = Some(v), 1, 86_400),
            ("max-connections", |a, v| a.max_connections = Some(v as usize), 1, 100_000),
            ("item-cache-items", |a, v| a.item_cache_items = Some(v as usize), 0, 10_000_000),
            ("oidc-keys-cooldown-secs", |a, v| a.oidc_keys_cooldown_secs = Some(v), 1, 3600),
        ];
        for (flag, set, least, most) in options {
            for ok in [least, most] {
                let mut args = ServeArgs::default();
                set(&mut args, ok);
                assert!(args.resolve().is_ok(), "--{flag} {ok} is in range");
            }
            for bad in [least.checked_sub(1), Some(most + 1), Some(u64::MAX)].into_iter().flatten() {
                let mut args = ServeArgs::default();
                set(&mut args, bad);
                let err = args.resolve().expect_err(flag).to_string();
                assert!(err.starts_with(&format!("--{flag} ")), "{flag} = {bad}: {err}");
                assert!(err.contains(&format!("between {least} and {most}, not {bad}")), "{err}");
            }
        }
    }

    #[test]
    fn file_fills_in_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stead.toml");
        std::fs::write(&path, "data_dir = \"/tmp/x\"\nmax_body_bytes = 4200\nlisten = \"127.0.0.1:9000\"\n").unwrap();
        let args = ServeArgs { config: Some(path.clone()), max_body_bytes: Some(7000), ..Default::default() };
        let cfg = args.resolve().unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(cfg.max_body_bytes, 7000);
        assert_eq!(cfg.listen.port(), 9000);
        std::fs::write(&path, "store = \"postgres://root@127.0.0.1:5432/test\"\n").unwrap();
        let cfg = ServeArgs { config: Some(path.clone()), ..Default::default() }.resolve().unwrap();
        assert_eq!(cfg.store.as_deref(), Some("postgres://root@127.0.0.1:5432/test"));
        let err = ServeArgs { store: Some("mysql://u:secret@h/db".into()), ..Default::default() }
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(err.contains("--store must be a PostgreSQL URL") && !err.contains("secret"), "{err}");
        std::fs::write(&path, "data_dri = \"/tmp/x\"\n").unwrap();
        let err = format!("{:#}", ServeArgs { config: Some(path), ..Default::default() }.resolve().unwrap_err());
        assert!(err.contains("data_dri"), "{err}");
    }
}
