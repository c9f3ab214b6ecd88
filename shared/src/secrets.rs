//! Tenant secrets: sealed with AES-256-GCM under a key that lives in configuration, never in
//! the database; bound to their tenant and name as associated data; redacted from anything
//! a run sends back.

use std::collections::BTreeMap;
use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngExt as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::ValidationError;

/// Shortest secret value accepted: shorter ones cannot be redacted without mangling output.
pub const MIN_SECRET_BYTES: usize = 6;
/// Longest secret value accepted.
pub const MAX_SECRET_BYTES: usize = 16 * 1024;

/// What replaces a secret's value in results, console output and error messages.
pub fn marker(name: &str) -> String {
    format!("[redacted secret {name}]")
}

/// Why a secret could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "the secrets key must be 32 bytes, base64-encoded (generate one with `gateway secret new-key`)"
    )]
    BadKey,
    #[error(
        "secret {0:?} cannot be decrypted with this secrets key (was it set with another key?)"
    )]
    Undecryptable(String),
}

/// The key secrets are sealed with.
pub struct SecretsKey(Aes256Gcm);

impl fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

/// A sealed secret as stored: base64 nonce and ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub nonce: String,
    pub ciphertext: String,
}

impl SecretsKey {
    /// A key from its base64 form.
    pub fn from_base64(text: &str) -> Result<Self, SecretsError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| SecretsError::BadKey)?;
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| SecretsError::BadKey)?;
        Ok(Self(cipher))
    }

    /// A fresh random key, base64-encoded.
    pub fn generate() -> String {
        let bytes: [u8; 32] = rand::rng().random();
        STANDARD.encode(bytes)
    }

    pub fn seal(&self, tenant: &str, name: &str, value: &str) -> Sealed {
        let nonce_bytes: [u8; 12] = rand::rng().random();
        let nonce = Nonce::from(nonce_bytes);
        let aad = associated_data(tenant, name);
        let ciphertext = self
            .0
            .encrypt(
                &nonce,
                Payload {
                    msg: value.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of a bounded message does not fail");
        Sealed {
            nonce: STANDARD.encode(nonce_bytes),
            ciphertext: STANDARD.encode(ciphertext),
        }
    }

    pub fn open(&self, tenant: &str, name: &str, sealed: &Sealed) -> Result<String, SecretsError> {
        let undecryptable = || SecretsError::Undecryptable(name.to_owned());
        let nonce: [u8; 12] = STANDARD
            .decode(&sealed.nonce)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(undecryptable)?;
        let ciphertext = STANDARD
            .decode(&sealed.ciphertext)
            .map_err(|_| undecryptable())?;
        let aad = associated_data(tenant, name);
        let plain = self
            .0
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| undecryptable())?;
        String::from_utf8(plain).map_err(|_| undecryptable())
    }
}

fn associated_data(tenant: &str, name: &str) -> String {
    format!("toolsmith-secret\u{0}{tenant}\u{0}{name}")
}

/// Checks a secret's name: `^[A-Za-z_][A-Za-z0-9_]{0,63}$`, as it appears in
/// `context.secrets.NAME`.
pub fn check_name(name: &str) -> Result<(), ValidationError> {
    let mut chars = name.chars();
    let first = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') || name.len() > 64 {
        return Err(ValidationError::new(
            "secrets",
            format!(
                "secret name {name:?} is not valid: use 1 to 64 letters, digits or '_', not starting with a digit"
            ),
        ));
    }
    Ok(())
}

/// Checks a secret's value before it is stored.
pub fn check_value(value: &str) -> Result<(), ValidationError> {
    if value.len() < MIN_SECRET_BYTES || value.len() > MAX_SECRET_BYTES {
        return Err(ValidationError::new(
            "value",
            format!(
                "a secret must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes (short values could not be redacted from outputs)"
            ),
        ));
    }
    Ok(())
}

/// Secret values by name. Its `Debug` shows names only, so a job never logs a value.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretValues(pub BTreeMap<String, String>);

impl fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl SecretValues {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Replaces every secret value in `text` with its marker.
    pub fn redact_text(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (name, value) in &self.0 {
            if !value.is_empty() && out.contains(value.as_str()) {
                out = out.replace(value.as_str(), &marker(name));
            }
        }
        out
    }

    /// Replaces every secret value in the strings (and keys) of a JSON value.
    pub fn redact_value(&self, value: &mut Value) {
        match value {
            Value::String(text) => *text = self.redact_text(text),
            Value::Array(items) => items.iter_mut().for_each(|item| self.redact_value(item)),
            Value::Object(map) => {
                let entries = std::mem::take(map);
                for (key, mut item) in entries {
                    self.redact_value(&mut item);
                    map.insert(self.redact_text(&key), item);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sealed_secrets_open_only_for_their_tenant_and_name() {
        let key = SecretsKey::from_base64(&SecretsKey::generate()).unwrap();
        let sealed = key.seal("acme", "API_KEY", "s3cret-value");
        assert_eq!(
            key.open("acme", "API_KEY", &sealed).unwrap(),
            "s3cret-value"
        );
        assert!(key.open("other", "API_KEY", &sealed).is_err());
        assert!(key.open("acme", "OTHER", &sealed).is_err());
        let other_key = SecretsKey::from_base64(&SecretsKey::generate()).unwrap();
        assert!(other_key.open("acme", "API_KEY", &sealed).is_err());
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(SecretsKey::from_base64("short").is_err());
        assert!(SecretsKey::from_base64(&STANDARD.encode([0u8; 16])).is_err());
    }

    #[test]
    fn values_are_redacted_everywhere() {
        let secrets = SecretValues(BTreeMap::from([(
            "TOKEN".to_owned(),
            "abc123xyz".to_owned(),
        )]));
        assert_eq!(
            secrets.redact_text("k=abc123xyz;"),
            "k=[redacted secret TOKEN];"
        );
        let mut value = json!({"a": ["abc123xyz", 5], "abc123xyz": {"b": "x abc123xyz"}});
        secrets.redact_value(&mut value);
        assert_eq!(
            value,
            json!({"a": ["[redacted secret TOKEN]", 5], "[redacted secret TOKEN]": {"b": "x [redacted secret TOKEN]"}})
        );
        assert_eq!(format!("{secrets:?}"), "{\"TOKEN\"}");
    }

    #[test]
    fn names_and_values_are_checked() {
        assert!(check_name("API_KEY").is_ok());
        assert!(check_name("_x1").is_ok());
        for bad in ["", "1A", "a-b", "a b", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_value("12345").is_err());
        assert!(check_value("123456").is_ok());
    }
}
