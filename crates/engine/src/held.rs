//! Credentials a request holds in memory only: the MCP `headers`/`authorization` and
//! `server_url` query strings an OpenAI Responses caller sends. The stored agent version names
//! each by a reference (`${held:ID}`, ID a keyed hash that reveals nothing of the value and
//! differs per process), so no such value reaches the store, the log or an export; the value
//! lives while a request or a background run holds its [`HeldGuard`], and is gone after a
//! restart (a background response that needs it then fails, saying so). Tenant-scoped: a
//! reference resolves only for the tenant that holds it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use stead_core::ids::TenantId;

pub const HELD_REF: &str = "${held:";

type Table = HashMap<(TenantId, String), (String, usize)>;

/// The table of held values. Cloning shares it.
#[derive(Clone)]
pub struct HeldCredentials {
    table: Arc<Mutex<Table>>,
    /// Per-process key of the reference hash, so a reference cannot be tested against guesses.
    key: Arc<[u8; 32]>,
}

impl Default for HeldCredentials {
    fn default() -> Self {
        let mut key = [0u8; 32];
        if read_random(&mut key).is_err() {
            // No /dev/urandom: fall back to the randomness of two UUIDv7s and the time.
            let seed = format!("{}{}{:?}", uuid::Uuid::now_v7(), uuid::Uuid::now_v7(), std::time::SystemTime::now());
            key.copy_from_slice(&Sha256::digest(seed.as_bytes()));
        }
        Self { table: Arc::default(), key: Arc::new(key) }
    }
}

fn read_random(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

impl std::fmt::Debug for HeldCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldCredentials").field("held", &self.lock().len()).finish()
    }
}

impl HeldCredentials {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `value` for `tenant` until the returned guard (and every other guard of the same
    /// value) is dropped.
    pub fn hold(&self, tenant: &TenantId, value: &str) -> HeldGuard {
        let mut h = Sha256::new();
        h.update(*self.key);
        h.update(tenant.as_str().as_bytes());
        h.update([0]);
        h.update(value.as_bytes());
        let id = hex::encode(&h.finalize()[..16]);
        let mut table = self.lock();
        let entry = table.entry((tenant.clone(), id.clone())).or_insert_with(|| (value.to_owned(), 0));
        entry.1 += 1;
        HeldGuard { table: self.table.clone(), tenant: tenant.clone(), id }
    }

    /// The value behind reference `id`, for `tenant`.
    pub fn get(&self, tenant: &TenantId, id: &str) -> Result<String, String> {
        self.lock().get(&(tenant.clone(), id.to_owned())).map(|(v, _)| v.clone()).ok_or_else(|| {
            "a credential sent with the request is no longer held (they live in memory only, for the request's lifetime; send the request again)".to_owned()
        })
    }
}

/// Keeps one held value alive; dropping the last guard of a value forgets it.
pub struct HeldGuard {
    table: Arc<Mutex<Table>>,
    tenant: TenantId,
    id: String,
}

impl HeldGuard {
    /// What a stored spec says in the value's place.
    pub fn reference(&self) -> String {
        format!("{HELD_REF}{}}}", self.id)
    }
}

impl std::fmt::Debug for HeldGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HeldGuard({})", self.id)
    }
}

impl Drop for HeldGuard {
    fn drop(&mut self) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let key = (self.tenant.clone(), std::mem::take(&mut self.id));
        if let Some(entry) = table.get_mut(&key) {
            entry.1 -= 1;
            if entry.1 == 0 {
                table.remove(&key);
            }
        }
    }
}
