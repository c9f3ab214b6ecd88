//! Who is calling: every `/mcp` request is tied to a tenant before MCP sees it. With
//! `--auth api-key` a request needs `Authorization: Bearer <key>`; a missing or wrong key
//! gets 401 with a `WWW-Authenticate` challenge pointing at the protected-resource metadata
//! (RFC 9728), as the MCP authorization spec describes. Keys are stored as SHA-256 hashes
//! and looked up by their id; answers are cached briefly, so a revoked key stops working
//! within [`KEY_CACHE_TTL`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngExt as _;
use serde_json::json;
use sha2::{Digest, Sha256};

use shared::registry::TenantStore;

use crate::app::App;
use crate::caller::Caller;
use crate::config::AuthMode;

/// How long a key lookup is trusted.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(10);
const KEY_PREFIX: &str = "tsk_";
const CACHE_CAPACITY: usize = 10_000;

/// A freshly made API key: the secret (shown once) and its id.
#[derive(Debug)]
pub struct NewKey {
    pub id: String,
    pub secret: String,
    pub hash: String,
}

/// Makes a new random key: `tsk_<id>_<43 characters>`.
pub fn new_key() -> NewKey {
    let id_bytes: [u8; 6] = rand::rng().random();
    let secret_bytes: [u8; 32] = rand::rng().random();
    let id = hex::encode(id_bytes);
    let secret = format!("{KEY_PREFIX}{id}_{}", URL_SAFE_NO_PAD.encode(secret_bytes));
    let hash = hash_key(&secret);
    NewKey { id, secret, hash }
}

fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The key id inside a key, if it has the right shape.
fn key_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 12 && id.chars().all(|c| c.is_ascii_hexdigit()) && secret.len() >= 32)
        .then_some(id)
}

/// Compares two equal-length strings without an early exit.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Resolves callers.
pub struct Authenticator {
    mode: AuthMode,
    store: Arc<dyn TenantStore>,
    cache: Mutex<HashMap<String, (Instant, Option<Caller>)>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .finish()
    }
}

/// Why a request was not let in.
enum Refusal {
    Missing,
    Invalid,
    Unavailable,
}

impl Authenticator {
    pub fn new(mode: AuthMode, store: Arc<dyn TenantStore>) -> Self {
        Self {
            mode,
            store,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    async fn caller(&self, headers: &HeaderMap) -> Result<Caller, Refusal> {
        if self.mode == AuthMode::None {
            return Ok(Caller::local());
        }
        let key = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(Refusal::Missing)?;
        let hash = hash_key(key);
        if let Some((at, cached)) = self.lock().get(&hash).cloned()
            && at.elapsed() < KEY_CACHE_TTL
        {
            return cached.ok_or(Refusal::Invalid);
        }
        let caller = self.lookup(key, &hash).await?;
        let mut cache = self.lock();
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, (at, _)| at.elapsed() < KEY_CACHE_TTL);
        }
        cache.insert(hash, (Instant::now(), caller.clone()));
        caller.ok_or(Refusal::Invalid)
    }

    async fn lookup(&self, key: &str, hash: &str) -> Result<Option<Caller>, Refusal> {
        let Some(id) = key_id(key) else {
            return Ok(None);
        };
        match self.store.find_key(id).await {
            Ok(Some(record)) if !record.revoked && constant_time_eq(&record.key_hash, hash) => {
                Ok(Some(Caller::with_key(record.tenant, id)))
            }
            Ok(_) => Ok(None),
            Err(error) => {
                tracing::error!(error = %error, "cannot check an API key");
                Err(Refusal::Unavailable)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Option<Caller>)>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Attaches the caller to the request, or answers 401.
pub async fn authenticate(
    State(app): State<Arc<App>>,
    mut request: Request,
    next: Next,
) -> Response {
    match app.auth.caller(request.headers()).await {
        Ok(caller) => {
            let tenant = caller.tenant.clone();
            request.extensions_mut().insert(caller);
            super::sessions::scoped(tenant, next.run(request)).await
        }
        Err(refusal) => refuse(&refusal, request.headers()),
    }
}

fn refuse(refusal: &Refusal, headers: &HeaderMap) -> Response {
    let metadata = format!("{}/.well-known/oauth-protected-resource", base_url(headers));
    let (status, challenge, message) = match refusal {
        Refusal::Missing => (
            StatusCode::UNAUTHORIZED,
            format!("Bearer realm=\"toolsmith\", resource_metadata=\"{metadata}\""),
            "an API key is required: send Authorization: Bearer <key>",
        ),
        Refusal::Invalid => (
            StatusCode::UNAUTHORIZED,
            format!(
                "Bearer realm=\"toolsmith\", error=\"invalid_token\", \
                 error_description=\"the API key is unknown or revoked\", resource_metadata=\"{metadata}\""
            ),
            "the API key is unknown or revoked",
        ),
        Refusal::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Bearer realm=\"toolsmith\"".to_owned(),
            "keys cannot be checked right now; try again shortly",
        ),
    };
    let mut response = (status, Json(json!({ "error": message }))).into_response();
    if let Ok(value) = challenge.parse() {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// `GET /.well-known/oauth-protected-resource`: what a client needs to know to call `/mcp`.
/// Keys are issued by an operator (`gateway key create`), so no authorization server is
/// named.
pub async fn resource_metadata(headers: HeaderMap) -> impl IntoResponse {
    let base = base_url(&headers);
    Json(json!({
        "resource": format!("{base}/mcp"),
        "resource_name": "Toolsmith",
        "bearer_methods_supported": ["header"],
        "resource_documentation": "https://github.com/toolsmith/toolsmith#multi-tenant-endpoint",
    }))
}

fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("http");
    format!("{scheme}://{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_their_id_and_hash_consistently() {
        let key = new_key();
        assert!(key.secret.starts_with("tsk_"));
        assert_eq!(key_id(&key.secret), Some(key.id.as_str()));
        assert_eq!(hash_key(&key.secret), key.hash);
        assert_ne!(new_key().secret, key.secret);
        assert_eq!(
            key_id("tsk_nothex_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
            None
        );
        assert_eq!(key_id("Bearer"), None);
    }

    #[test]
    fn comparison_is_exact() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
    }
}
