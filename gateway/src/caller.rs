//! Who a request acts for: the tenant whose tools it sees, and the actor the audit trail
//! records.

use shared::model::TenantId;

/// The authenticated caller, stored in the request's extensions by the auth layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: TenantId,
    /// `key:<id>` for API keys, `local` when authentication is off.
    pub actor: String,
}

impl Caller {
    /// The caller when authentication is off: the one built-in tenant.
    pub fn local() -> Self {
        Self {
            tenant: TenantId::default_tenant(),
            actor: "local".into(),
        }
    }

    /// A caller authenticated by an API key.
    pub fn with_key(tenant: TenantId, key_id: &str) -> Self {
        Self {
            tenant,
            actor: format!("key:{key_id}"),
        }
    }
}
