//! The admin CLI on the gateway binary (`gateway tenant|key|quota|secret|audit …`), using
//! the same `--database-url` as the server. Output is plain lines for people and scripts:
//! a new key is always the last whitespace-separated token of the last line.

use std::io::Read as _;

use secrecy::ExposeSecret;

use shared::model::TenantId;
use shared::registry::{self, QuotaOverrides, RegistryError, TenantStore};
use shared::secrets::{SecretsKey, check_name, check_value};
use shared::time::rfc3339;

use crate::config::{Command, Config, KeyCommand, QuotaCommand, SecretCommand, TenantCommand};
use crate::http::auth::new_key;

/// Actor recorded in the audit trail for CLI actions.
const ADMIN: &str = "admin-cli";

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Registry(#[from] RegistryError),
    #[error("{0}")]
    Invalid(String),
    #[error("secrets: {0}")]
    Secrets(#[from] shared::secrets::SecretsError),
    #[error("reading the secret from stdin: {0}")]
    Stdin(std::io::Error),
}

/// Runs one admin command, printing to stdout.
pub async fn run(command: Command, config: &Config) -> Result<(), AdminError> {
    if let Command::Secret(SecretCommand::NewKey) = command {
        println!("{}", SecretsKey::generate());
        return Ok(());
    }
    // Admin commands run where the gateway runs (e.g. `kubectl exec`), possibly with a
    // database user that may not change the schema; only `migrate` always migrates.
    let migrate = matches!(command, Command::Migrate) || !config.skip_migrations;
    let store = registry::connect(config.database_url.expose_secret(), migrate).await?;
    match command {
        Command::Migrate => println!("migrations applied"),
        Command::Tenant(TenantCommand::Create { name }) => {
            let tenant = tenant_name(&name)?;
            store.create_tenant(&tenant, ADMIN).await?;
            let key = new_key();
            store.create_key(&tenant, &key.id, &key.hash, ADMIN).await?;
            println!("created tenant {tenant}");
            println!("key id {} (use it to revoke the key)", key.id);
            println!("API key, shown once; store it now: {}", key.secret);
        }
        Command::Tenant(TenantCommand::List) => {
            println!("{:<32} {:>6} {:>5}  created", "tenant", "tools", "keys");
            for tenant in store.list_tenants().await? {
                println!(
                    "{:<32} {:>6} {:>5}  {}",
                    tenant.id.as_str(),
                    tenant.tools,
                    tenant.active_keys,
                    rfc3339(tenant.created_at)
                );
            }
        }
        Command::Key(KeyCommand::Create { tenant }) => {
            let tenant = existing_tenant(&*store, &tenant).await?;
            let key = new_key();
            store.create_key(&tenant, &key.id, &key.hash, ADMIN).await?;
            println!("key id {} for tenant {tenant}", key.id);
            println!("API key, shown once; store it now: {}", key.secret);
        }
        Command::Key(KeyCommand::Revoke { key_id }) => {
            let tenant = store.revoke_key(&key_id, ADMIN).await?;
            println!(
                "revoked key {key_id} of tenant {tenant} (gateways stop accepting it within {} s)",
                crate::http::auth::KEY_CACHE_TTL.as_secs()
            );
        }
        Command::Quota(QuotaCommand::Set {
            tenant,
            runs_per_minute,
            concurrent_runs,
            max_tools,
            max_code_bytes,
        }) => {
            let tenant = existing_tenant(&*store, &tenant).await?;
            for (name, value) in [
                ("runs-per-minute", runs_per_minute),
                ("concurrent-runs", concurrent_runs),
                ("max-tools", max_tools),
                ("max-code-bytes", max_code_bytes),
            ] {
                if value.is_some_and(|v| v < 0) {
                    return Err(AdminError::Invalid(format!("--{name} cannot be negative")));
                }
            }
            let changes = QuotaOverrides {
                runs_per_minute,
                concurrent_runs,
                max_tools,
                max_code_bytes,
            };
            let after = store.set_quotas(&tenant, &changes, ADMIN).await?;
            print_quotas(&tenant, &after, config);
        }
        Command::Quota(QuotaCommand::Show { tenant }) => {
            let tenant = existing_tenant(&*store, &tenant).await?;
            print_quotas(&tenant, &store.quotas(&tenant).await?, config);
        }
        Command::Secret(SecretCommand::Set { tenant, name }) => {
            let Some(key) = &config.secrets_key else {
                return Err(AdminError::Invalid(
                    "no secrets key: set TOOLSMITH_SECRETS_KEY (or --secrets-key) to the key the \
                     gateways use; `gateway secret new-key` makes one"
                        .into(),
                ));
            };
            let key = SecretsKey::from_base64(key.expose_secret())?;
            let tenant = existing_tenant(&*store, &tenant).await?;
            check_name(&name).map_err(|e| AdminError::Invalid(e.message))?;
            let mut value = String::new();
            std::io::stdin()
                .read_to_string(&mut value)
                .map_err(AdminError::Stdin)?;
            let value = value
                .strip_suffix('\n')
                .map(|v| v.strip_suffix('\r').unwrap_or(v))
                .unwrap_or(&value);
            check_value(value).map_err(|e| AdminError::Invalid(e.message))?;
            let sealed = key.seal(tenant.as_str(), &name, value);
            store.put_secret(&tenant, &name, &sealed, ADMIN).await?;
            println!(
                "set secret {name} for tenant {tenant}; tools that declare it receive it as context.secrets.{name}"
            );
        }
        Command::Secret(SecretCommand::NewKey) => {}
        Command::Audit { tenant, limit } => {
            let tenant = match tenant {
                Some(name) => Some(existing_tenant(&*store, &name).await?),
                None => None,
            };
            for entry in store.audit_log(tenant.as_ref(), limit).await? {
                let version = entry.version.map_or(String::new(), |v| format!(" v{v}"));
                println!(
                    "{}  {:<16} {:<24} {:<12} {}{version}",
                    rfc3339(entry.at),
                    entry.tenant,
                    entry.actor,
                    entry.action,
                    entry.subject
                );
            }
        }
    }
    Ok(())
}

fn print_quotas(tenant: &TenantId, quotas: &QuotaOverrides, config: &Config) {
    let show = |own: Option<i64>, default: i64| match own {
        Some(value) => value.to_string(),
        None => format!("{default} (default)"),
    };
    println!("quotas of tenant {tenant}:");
    println!(
        "  runs_per_minute {}",
        show(quotas.runs_per_minute, config.default_runs_per_minute)
    );
    println!(
        "  concurrent_runs {}",
        show(quotas.concurrent_runs, config.default_concurrent_runs)
    );
    println!(
        "  max_tools       {}",
        show(quotas.max_tools, config.default_max_tools)
    );
    println!(
        "  max_code_bytes  {}",
        show(
            quotas.max_code_bytes,
            i64::try_from(config.max_code_bytes).unwrap_or(i64::MAX)
        )
    );
}

/// A valid new tenant name: lowercase letters, digits and '-', a letter first, at most 63.
fn tenant_name(name: &str) -> Result<TenantId, AdminError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.len() <= 63;
    if !ok {
        return Err(AdminError::Invalid(format!(
            "tenant name {name:?} is not valid: use lowercase letters, digits and '-', a letter first, at most 63 characters"
        )));
    }
    Ok(TenantId::new(name))
}

async fn existing_tenant(store: &dyn TenantStore, name: &str) -> Result<TenantId, AdminError> {
    let tenant = TenantId::new(name);
    if store.tenant_exists(&tenant).await? {
        Ok(tenant)
    } else {
        Err(AdminError::Registry(RegistryError::NoSuchTenant(
            name.to_owned(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_slugs() {
        assert!(tenant_name("acme").is_ok());
        assert!(tenant_name("acme-2").is_ok());
        for bad in ["", "Acme", "2acme", "ac me", "ac_me", &"a".repeat(64)] {
            assert!(tenant_name(bad).is_err(), "{bad}");
        }
    }
}
