//! The credential vault: secrets stored encrypted, referenced from agent specs by name, and
//! revealed only at the moment a tool or MCP connection needs them.
//!
//! Envelope encryption: each tenant has a random 256-bit data key, stored wrapped (sealed) by
//! the operator's key-encryption key (KEK, from a file or an environment variable — never in
//! the database); each secret is sealed with its tenant's data key. Both use
//! XChaCha20-Poly1305 with a random 192-bit nonce, and the associated data binds what a sealed
//! value is to where it is stored — tenant, scope, name, version and key version for a
//! secret; tenant and key version for a data key — so a row copied or moved to another
//! tenant, scope, name or version does not open: decryption fails closed and names the secret.
//!
//! **Invariant:** no secret value leaves this crate except from [`Vault::reveal`]; the store
//! only ever holds sealed bytes; errors name secrets, never their values.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use stead_core::ids::TenantId;
use stead_core::time::Timestamp;
use stead_store::{SealedSecret, Store, WrappedKey};

/// Largest secret value, in bytes.
pub const MAX_SECRET_BYTES: usize = 16 * 1024;
/// Longest secret name.
pub const MAX_NAME_LEN: usize = 128;
/// Secrets per tenant at most.
pub const MAX_SECRETS_PER_TENANT: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid secret name {0:?}: use 1 to 128 characters of A-Z a-z 0-9 _ . -")]
    InvalidName(String),
    #[error("{0}")]
    Invalid(String),
    #[error("secret {0} is {1} bytes; the limit is {MAX_SECRET_BYTES}")]
    TooLarge(String, usize),
    #[error("the tenant already holds {MAX_SECRETS_PER_TENANT} secrets")]
    TooMany,
    /// A sealed row did not open: it was changed, moved, or sealed under another key.
    #[error("{0} does not decrypt: it was altered, moved from elsewhere, or sealed with another key")]
    Tampered(String),
    #[error("the key-encryption key is invalid: {0}")]
    BadKey(String),
    #[error(transparent)]
    Store(#[from] stead_store::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whose a secret is: the tenant's (`${secret:NAME}`) or one user's (`${user_secret:NAME}`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Tenant,
    /// A principal id.
    User(String),
}

impl Scope {
    pub fn as_stored(&self) -> String {
        match self {
            Scope::Tenant => "tenant".into(),
            Scope::User(p) => format!("user:{p}"),
        }
    }

    fn from_stored(s: &str) -> Scope {
        match s.strip_prefix("user:") {
            Some(p) => Scope::User(p.to_owned()),
            None => Scope::Tenant,
        }
    }
}

/// What may be shown of a secret: never its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretMeta {
    pub name: String,
    pub scope: Scope,
    pub version: u32,
    pub created_at: Timestamp,
}

/// The operator's key-encryption key.
pub struct Kek {
    cipher: XChaCha20Poly1305,
    id: String,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({})", self.id)
    }
}

impl Kek {
    /// A key given as text: 32 bytes as 64 hex digits or as base64 (standard or URL-safe).
    pub fn from_text(text: &str) -> Result<Self> {
        let t = text.trim();
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t).map_err(|e| Error::BadKey(e.to_string()))?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t.trim_end_matches('=')))
                .map_err(|_| Error::BadKey("give 32 bytes as 64 hex digits or base64".into()))?
        };
        let key: [u8; 32] =
            bytes.try_into().map_err(|b: Vec<u8>| Error::BadKey(format!("it is {} bytes, not 32", b.len())))?;
        Ok(Self::from_bytes(&key))
    }

    pub fn from_bytes(key: &[u8; 32]) -> Self {
        let id = hex::encode(&Sha256::digest(key)[..4]);
        Self { cipher: XChaCha20Poly1305::new(key.into()), id }
    }

    /// A new random key as 64 hex digits (for a key file).
    pub fn generate_text() -> String {
        let mut key = [0u8; 32];
        SystemRandom::new().fill(&mut key).expect("the system's random source");
        hex::encode(key)
    }

    /// A short fingerprint of the key (not secret) to tell keys apart in logs.
    pub fn id(&self) -> &str {
        &self.id
    }
}

fn nonce() -> [u8; 24] {
    let mut n = [0u8; 24];
    SystemRandom::new().fill(&mut n).expect("the system's random source");
    n
}

fn seal(cipher: &XChaCha20Poly1305, aad: &[u8], plain: &[u8]) -> ([u8; 24], Vec<u8>) {
    let n = nonce();
    let sealed = cipher.encrypt(XNonce::from_slice(&n), Payload { msg: plain, aad }).expect("sealing in memory");
    (n, sealed)
}

fn open(cipher: &XChaCha20Poly1305, aad: &[u8], nonce: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if nonce.len() != 24 {
        return None;
    }
    cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad }).ok()
}

fn key_aad(tenant: &TenantId, version: u32) -> Vec<u8> {
    format!("stead-tenant-key\0{}\0{version}", tenant.as_str()).into_bytes()
}

fn secret_aad(tenant: &TenantId, scope: &str, name: &str, version: u32, key_version: u32) -> Vec<u8> {
    format!("stead-secret\0{}\0{scope}\0{name}\0{version}\0{key_version}", tenant.as_str()).into_bytes()
}

/// Checks a secret name: 1..=128 of `[A-Za-z0-9_.-]`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok { Ok(()) } else { Err(Error::InvalidName(name.chars().take(MAX_NAME_LEN + 1).collect())) }
}

/// A secret's value, revealed; wiped from memory when dropped.
pub struct Revealed(Vec<u8>);

impl Revealed {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl Drop for Revealed {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // SAFETY: a plain write through a valid `&mut u8`; volatile so it is not elided.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl std::fmt::Debug for Revealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Revealed([redacted])")
    }
}

pub struct Vault {
    store: Arc<dyn Store>,
    kek: Kek,
    /// Unwrapped data keys by tenant (version, cipher).
    keys: Mutex<HashMap<TenantId, (u32, Arc<XChaCha20Poly1305>)>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Vault(key {})", self.kek.id)
    }
}

impl Vault {
    pub fn new(store: Arc<dyn Store>, kek: Kek) -> Self {
        Self { store, kek, keys: Mutex::new(HashMap::new()) }
    }

    pub fn kek_id(&self) -> &str {
        self.kek.id()
    }

    /// The tenant's data key, created (and stored wrapped) on first use.
    async fn tenant_key(&self, tenant: &TenantId) -> Result<(u32, Arc<XChaCha20Poly1305>)> {
        if let Some(k) = self.keys.lock().expect("vault key cache").get(tenant) {
            return Ok(k.clone());
        }
        let wrapped = match self.store.get_tenant_key(tenant).await? {
            Some(w) => w,
            None => {
                let mut dek = [0u8; 32];
                SystemRandom::new().fill(&mut dek).expect("the system's random source");
                let (n, sealed) = seal(&self.kek.cipher, &key_aad(tenant, 1), &dek);
                dek.fill(0);
                let new = WrappedKey {
                    tenant_id: tenant.clone(),
                    version: 1,
                    nonce: n.to_vec(),
                    wrapped: sealed,
                    created_at: Timestamp::now(),
                };
                self.store.put_tenant_key(new).await?
            }
        };
        let mut dek = open(&self.kek.cipher, &key_aad(tenant, wrapped.version), &wrapped.nonce, &wrapped.wrapped)
            .ok_or_else(|| {
                Error::Tampered(format!(
                    "the data key of tenant {} (is the vault key {} the one it was made with?)",
                    tenant.as_str(),
                    self.kek.id
                ))
            })?;
        let cipher = Arc::new(
            XChaCha20Poly1305::new_from_slice(&dek)
                .map_err(|_| Error::Tampered(format!("the data key of tenant {}", tenant.as_str())))?,
        );
        dek.fill(0);
        let entry = (wrapped.version, cipher);
        self.keys.lock().expect("vault key cache").insert(tenant.clone(), entry.clone());
        Ok(entry)
    }

    /// Stores `value` as the secret's next version.
    pub async fn set(&self, tenant: &TenantId, scope: &Scope, name: &str, value: &str) -> Result<SecretMeta> {
        check_name(name)?;
        if value.is_empty() {
            return Err(Error::Invalid(format!("secret {name}: the value is empty")));
        }
        if value.len() > MAX_SECRET_BYTES {
            return Err(Error::TooLarge(name.to_owned(), value.len()));
        }
        let stored_scope = scope.as_stored();
        let (key_version, cipher) = self.tenant_key(tenant).await?;
        for _ in 0..5 {
            let current = self.store.get_secret(tenant, &stored_scope, name).await?;
            if current.is_none() && self.store.list_secrets(tenant).await?.len() >= MAX_SECRETS_PER_TENANT {
                return Err(Error::TooMany);
            }
            let version = current.map_or(1, |c| c.version.saturating_add(1));
            let aad = secret_aad(tenant, &stored_scope, name, version, key_version);
            let (n, sealed) = seal(&cipher, &aad, value.as_bytes());
            let row = SealedSecret {
                tenant_id: tenant.clone(),
                scope: stored_scope.clone(),
                name: name.to_owned(),
                version,
                key_version,
                nonce: n.to_vec(),
                ciphertext: sealed,
                created_at: Timestamp::now(),
            };
            let created_at = row.created_at;
            match self.store.put_secret(row).await {
                Ok(()) => return Ok(SecretMeta { name: name.to_owned(), scope: scope.clone(), version, created_at }),
                Err(stead_store::Error::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Store(stead_store::Error::Busy(format!("secret {name} is being written concurrently"))))
    }

    /// The secret's value, or `None` if there is no such secret.
    pub async fn reveal(&self, tenant: &TenantId, scope: &Scope, name: &str) -> Result<Option<Revealed>> {
        check_name(name)?;
        let stored_scope = scope.as_stored();
        let Some(row) = self.store.get_secret(tenant, &stored_scope, name).await? else { return Ok(None) };
        let (key_version, cipher) = self.tenant_key(tenant).await?;
        let label = || format!("secret {name} (version {})", row.version);
        if row.key_version != key_version {
            return Err(Error::Tampered(label()));
        }
        let aad = secret_aad(tenant, &row.scope, &row.name, row.version, row.key_version);
        let plain = open(&cipher, &aad, &row.nonce, &row.ciphertext).ok_or_else(|| Error::Tampered(label()))?;
        if std::str::from_utf8(&plain).is_err() {
            return Err(Error::Tampered(label()));
        }
        Ok(Some(Revealed(plain)))
    }

    /// The tenant's secrets: names, scopes, versions; never values.
    pub async fn list(&self, tenant: &TenantId) -> Result<Vec<SecretMeta>> {
        Ok(self
            .store
            .list_secrets(tenant)
            .await?
            .into_iter()
            .map(|s| SecretMeta {
                scope: Scope::from_stored(&s.scope),
                name: s.name,
                version: s.version,
                created_at: s.created_at,
            })
            .collect())
    }

    pub async fn delete(&self, tenant: &TenantId, scope: &Scope, name: &str) -> Result<bool> {
        check_name(name)?;
        Ok(self.store.delete_secret(tenant, &scope.as_stored(), name).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stead_store_sqlite::{SqliteOptions, SqliteStore};

    fn tenant(t: &str) -> TenantId {
        TenantId::new(t).unwrap()
    }

    fn store(dir: &std::path::Path) -> Arc<dyn Store> {
        SqliteStore::open(SqliteOptions::new(dir)).unwrap()
    }

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[tokio::test]
    async fn secrets_round_trip_and_the_store_never_holds_them() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::new(store(dir.path()), Kek::from_text(KEY).unwrap());
        let acme = tenant("acme");
        let meta = vault.set(&acme, &Scope::Tenant, "TICKETS_TOKEN", "canary-6f1e2d").await.unwrap();
        assert_eq!(meta.version, 1);
        assert_eq!(
            vault.reveal(&acme, &Scope::Tenant, "TICKETS_TOKEN").await.unwrap().unwrap().as_str(),
            "canary-6f1e2d"
        );
        let meta = vault.set(&acme, &Scope::Tenant, "TICKETS_TOKEN", "canary-second").await.unwrap();
        assert_eq!(meta.version, 2);
        assert_eq!(
            vault.reveal(&acme, &Scope::Tenant, "TICKETS_TOKEN").await.unwrap().unwrap().as_str(),
            "canary-second"
        );
        vault.set(&acme, &Scope::User("alice".into()), "TICKETS_TOKEN", "alice-own").await.unwrap();
        assert_eq!(
            vault.reveal(&acme, &Scope::User("alice".into()), "TICKETS_TOKEN").await.unwrap().unwrap().as_str(),
            "alice-own"
        );
        assert!(vault.reveal(&acme, &Scope::User("bob".into()), "TICKETS_TOKEN").await.unwrap().is_none());
        // Another tenant sees none of it.
        assert!(vault.reveal(&tenant("globex"), &Scope::Tenant, "TICKETS_TOKEN").await.unwrap().is_none());
        assert!(vault.list(&tenant("globex")).await.unwrap().is_empty());
        let names: Vec<_> =
            vault.list(&acme).await.unwrap().into_iter().map(|m| (m.scope, m.name, m.version)).collect();
        assert_eq!(
            names,
            [(Scope::Tenant, "TICKETS_TOKEN".into(), 2), (Scope::User("alice".into()), "TICKETS_TOKEN".into(), 1)]
        );
        drop(vault);
        let mut bytes = Vec::new();
        for e in std::fs::read_dir(dir.path()).unwrap() {
            bytes.extend(std::fs::read(e.unwrap().path()).unwrap_or_default());
        }
        let text = String::from_utf8_lossy(&bytes);
        for canary in ["canary-6f1e2d", "canary-second", "alice-own"] {
            assert!(!text.contains(canary), "{canary} is in the data directory");
        }
    }

    #[tokio::test]
    async fn moved_or_altered_rows_do_not_open_and_name_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let vault = Vault::new(s.clone(), Kek::from_text(KEY).unwrap());
        let acme = tenant("acme");
        vault.set(&acme, &Scope::Tenant, "A", "value-a").await.unwrap();
        vault.set(&acme, &Scope::Tenant, "B", "value-b").await.unwrap();
        // A's sealed bytes copied under B's name (its next version): refused, naming B.
        let a = s.get_secret(&acme, "tenant", "A").await.unwrap().unwrap();
        let b = s.get_secret(&acme, "tenant", "B").await.unwrap().unwrap();
        s.put_secret(SealedSecret { name: "B".into(), version: b.version + 1, ..a.clone() }).await.unwrap();
        let err = vault.reveal(&acme, &Scope::Tenant, "B").await.unwrap_err();
        assert!(matches!(&err, Error::Tampered(m) if m.contains("secret B")), "{err}");
        assert!(!err.to_string().contains("value-a"));
        // A flipped bit.
        let mut flipped = a.clone();
        flipped.version += 1;
        s.put_secret(SealedSecret {
            ciphertext: {
                let mut c = a.ciphertext.clone();
                c[0] ^= 1;
                c
            },
            ..flipped
        })
        .await
        .unwrap();
        assert!(matches!(vault.reveal(&acme, &Scope::Tenant, "A").await, Err(Error::Tampered(_))));
        // A row of acme's under another tenant.
        let globex = tenant("globex");
        vault.set(&globex, &Scope::Tenant, "X", "globex-x").await.unwrap();
        s.put_secret(SealedSecret { tenant_id: globex.clone(), name: "X".into(), version: 2, ..b.clone() })
            .await
            .unwrap();
        assert!(matches!(vault.reveal(&globex, &Scope::Tenant, "X").await, Err(Error::Tampered(_))));
        // Another key-encryption key opens nothing, and says so.
        let other = Vault::new(s.clone(), Kek::from_text(&Kek::generate_text()).unwrap());
        let err = other.reveal(&acme, &Scope::Tenant, "A").await.unwrap_err();
        assert!(err.to_string().contains("data key of tenant acme"), "{err}");
    }

    #[tokio::test]
    async fn bad_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::new(store(dir.path()), Kek::from_text(KEY).unwrap());
        let acme = tenant("acme");
        for bad in ["", "has space", "a/b", "${x}", &"n".repeat(MAX_NAME_LEN + 1)] {
            assert!(matches!(vault.set(&acme, &Scope::Tenant, bad, "v").await, Err(Error::InvalidName(_))), "{bad:?}");
        }
        assert!(matches!(
            vault.set(&acme, &Scope::Tenant, "big", &"x".repeat(MAX_SECRET_BYTES + 1)).await,
            Err(Error::TooLarge(..))
        ));
        assert!(matches!(vault.set(&acme, &Scope::Tenant, "empty", "").await, Err(Error::Invalid(_))));
        assert!(vault.list(&acme).await.unwrap().is_empty(), "nothing stored");
        for bad in ["short", "zz", &"0".repeat(63)] {
            assert!(Kek::from_text(bad).is_err(), "{bad}");
        }
        assert_eq!(Kek::from_text(&Kek::generate_text()).unwrap().id().len(), 8);
        assert!(!vault.delete(&acme, &Scope::Tenant, "never").await.unwrap());
    }
}
