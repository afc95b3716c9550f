-- GPU samples, one row per GPU per poll. The primary key makes a retried
-- batch idempotent: a write that succeeded but whose answer was lost is not
-- stored twice.
CREATE TABLE IF NOT EXISTS gpu_samples (
    gpu_uuid        TEXT    NOT NULL,
    recorded_at_ms  INTEGER NOT NULL,
    gpu_index       INTEGER NOT NULL,
    gpu_name        TEXT    NOT NULL,
    utilization     REAL,
    memory_used_mb  REAL,
    memory_total_mb REAL,
    temperature     REAL,
    power_usage     REAL,
    PRIMARY KEY (gpu_uuid, recorded_at_ms)
);
CREATE INDEX IF NOT EXISTS gpu_samples_index_time ON gpu_samples (gpu_index, recorded_at_ms);
