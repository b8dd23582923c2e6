//! Model routing: which provider serves a model name the client asks for. With no routes
//! configured, every name goes unchanged to the OpenAI-compatible server of `OPENAI_BASE_URL`
//! (or OpenAI itself); with routes, the first whose pattern matches wins and a name no route
//! accepts is refused with OpenAI's "model not found".

use serde::{Deserialize, Serialize};
use stead_core::agent::{ModelSpec, Provider};

use crate::error::OaiError;

/// One route: `pattern` is an exact name, `prefix*`, or `*`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRoute {
    #[serde(rename = "match")]
    pub pattern: String,
    pub provider: Provider,
    /// The provider's name for the model (default: the name the client asked for).
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub base_url: Option<String>,
    /// Environment variable holding the provider's key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Scripted model only: pause between streamed chunks.
    #[serde(default)]
    pub chunk_delay_ms: u64,
}

impl ModelRoute {
    /// `PATTERN=PROVIDER` or `PATTERN=PROVIDER:ARG`, where ARG is the base URL (openai,
    /// anthropic) or the chunk delay in ms (scripted).
    pub fn parse_flag(text: &str) -> Result<Self, String> {
        let (pattern, target) =
            text.split_once('=').ok_or_else(|| format!("model route {text:?}: use PATTERN=PROVIDER[:BASE_URL]"))?;
        let (provider, arg) = match target.split_once(':') {
            Some((p, a)) => (p, Some(a)),
            None => (target, None),
        };
        let provider = Provider::parse(provider.trim()).map_err(|e| format!("model route {text:?}: {e}"))?;
        let mut route = ModelRoute {
            pattern: pattern.trim().to_owned(),
            provider: provider.clone(),
            model: None,
            base_url: None,
            api_key_env: None,
            chunk_delay_ms: 0,
        };
        match (&provider, arg) {
            (_, None) => {}
            (Provider::Scripted, Some(ms)) => {
                route.chunk_delay_ms =
                    ms.parse().map_err(|_| format!("model route {text:?}: scripted takes a chunk delay in ms"))?
            }
            (_, Some(url)) => route.base_url = Some(url.to_owned()),
        }
        route.validate()?;
        Ok(route)
    }

    pub fn validate(&self) -> Result<(), String> {
        let p = &self.pattern;
        if p.is_empty() || p[..p.len() - 1].contains('*') {
            return Err(format!("model route pattern {p:?}: use a name, `prefix*` or `*`"));
        }
        Ok(())
    }

    fn matches(&self, model: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => model.starts_with(prefix),
            None => self.pattern == model,
        }
    }

    /// A route that names its own endpoint or key is an operator-declared provider: runs
    /// reference it by this name, so the stored agent version holds no URL or key variable
    /// (DESIGN §3.9) and tenants' specs cannot borrow the endpoint's key for another URL.
    pub fn declared_provider(&self) -> Option<stead_core::grants::NamedProvider> {
        if self.base_url.is_none() && self.api_key_env.is_none() {
            return None;
        }
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for part in
            [self.provider.as_str(), self.base_url.as_deref().unwrap_or(""), self.api_key_env.as_deref().unwrap_or("")]
        {
            h.update(part.as_bytes());
            h.update([0]);
        }
        Some(stead_core::grants::NamedProvider {
            name: format!("route-{}", hex::encode(&h.finalize()[..6])),
            kind: self.provider.clone(),
            base_url: self.base_url.clone(),
            api_key_env: self.api_key_env.clone(),
            tenants: Default::default(),
        })
    }

    /// Whether the pattern names exactly one model.
    pub fn is_exact(&self) -> bool {
        !self.pattern.ends_with('*')
    }
}

#[derive(Clone, Debug, Default)]
pub struct ModelRoutes {
    routes: Vec<ModelRoute>,
}

impl ModelRoutes {
    pub fn new(routes: Vec<ModelRoute>) -> Self {
        Self { routes }
    }

    pub fn routes(&self) -> &[ModelRoute] {
        &self.routes
    }

    /// The route for `model`, or the implicit catch-all when none is configured.
    pub fn route(&self, model: &str) -> Result<ModelRoute, OaiError> {
        if model.trim().is_empty() {
            return Err(OaiError::invalid(
                "model",
                "missing_required_parameter",
                "Missing required parameter: 'model'.",
            ));
        }
        if self.routes.is_empty() {
            return Ok(ModelRoute {
                pattern: "*".into(),
                provider: Provider::Openai,
                model: None,
                base_url: None,
                api_key_env: None,
                chunk_delay_ms: 0,
            });
        }
        self.routes.iter().find(|r| r.matches(model)).cloned().ok_or_else(|| {
            let known: Vec<&str> = self.routes.iter().map(|r| r.pattern.as_str()).collect();
            OaiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "model_not_found",
                format!(
                    "The model '{model}' does not exist or no route serves it on this server (routes: {}).",
                    known.join(", ")
                ),
            )
            .with_param("model")
        })
    }

    /// The model spec a run (or a passthrough call) uses for `model`.
    pub fn spec(&self, model: &str) -> Result<ModelSpec, OaiError> {
        let r = self.route(model)?;
        let provider = match r.declared_provider() {
            Some(p) => Provider::Named(p.name),
            None => r.provider.clone(),
        };
        Ok(ModelSpec {
            provider,
            name: r.model.clone().unwrap_or_else(|| model.to_owned()),
            base_url: None,
            api_key_env: None,
            temperature: None,
            max_tokens: None,
            stream: true,
            timeout_secs: 120,
            max_retries: 2,
            chunk_delay_ms: r.chunk_delay_ms,
            tool_choice: None,
            parallel_tool_calls: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_match_in_order() {
        let routes = ModelRoutes::new(vec![
            ModelRoute::parse_flag("claude-*=anthropic").unwrap(),
            ModelRoute::parse_flag("slow*=scripted:200").unwrap(),
            ModelRoute::parse_flag("local=openai:http://127.0.0.1:11434/v1").unwrap(),
        ]);
        assert_eq!(routes.spec("claude-sonnet").unwrap().provider, Provider::Anthropic);
        let slow = routes.spec("slow-echo").unwrap();
        assert_eq!((slow.provider, slow.chunk_delay_ms), (Provider::Scripted, 200));
        // A route with its own endpoint is an operator-declared provider, named in the spec.
        let local = routes.spec("local").unwrap();
        assert_eq!(local.base_url, None);
        let declared = routes.routes()[2].declared_provider().unwrap();
        assert_eq!(local.provider, Provider::Named(declared.name.clone()));
        assert_eq!(declared.base_url.as_deref(), Some("http://127.0.0.1:11434/v1"));
        let err = routes.spec("gpt-4o").unwrap_err();
        assert_eq!((err.status.as_u16(), err.code.as_deref()), (404, Some("model_not_found")));
        assert!(routes.spec("").is_err());
    }

    #[test]
    fn no_routes_send_every_name_to_openai_unchanged() {
        let spec = ModelRoutes::default().spec("any-model:7b").unwrap();
        assert_eq!((spec.provider, spec.name.as_str()), (Provider::Openai, "any-model:7b"));
    }

    #[test]
    fn bad_flags_are_refused() {
        for bad in ["nope", "x=Not A Provider", "a*b=openai", "s=scripted:fast"] {
            assert!(ModelRoute::parse_flag(bad).is_err(), "{bad}");
        }
    }
}
