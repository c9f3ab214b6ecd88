-- Runs in flight per gateway replica and tenant, reported every half second, so that the
-- concurrent-runs quota holds across replicas without a database round trip per run.
CREATE TABLE quota_replicas (
    replica_id TEXT    NOT NULL,
    tenant_id  TEXT    NOT NULL,
    in_flight  INTEGER NOT NULL,
    seen_at    INTEGER NOT NULL,
    PRIMARY KEY (replica_id, tenant_id)
);
CREATE INDEX quota_replicas_tenant ON quota_replicas (tenant_id, seen_at);
DROP TABLE run_leases;
