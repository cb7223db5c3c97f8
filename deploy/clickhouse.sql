-- metrics_service's JSONL lines in ClickHouse (README: "Beyond one machine").
--
-- Identity: (instance, seq). A collector never reuses a seq (it continues from the
-- highest one in its sink and segments), and METRICS_INSTANCE tells collectors apart
-- ('' for lines written without it). A line shipped twice, by a re-loaded segment or a
-- shipper that resent after a crash, is the same (instance, seq) with the same values,
-- so ReplacingMergeTree keeps one row. event_id cannot be the key: it is optional and
-- de-duplicated only within METRICS_DEDUPE_WINDOW.
-- Duplicates are removed when parts merge, at an unknown time: count with FINAL (or
-- run OPTIMIZE TABLE metrics.events FINAL after a load) for exact figures.

CREATE DATABASE IF NOT EXISTS metrics;

CREATE TABLE IF NOT EXISTS metrics.events
(
    instance    LowCardinality(String) DEFAULT '',
    seq         UInt64,
    received_at DateTime64(3, 'UTC'),
    timestamp   DateTime64(3, 'UTC'),
    event       LowCardinality(String),
    visitor_id  String,
    event_id    Nullable(String),
    test_id     Nullable(String),
    metadata    String,  -- the metadata object as JSON text: JSONExtract*(metadata, 'key')
    user_agent  Nullable(String)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(received_at)  -- a re-shipped line has the same received_at: same partition
ORDER BY (instance, seq);

-- Loading files (clickhouse-local in the collector's folder, or a server whose
-- user_files folder holds them). Rotated segments, then the live file; missing keys
-- (instance, event_id, test_id) take their defaults. Loading a file again is harmless.
INSERT INTO metrics.events
SELECT * FROM file('data/metrics-*.jsonl.gz', 'JSONEachRow')
SETTINGS date_time_input_format = 'best_effort', input_format_json_read_objects_as_strings = 1;

-- The live file may end in a line being written, or torn by a crash the collector has
-- not yet restarted from: that one line is skipped, and the next load takes it whole.
INSERT INTO metrics.events
SELECT * FROM file('data/metrics.jsonl', 'JSONEachRow')
SETTINGS date_time_input_format = 'best_effort', input_format_json_read_objects_as_strings = 1,
    input_format_allow_errors_num = 1;

-- Counts by event, each line once.
SELECT event, count() AS events, uniqExact(visitor_id) AS visitors
FROM metrics.events FINAL
GROUP BY event
ORDER BY events DESC, event;
