-- Retention (the daily delete and the cleanup preview) selects by time
-- alone; without this index both scan the whole table.
CREATE INDEX IF NOT EXISTS gpu_samples_recorded_at ON gpu_samples (recorded_at_ms);
