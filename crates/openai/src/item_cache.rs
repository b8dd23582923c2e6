//! Rendered conversation items, kept per session so that a page of items costs O(page) (plus
//! the events appended since the last read) instead of rendering the whole log every time.
//!
//! The log stays the truth: an entry only ever holds the rendering of events `1..=last_seq`,
//! and each use first feeds it the events after `last_seq`. So an entry is never stale —
//! whichever process wrote those events — and losing one (eviction, restart) costs a render,
//! never a wrong answer. Bounded by the total number of items held (`--item-cache-items`);
//! the least recently used sessions go first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use stead_core::ids::{SessionId, TenantId};

use crate::OaiState;
use crate::error::OaiResult;
use crate::items::Renderer;

type Key = (TenantId, SessionId);

struct Entry {
    renderer: Arc<tokio::sync::Mutex<Renderer>>,
    used: u64,
    items: usize,
}

#[derive(Default)]
struct Lru {
    entries: HashMap<Key, Entry>,
    tick: u64,
    total: usize,
}

pub struct ItemCache {
    max_items: usize,
    lru: Mutex<Lru>,
}

impl ItemCache {
    /// A cache holding at most `max_items` rendered items in all (0 keeps nothing).
    pub fn new(max_items: usize) -> Self {
        Self { max_items, lru: Mutex::new(Lru::default()) }
    }

    /// Runs `f` on the session's items brought up to date with its log.
    pub(crate) async fn with_items<T>(
        &self,
        st: &OaiState,
        tenant: &TenantId,
        session: &SessionId,
        f: impl FnOnce(&Renderer) -> T,
    ) -> OaiResult<T> {
        let key = (tenant.clone(), *session);
        let renderer = {
            let mut lru = self.lru.lock().expect("item cache lock");
            lru.tick += 1;
            let tick = lru.tick;
            let e = lru.entries.entry(key.clone()).or_insert_with(|| Entry {
                renderer: Arc::new(tokio::sync::Mutex::new(Renderer::new(*session))),
                used: tick,
                items: 0,
            });
            e.used = tick;
            e.renderer.clone()
        };
        // One reader brings a session up to date at a time; the others then find it so.
        let mut r = renderer.lock().await;
        let events = crate::events_after(st, tenant, session, r.last_seq()).await?;
        r.feed(&events);
        let out = f(&r);
        let items = r.items().len();
        drop(r);
        self.account(&key, &renderer, items);
        Ok(out)
    }

    /// Records an entry's size and evicts the least recently used entries over the bound.
    fn account(&self, key: &Key, renderer: &Arc<tokio::sync::Mutex<Renderer>>, items: usize) {
        let mut lru = self.lru.lock().expect("item cache lock");
        let lru = &mut *lru;
        if let Some(e) = lru.entries.get_mut(key).filter(|e| Arc::ptr_eq(&e.renderer, renderer)) {
            lru.total = lru.total - e.items + items;
            e.items = items;
        }
        while lru.total > self.max_items {
            let Some(oldest) = lru.entries.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| k.clone()) else { break };
            if let Some(e) = lru.entries.remove(&oldest) {
                lru.total -= e.items;
            }
        }
    }

    /// Sessions and items held now.
    pub fn held(&self) -> (usize, usize) {
        let lru = self.lru.lock().expect("item cache lock");
        (lru.entries.len(), lru.total)
    }
}
