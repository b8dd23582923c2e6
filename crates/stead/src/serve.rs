//! `stead serve`: opens the store, starts the engine's dispatcher and serves the API until
//! SIGINT/SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use stead_api::{ApiOptions, AppState, Auth};
use stead_core::ids::TenantId;
use stead_engine::{Engine, EngineOptions, ToolRegistry};
use stead_model::{ProviderDefaults, Providers};
use stead_store_postgres::{PostgresOptions, PostgresStore};
use stead_store_sqlite::{SqliteOptions, SqliteStore};
use stead_tools_http::{Guard, GuardConfig, HttpCaller, Limits as HttpLimits};
use tokio_util::sync::CancellationToken;

use crate::config::ServeArgs;

/// The vault's key-encryption key: `STEAD_VAULT_KEY` (the key itself), `--vault-key-file`, or
/// else `vault.key` in the data directory, created on first start (mode 0600; it then lives
/// beside the data it protects, so a copy of the database alone reveals no secret).
/// Several nodes on PostgreSQL must share one key, so none is made for them: without a
/// configured key their vault is off (`/v1/secrets` answers `503 vault_disabled`).
fn vault_key(cfg: &crate::config::ServeConfig) -> anyhow::Result<Option<stead_vault::Kek>> {
    if let Ok(text) = std::env::var("STEAD_VAULT_KEY")
        && !text.trim().is_empty()
    {
        return stead_vault::Kek::from_text(&text).map(Some).map_err(|e| anyhow::anyhow!("STEAD_VAULT_KEY: {e}"));
    }
    if cfg.store.is_some() && cfg.vault_key_file.is_none() {
        tracing::warn!(
            "the vault is off: with --store, give every node the same key (--vault-key-file or STEAD_VAULT_KEY)"
        );
        return Ok(None);
    }
    let path = cfg.vault_key_file.clone().unwrap_or_else(|| cfg.data_dir.join("vault.key"));
    if cfg.vault_key_file.is_none() && !path.exists() {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create the vault key {}", path.display()))?;
        writeln!(f, "{}", stead_vault::Kek::generate_text())?;
        f.sync_all()?;
        tracing::warn!(path = %path.display(), "created a vault key beside the data; keep a copy elsewhere, or set --vault-key-file / STEAD_VAULT_KEY");
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("cannot read the vault key {}", path.display()))?;
    stead_vault::Kek::from_text(&text).map(Some).map_err(|e| anyhow::anyhow!("vault key {}: {e}", path.display()))
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.resolve()?;
    // rmcp's own log lines quote server answers (a 401 body may echo the token): off unless named.
    let log = if cfg.log.contains("rmcp") { cfg.log.clone() } else { format!("{},rmcp=off", cfg.log) };
    let filter = tracing_subscriber::EnvFilter::try_new(&log).context("invalid --log filter")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();

    let (store, data): (Arc<dyn stead_store::Store>, String) = match &cfg.store {
        Some(url) => {
            let options = PostgresOptions::new(url)
                .max_events_per_session(cfg.max_events_per_session)
                .max_event_bytes(cfg.max_event_bytes);
            let store = PostgresStore::open(options).await.context("cannot open the PostgreSQL store")?;
            let data = format!("postgres {}", store.target());
            (store, data)
        }
        None => {
            std::fs::create_dir_all(&cfg.data_dir)
                .with_context(|| format!("cannot create data directory {}", cfg.data_dir.display()))?;
            let options = SqliteOptions::new(&cfg.data_dir)
                .durability(cfg.durability)
                .max_events_per_session(cfg.max_events_per_session)
                .max_event_bytes(cfg.max_event_bytes);
            let store = SqliteStore::open(options)
                .with_context(|| format!("cannot open the store in {}", cfg.data_dir.display()))?;
            (store, format!("{}, durability: {}", cfg.data_dir.display(), cfg.durability))
        }
    };

    let guard = Guard::new(GuardConfig {
        allow: cfg.http_allow.iter().filter(|a| a.as_str() != "*").cloned().collect(),
        allow_all: cfg.http_allow.iter().any(|a| a == "*"),
    })
    .map_err(|e| anyhow::anyhow!("--http-allow: {e}"))?;
    let limits = HttpLimits { max_response_bytes: cfg.max_tool_output_bytes, ..HttpLimits::default() };
    let http = HttpCaller::new(guard, limits).context("cannot set up the HTTP tool client")?;
    let mcp_guard = match &cfg.mcp_url_allow {
        None => None,
        Some(allow) => Some(Arc::new(
            Guard::new(GuardConfig {
                allow: allow.iter().filter(|a| a.as_str() != "*").cloned().collect(),
                allow_all: allow.iter().any(|a| a == "*"),
            })
            .map_err(|e| anyhow::anyhow!("--mcp-url-allow: {e}"))?,
        )),
    };
    let grants = Arc::new(operator_grants(&cfg)?);
    let store = store as Arc<dyn stead_store::Store>;
    let vault = vault_key(&cfg)?.map(|kek| Arc::new(stead_vault::Vault::new(store.clone(), kek)));
    if let Some(v) = &vault {
        tracing::info!(key = v.kek_id(), "vault ready");
    }
    let engine = Engine::new(
        store,
        Providers::with_named(ProviderDefaults::from_env(), grants.providers.values().cloned().collect()),
        ToolRegistry::with_builtins().with_http(http),
        EngineOptions {
            worker_id: cfg.worker_id.clone(),
            lease: cfg.lease,
            max_concurrent_runs: cfg.max_concurrent_runs,
            max_input_bytes: cfg.max_input_bytes,
            max_tool_output_bytes: cfg.max_tool_output_bytes,
            grants,
            mcp_url_guard: mcp_guard.clone(),
            vault,
            ..EngineOptions::default()
        },
    );
    let mut auth = Auth::none();
    for (i, (tenant, key, roles)) in cfg.api_keys.iter().enumerate() {
        let t = TenantId::new(tenant)?;
        // A principal is named by its tenant and its key's position in the configuration —
        // never by any part of the key, which would then reach the log.
        auth = auth.with_key(key, t, &format!("{tenant}/key{}", i + 1), roles);
    }
    let key_policy = stead_identity::KeyPolicy { cooldown: cfg.oidc_keys_cooldown, ..Default::default() };
    for cfg in &cfg.oidc {
        let issuer = Arc::new(stead_identity::Issuer::new(cfg.clone(), key_policy).map_err(|e| anyhow::anyhow!(e))?);
        // Unreachable now is not fatal: the first token tries again.
        match issuer.prefetch().await {
            Ok(n) => tracing::info!(issuer = %cfg.issuer, keys = n, "OIDC issuer ready"),
            Err(e) => {
                tracing::warn!(issuer = %cfg.issuer, error = %e, "OIDC issuer not reachable yet; its tokens are checked once it is")
            }
        }
        auth = auth.with_issuer(issuer);
    }
    let auth = Arc::new(auth);
    // Unstored (`store: false`) responses a crash left behind are erased before serving.
    let mut tenants = vec![TenantId::default_tenant()];
    for (tenant, _, _) in &cfg.api_keys {
        tenants.push(TenantId::new(tenant)?);
    }
    let swept = stead_openai::sweep_unstored(&engine, &tenants).await;
    if swept > 0 {
        tracing::info!(sessions = swept, "erased unstored responses left by a crash");
    }
    let openai = stead_openai::router(stead_openai::OaiState {
        engine: engine.clone(),
        auth: auth.clone(),
        options: Arc::new(stead_openai::OpenAiOptions {
            routes: stead_openai::ModelRoutes::new(cfg.model_routes.clone()),
            mcp_guard,
            max_wait: cfg.max_wait,
            max_body_bytes: cfg.max_body_bytes,
            ..Default::default()
        }),
        items: Arc::new(stead_openai::ItemCache::new(cfg.item_cache_items)),
    });
    let app = stead_api::app(AppState {
        engine: engine.clone(),
        auth,
        options: ApiOptions { max_body_bytes: cfg.max_body_bytes, max_wait: cfg.max_wait },
    })
    .merge(openai);

    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let dispatcher = tokio::spawn({
        let (engine, shutdown) = (engine.clone(), shutdown.clone());
        async move { engine.run(shutdown).await }
    });
    // Tests and scripts wait for this exact line.
    eprintln!("stead listening on http://{addr} (data: {data})");
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        signal.cancel();
    });
    let graceful = shutdown.clone();
    crate::http_server::serve(listener, app, cfg.connections, graceful).await?;
    shutdown.cancel();
    let _ = dispatcher.await;
    eprintln!("stead stopped");
    Ok(ExitCode::SUCCESS)
}

/// The config's grants plus the endpoints model routes declare (usable by every tenant: the
/// Responses API's runs reference them by name).
fn operator_grants(cfg: &crate::config::ServeConfig) -> anyhow::Result<stead_core::grants::Grants> {
    let mut grants = cfg.grants.clone();
    for route in &cfg.model_routes {
        if let Some(p) = route.declared_provider() {
            grants.providers.insert(p.name.clone(), p);
        }
    }
    grants.validate().map_err(|e| anyhow::anyhow!(e))?;
    Ok(grants)
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
