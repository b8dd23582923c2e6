//! The provider registry: turns an agent's `ModelSpec` into a ready provider, resolving base
//! URL and key from the spec, then the environment, and reusing one client per endpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stead_core::agent::{ModelSpec, Provider};
use stead_core::grants::NamedProvider;

use crate::anthropic::AnthropicProvider;
use crate::http::http_client;
use crate::openai::OpenAiProvider;
use crate::scripted::ScriptedModel;
use crate::{Error, ErrorKind, ModelProvider};

pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
/// The API root; requests go to `{root}/v1/messages`.
pub const DEFAULT_ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";

/// Server-wide fallbacks for specs that do not name a base URL or key variable.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProviderDefaults {
    pub openai_base_url: Option<String>,
    pub openai_api_key: Option<String>,
    pub anthropic_base_url: Option<String>,
    pub anthropic_api_key: Option<String>,
}

impl std::fmt::Debug for ProviderDefaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderDefaults")
            .field("openai_base_url", &self.openai_base_url)
            .field("openai_api_key", &self.openai_api_key.as_ref().map(|_| "[redacted]"))
            .field("anthropic_base_url", &self.anthropic_base_url)
            .field("anthropic_api_key", &self.anthropic_api_key.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl ProviderDefaults {
    /// From `OPENAI_BASE_URL`, `OPENAI_API_KEY`, `ANTHROPIC_BASE_URL` and `ANTHROPIC_API_KEY`;
    /// empty values count as unset.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        Self {
            openai_base_url: var("OPENAI_BASE_URL"),
            openai_api_key: var("OPENAI_API_KEY"),
            anthropic_base_url: var("ANTHROPIC_BASE_URL"),
            anthropic_api_key: var("ANTHROPIC_API_KEY"),
        }
    }
}

/// Builds providers for specs. Cloning is cheap; clones share clients and connections.
#[derive(Clone, Debug)]
pub struct Providers {
    inner: Arc<Inner>,
}

struct Inner {
    defaults: ProviderDefaults,
    /// Providers the operator declared by name (`[[provider]]`).
    named: HashMap<String, NamedProvider>,
    /// Test and benchmark hook: when set, every spec gets this provider.
    override_all: Option<Arc<dyn ModelProvider>>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("defaults", &self.defaults)
            .field("named", &self.named.keys().collect::<Vec<_>>())
            .field("override_all", &self.override_all.is_some())
            .field("state", &self.state)
            .finish()
    }
}

#[derive(Default)]
struct State {
    /// Built on first use, so a server that only runs scripted agents never sets up TLS.
    http: Option<reqwest::Client>,
    /// One client per (base URL, key): the same server with another key is another account.
    openai: HashMap<(String, Option<String>), OpenAiProvider>,
    anthropic: HashMap<(String, Option<String>), AnthropicProvider>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("openai_clients", &self.openai.len())
            .field("anthropic_clients", &self.anthropic.len())
            .finish()
    }
}

impl Providers {
    pub fn new(defaults: ProviderDefaults) -> Self {
        Self::with_named(defaults, Vec::new())
    }

    /// A registry that also knows the providers the operator declared by name.
    pub fn with_named(defaults: ProviderDefaults, named: Vec<NamedProvider>) -> Self {
        let named = named.into_iter().map(|p| (p.name.clone(), p)).collect();
        Self { inner: Arc::new(Inner { defaults, named, override_all: None, state: Mutex::new(State::default()) }) }
    }

    /// Test and benchmark hook: a registry that hands `provider` to every spec, whatever
    /// provider the spec names, so a harness can stand in for the model or observe each call
    /// (e.g. wrap [`ScriptedModel`] to timestamp when a model call starts). Not reachable
    /// from any configuration; `stead serve` never uses it.
    pub fn with_override(defaults: ProviderDefaults, provider: Arc<dyn ModelProvider>) -> Self {
        Self {
            inner: Arc::new(Inner {
                defaults,
                named: HashMap::new(),
                override_all: Some(provider),
                state: Mutex::new(State::default()),
            }),
        }
    }

    pub fn defaults(&self) -> &ProviderDefaults {
        &self.inner.defaults
    }

    /// The provider for `spec`. Errors are `Config` errors (bad base URL, key variable unset).
    pub fn for_spec(&self, spec: &ModelSpec) -> Result<Arc<dyn ModelProvider>, Error> {
        if let Some(p) = &self.inner.override_all {
            return Ok(p.clone());
        }
        let spec = self.resolve(spec)?;
        match spec.provider {
            Provider::Scripted => Ok(Arc::new(ScriptedModel::new(spec.chunk_delay_ms))),
            Provider::Openai => Ok(Arc::new(self.openai(&spec)?)),
            Provider::Anthropic => Ok(Arc::new(self.anthropic(&spec)?)),
            Provider::Named(n) => {
                Err(Error::new(ErrorKind::Config, format!("provider `{n}` must be declared with a built-in kind")))
            }
        }
    }

    /// `spec` with a named provider replaced by its declaration (kind, base URL, key
    /// variable — all the operator's, whatever the spec says).
    pub fn resolve(&self, spec: &ModelSpec) -> Result<ModelSpec, Error> {
        let Provider::Named(name) = &spec.provider else { return Ok(spec.clone()) };
        let Some(p) = self.inner.named.get(name) else {
            return Err(Error::new(
                ErrorKind::Config,
                format!("model provider `{name}` is not declared on this server"),
            ));
        };
        Ok(ModelSpec {
            provider: p.kind.clone(),
            base_url: p.base_url.clone(),
            api_key_env: p.api_key_env.clone(),
            ..spec.clone()
        })
    }

    /// The OpenAI-compatible provider for `spec`, with its timeout.
    pub fn openai(&self, spec: &ModelSpec) -> Result<OpenAiProvider, Error> {
        let defaults = &self.inner.defaults;
        let base_url = base_url(spec, defaults.openai_base_url.as_deref(), DEFAULT_OPENAI_BASE_URL);
        let key = api_key(spec, &defaults.openai_api_key)?;
        let timeout = Duration::from_secs(spec.timeout_secs.max(1));
        let mut state = self.inner.lock();
        let cache_key = (base_url, key);
        if let Some(p) = state.openai.get(&cache_key) {
            return Ok(p.with_timeout(timeout));
        }
        let provider = OpenAiProvider::new(state.http()?, &cache_key.0, cache_key.1.as_deref(), timeout)?;
        state.openai.insert(cache_key, provider.clone());
        Ok(provider)
    }

    /// The Anthropic Messages provider for `spec`, with its timeout: base URL from the spec,
    /// else `ANTHROPIC_BASE_URL` (via the defaults), else [`DEFAULT_ANTHROPIC_BASE_URL`]; key
    /// from the spec's `api_key_env`, else `ANTHROPIC_API_KEY` (via the defaults).
    pub fn anthropic(&self, spec: &ModelSpec) -> Result<AnthropicProvider, Error> {
        let defaults = &self.inner.defaults;
        let base_url = base_url(spec, defaults.anthropic_base_url.as_deref(), DEFAULT_ANTHROPIC_BASE_URL);
        let key = api_key(spec, &defaults.anthropic_api_key)?;
        let timeout = Duration::from_secs(spec.timeout_secs.max(1));
        let mut state = self.inner.lock();
        let cache_key = (base_url, key);
        if let Some(p) = state.anthropic.get(&cache_key) {
            return Ok(p.with_timeout(timeout));
        }
        let provider = AnthropicProvider::new(state.http()?, &cache_key.0, cache_key.1.as_deref(), timeout)?;
        state.anthropic.insert(cache_key, provider.clone());
        Ok(provider)
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// The shared HTTP client, built on first use.
    fn http(&mut self) -> Result<reqwest::Client, Error> {
        if let Some(h) = &self.http {
            return Ok(h.clone());
        }
        let h = http_client()?;
        self.http = Some(h.clone());
        Ok(h)
    }
}

/// The spec's base URL, else the server-wide default, else the provider's public endpoint.
fn base_url(spec: &ModelSpec, default: Option<&str>, fallback: &str) -> String {
    spec.base_url.as_deref().or(default).unwrap_or(fallback).trim().trim_end_matches('/').to_owned()
}

/// The key from the variable the spec names (which must then be set), else the default key.
fn api_key(spec: &ModelSpec, default: &Option<String>) -> Result<Option<String>, Error> {
    match &spec.api_key_env {
        Some(var) => match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_owned())),
            _ => Err(Error::new(
                ErrorKind::Config,
                format!("environment variable `{var}` (model.api_key_env) is not set"),
            )),
        },
        None => Ok(default.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(provider: Provider) -> ModelSpec {
        ModelSpec {
            provider,
            name: "m".into(),
            base_url: None,
            api_key_env: None,
            temperature: None,
            max_tokens: None,
            stream: true,
            timeout_secs: 7,
            max_retries: 3,
            chunk_delay_ms: 0,
            tool_choice: None,
            parallel_tool_calls: None,
        }
    }

    #[test]
    fn base_url_resolution_and_caching() {
        let providers = Providers::new(ProviderDefaults::default());
        let a = providers.openai(&spec(Provider::Openai)).unwrap();
        assert_eq!(a.url(), "https://api.openai.com/v1/chat/completions");
        assert_eq!(a.timeout(), Duration::from_secs(7));

        let with_defaults = Providers::new(ProviderDefaults {
            openai_base_url: Some("http://127.0.0.1:11434/v1/".into()),
            ..Default::default()
        });
        let b = with_defaults.openai(&spec(Provider::Openai)).unwrap();
        assert_eq!(b.url(), "http://127.0.0.1:11434/v1/chat/completions");

        let mut s = spec(Provider::Openai);
        s.base_url = Some("http://localhost:8000/v1".into());
        s.timeout_secs = 3;
        let c1 = with_defaults.openai(&s).unwrap();
        let c2 = with_defaults.clone().openai(&s).unwrap();
        assert_eq!(c1.url(), "http://localhost:8000/v1/chat/completions");
        assert!(c1.same_endpoint(&c2), "one client per (base_url, key)");
        assert!(!c1.same_endpoint(&b));
        assert_eq!(c2.timeout(), Duration::from_secs(3));
    }

    #[test]
    fn missing_key_variable_is_a_config_error_naming_it() {
        let mut s = spec(Provider::Openai);
        s.api_key_env = Some("STEAD_TEST_SURELY_UNSET_KEY_VAR".into());
        let err = Providers::new(ProviderDefaults::default()).for_spec(&s).err().unwrap();
        assert_eq!(err.kind, ErrorKind::Config);
        assert!(err.message.contains("STEAD_TEST_SURELY_UNSET_KEY_VAR"), "{err}");
    }

    #[test]
    fn bad_base_url_is_config_error() {
        let mut s = spec(Provider::Openai);
        s.base_url = Some("ftp://x".into());
        let err = Providers::new(ProviderDefaults::default()).for_spec(&s).err().unwrap();
        assert_eq!(err.kind, ErrorKind::Config);
    }

    #[test]
    fn override_serves_every_spec() {
        let scripted: Arc<dyn ModelProvider> = Arc::new(ScriptedModel::new(0));
        let providers = Providers::with_override(ProviderDefaults::default(), scripted.clone());
        for provider in [Provider::Openai, Provider::Anthropic, Provider::Scripted] {
            let got = providers.for_spec(&spec(provider.clone())).unwrap();
            assert!(Arc::ptr_eq(&got, &scripted), "{provider:?}");
        }
    }

    #[test]
    fn defaults_debug_hides_the_keys() {
        let d = ProviderDefaults {
            openai_api_key: Some("sk-secret".into()),
            anthropic_api_key: Some("sk-ant-secret".into()),
            ..Default::default()
        };
        let debug = format!("{d:?}");
        assert!(!debug.contains("sk-secret") && !debug.contains("sk-ant-secret"), "{debug}");
        assert!(debug.contains("anthropic_api_key"), "{debug}");
    }

    #[test]
    fn anthropic_resolution_and_caching() {
        // No defaults: the public endpoint.
        let providers = Providers::new(ProviderDefaults::default());
        let a = providers.anthropic(&spec(Provider::Anthropic)).unwrap();
        assert_eq!(a.url(), "https://api.anthropic.com/v1/messages");
        assert_eq!(a.timeout(), Duration::from_secs(7));
        // `for_spec` builds it too (it used to be a Config error).
        providers.for_spec(&spec(Provider::Anthropic)).unwrap();

        // The Anthropic defaults apply to Anthropic specs only, and the OpenAI ones to OpenAI specs.
        let with_defaults = Providers::new(ProviderDefaults {
            openai_base_url: Some("http://openai.local/v1".into()),
            anthropic_base_url: Some("http://127.0.0.1:9/".into()),
            anthropic_api_key: Some("sk-ant-x".into()),
            ..Default::default()
        });
        let b = with_defaults.anthropic(&spec(Provider::Anthropic)).unwrap();
        assert_eq!(b.url(), "http://127.0.0.1:9/v1/messages");
        assert!(format!("{b:?}").contains("has_key: true"));
        assert_eq!(
            with_defaults.openai(&spec(Provider::Openai)).unwrap().url(),
            "http://openai.local/v1/chat/completions"
        );

        // The spec's base URL wins; one client per (base_url, key).
        let mut s = spec(Provider::Anthropic);
        s.base_url = Some("http://localhost:8000".into());
        s.timeout_secs = 3;
        let c1 = with_defaults.anthropic(&s).unwrap();
        let c2 = with_defaults.clone().anthropic(&s).unwrap();
        assert_eq!(c1.url(), "http://localhost:8000/v1/messages");
        assert!(c1.same_endpoint(&c2));
        assert!(!c1.same_endpoint(&b));
        assert_eq!(c2.timeout(), Duration::from_secs(3));

        // A key variable the spec names must be set.
        s.api_key_env = Some("STEAD_TEST_SURELY_UNSET_ANTHROPIC_KEY".into());
        let err = with_defaults.for_spec(&s).err().unwrap();
        assert_eq!(err.kind, ErrorKind::Config);
        assert!(err.message.contains("STEAD_TEST_SURELY_UNSET_ANTHROPIC_KEY"), "{err}");

        s.api_key_env = None;
        s.base_url = Some("ftp://x".into());
        assert_eq!(with_defaults.for_spec(&s).err().unwrap().kind, ErrorKind::Config);
    }

    #[test]
    fn from_env_reads_the_anthropic_variables() {
        // Read-only (setting variables would race other tests): whatever the environment holds.
        let var = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let d = ProviderDefaults::from_env();
        assert_eq!(d.anthropic_base_url, var("ANTHROPIC_BASE_URL"));
        assert_eq!(d.anthropic_api_key, var("ANTHROPIC_API_KEY"));
        let p = Providers::new(d).anthropic(&spec(Provider::Anthropic)).unwrap();
        let want = var("ANTHROPIC_BASE_URL").unwrap_or_else(|| DEFAULT_ANTHROPIC_BASE_URL.to_owned());
        assert!(p.url().starts_with(want.trim_end_matches('/')), "{}", p.url());
    }
}
