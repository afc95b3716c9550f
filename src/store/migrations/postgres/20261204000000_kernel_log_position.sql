-- How far the kernel log (/dev/kmsg) has been read and counted, per boot:
-- after a restart on the same boot the reader resumes after `seq`, so no
-- XID is counted twice and none is lost; a new boot id replays the buffer.
CREATE TABLE IF NOT EXISTS kernel_log_position (
    source  TEXT   PRIMARY KEY,
    boot_id TEXT   NOT NULL,
    seq     BIGINT NOT NULL
);
