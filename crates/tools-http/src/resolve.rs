//! DNS resolution through the guard: the resolver the HTTP client connects with.
//!
//! Owns the one place where a host name becomes addresses. The addresses that come out are
//! the only ones the connector will try, so dropping refused ones here means a connection can
//! only be made to an address that passed the guard — there is no second lookup an attacker's
//! DNS server could answer differently (DNS rebinding).

use std::net::SocketAddr;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::guard::Guard;

/// Wraps a resolver; keeps only the addresses the guard allows, errors when none is left.
pub(crate) struct GuardedResolver {
    guard: Arc<Guard>,
    inner: Arc<dyn Resolve>,
}

impl GuardedResolver {
    pub(crate) fn new(guard: Arc<Guard>, inner: Arc<dyn Resolve>) -> Self {
        Self { guard, inner }
    }

    /// Over the system resolver (`getaddrinfo`, through tokio).
    pub(crate) fn system(guard: Arc<Guard>) -> Self {
        Self::new(guard, Arc::new(SystemResolver))
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let guard = Arc::clone(&self.guard);
        let resolving = self.inner.resolve(name);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = resolving.await?.collect();
            let kept = guard.filter(&host, addrs)?;
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

impl Guard {
    /// A resolver for `reqwest::ClientBuilder::dns_resolver`: the system resolver, keeping only
    /// the addresses this guard allows. With it (and `no_proxy`), a client connects by name only
    /// to checked addresses; IP literals skip resolvers, so check them with [`Guard::check_url`].
    pub fn resolver(self: &Arc<Self>) -> Arc<dyn Resolve> {
        Arc::new(GuardedResolver::system(Arc::clone(self)))
    }
}

/// The operating system's resolver. Port 0: the connector puts in the URL's port.
struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::IpAddr;
    use std::str::FromStr;

    use super::*;
    use crate::guard::{GuardConfig, Refused};

    /// Answers from a table, like a DNS server under an attacker's control would.
    struct FakeResolver(HashMap<&'static str, Vec<&'static str>>);

    impl Resolve for FakeResolver {
        fn resolve(&self, name: Name) -> Resolving {
            let addrs: Vec<SocketAddr> =
                self.0.get(name.as_str()).into_iter().flatten().map(|a| a.parse().unwrap()).collect();
            Box::pin(async move { Ok(Box::new(addrs.into_iter()) as Addrs) })
        }
    }

    fn resolver(allow: &[&str]) -> GuardedResolver {
        let guard =
            Guard::new(GuardConfig { allow: allow.iter().map(|s| (*s).to_owned()).collect(), allow_all: false })
                .unwrap();
        let table = HashMap::from([
            (
                "mixed.example",
                vec!["127.0.0.1:0", "93.184.216.34:0", "[::1]:0", "169.254.169.254:0", "[2606:4700::1]:0"],
            ),
            ("private.example", vec!["10.0.0.7:0", "[::ffff:192.168.1.1]:0", "[fd00:ec2::254]:0", "169.254.169.254:0"]),
            ("empty.example", vec![]),
        ]);
        GuardedResolver::new(Arc::new(guard), Arc::new(FakeResolver(table)))
    }

    async fn resolve(r: &GuardedResolver, host: &str) -> Result<Vec<IpAddr>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(r.resolve(Name::from_str(host).unwrap()).await?.map(|a| a.ip()).collect())
    }

    #[tokio::test]
    async fn only_public_addresses_survive() {
        let got = resolve(&resolver(&[]), "mixed.example").await.unwrap();
        assert_eq!(got, vec!["93.184.216.34".parse::<IpAddr>().unwrap(), "2606:4700::1".parse().unwrap()]);
    }

    #[tokio::test]
    async fn all_private_is_an_error_naming_every_address() {
        let err = resolve(&resolver(&[]), "private.example").await.unwrap_err();
        let refused = err.downcast_ref::<Refused>().expect("a Refused error");
        assert_eq!(refused.denied.len(), 4);
        let text = err.to_string();
        assert!(text.contains("10.0.0.7 is private"), "{text}");
        assert!(text.contains("::ffff:192.168.1.1 is an IPv4-mapped form of 192.168.1.1"), "{text}");
        assert!(text.contains("fd00:ec2::254 is unique local (cloud metadata)"), "{text}");
        assert!(text.contains("169.254.169.254 is link-local (cloud metadata)"), "{text}");
    }

    #[tokio::test]
    async fn no_address_at_all_is_an_error() {
        let err = resolve(&resolver(&[]), "empty.example").await.unwrap_err();
        assert_eq!(err.to_string(), "empty.example resolves to no address");
    }

    #[tokio::test]
    async fn allow_entries_let_addresses_through() {
        let got = resolve(&resolver(&["127.0.0.0/8"]), "mixed.example").await.unwrap();
        assert!(got.contains(&"127.0.0.1".parse::<IpAddr>().unwrap()));
        assert!(!got.contains(&"::1".parse::<IpAddr>().unwrap()));
        assert_eq!(resolve(&resolver(&["private.example"]), "private.example").await.unwrap().len(), 4);
    }
}
