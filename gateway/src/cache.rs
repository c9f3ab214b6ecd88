//! The read-through cache of runnable tools: definition, compiled input-schema validator and
//! the prepared module, keyed by (tenant, name). Change events drop entries at once; a short
//! time-to-live bounds staleness if an event is ever missed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::code::PreparedCode;
use shared::model::{TenantId, ToolDefinition, ToolName};

/// A tool ready to run.
pub struct CachedTool {
    pub definition: ToolDefinition,
    pub validator: jsonschema::Validator,
    pub prepared: Arc<PreparedCode>,
}

impl std::fmt::Debug for CachedTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedTool")
            .field("tool", &self.definition.name)
            .field("version", &self.definition.version)
            .finish()
    }
}

type Key = (TenantId, ToolName);

/// Bounded map of runnable tools.
#[derive(Debug)]
pub struct ToolCache {
    entries: Mutex<HashMap<Key, (Instant, Arc<CachedTool>)>>,
    ttl: Duration,
    capacity: usize,
}

impl ToolCache {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            ttl,
            capacity: capacity.max(1),
        }
    }

    pub fn get(&self, tenant: &TenantId, name: &ToolName) -> Option<Arc<CachedTool>> {
        let mut entries = self.lock();
        let key = (tenant.clone(), name.clone());
        match entries.get(&key) {
            Some((at, tool)) if at.elapsed() < self.ttl => Some(tool.clone()),
            Some(_) => {
                entries.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, tool: Arc<CachedTool>) {
        let mut entries = self.lock();
        if entries.len() >= self.capacity {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= self.capacity
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(key, _)| key.clone())
            {
                entries.remove(&oldest);
            }
        }
        let key = (tool.definition.tenant.clone(), tool.definition.name.clone());
        entries.insert(key, (Instant::now(), tool));
    }

    pub fn remove(&self, tenant: &TenantId, name: &ToolName) {
        self.lock().remove(&(tenant.clone(), name.clone()));
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, (Instant, Arc<CachedTool>)>> {
        // A panic while holding the lock leaves only a map of cache entries; keep using it.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(tenant: &str, name: &str, version: i64) -> Arc<CachedTool> {
        let code = "return 1;";
        Arc::new(CachedTool {
            definition: ToolDefinition {
                tenant: TenantId::new(tenant),
                name: ToolName::parse(name).unwrap(),
                version,
                description: "d".into(),
                code: code.into(),
                code_hash: shared::model::code_hash(code),
                input_schema: json!({"type": "object"}),
                allowed_hosts: vec![],
                timeout_ms: 1000,
                secrets: vec![],
                isolation: Default::default(),
                created_at: 0,
                updated_at: 0,
            },
            validator: jsonschema::validator_for(&json!({"type": "object"})).unwrap(),
            prepared: Arc::new(shared::code::prepare(code).unwrap()),
        })
    }

    #[test]
    fn entries_are_per_tenant_and_removable() {
        let cache = ToolCache::new(Duration::from_secs(60), 10);
        cache.insert(tool("a", "x", 1));
        cache.insert(tool("b", "x", 7));
        let name = ToolName::parse("x").unwrap();
        assert_eq!(
            cache
                .get(&TenantId::new("a"), &name)
                .unwrap()
                .definition
                .version,
            1
        );
        assert_eq!(
            cache
                .get(&TenantId::new("b"), &name)
                .unwrap()
                .definition
                .version,
            7
        );
        cache.remove(&TenantId::new("a"), &name);
        assert!(cache.get(&TenantId::new("a"), &name).is_none());
        assert!(cache.get(&TenantId::new("b"), &name).is_some());
    }

    #[test]
    fn expired_entries_are_misses_and_capacity_is_bounded() {
        let cache = ToolCache::new(Duration::ZERO, 2);
        cache.insert(tool("a", "x", 1));
        assert!(
            cache
                .get(&TenantId::new("a"), &ToolName::parse("x").unwrap())
                .is_none()
        );
        let cache = ToolCache::new(Duration::from_secs(60), 2);
        for name in ["p", "q", "r"] {
            cache.insert(tool("a", name, 1));
        }
        assert_eq!(cache.lock().len(), 2);
    }
}
