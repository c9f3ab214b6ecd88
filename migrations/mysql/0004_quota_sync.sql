-- Runs in flight per gateway replica and tenant, reported every half second, so that the
-- concurrent-runs quota holds across replicas without a database round trip per run.
CREATE TABLE quota_replicas (
    replica_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    tenant_id  VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    in_flight  BIGINT NOT NULL,
    seen_at    BIGINT NOT NULL,
    PRIMARY KEY (replica_id, tenant_id),
    KEY quota_replicas_tenant (tenant_id, seen_at)
) ENGINE = InnoDB;
DROP TABLE run_leases;
