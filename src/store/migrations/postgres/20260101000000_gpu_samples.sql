-- GPU samples, one row per GPU per poll. The primary key makes a retried
-- batch idempotent: a write that succeeded but whose answer was lost is not
-- stored twice.
CREATE TABLE IF NOT EXISTS gpu_samples (
    gpu_uuid        TEXT             NOT NULL,
    recorded_at_ms  BIGINT           NOT NULL,
    gpu_index       BIGINT           NOT NULL,
    gpu_name        TEXT             NOT NULL,
    utilization     DOUBLE PRECISION,
    memory_used_mb  DOUBLE PRECISION,
    memory_total_mb DOUBLE PRECISION,
    temperature     DOUBLE PRECISION,
    power_usage     DOUBLE PRECISION,
    PRIMARY KEY (gpu_uuid, recorded_at_ms)
);
CREATE INDEX IF NOT EXISTS gpu_samples_index_time ON gpu_samples (gpu_index, recorded_at_ms);
