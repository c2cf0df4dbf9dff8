-- Issue #14: the targets topic (KAFKA_TARGETS_TOPIC, key = target name, value = its spec as
-- JSON, tombstone = removal) as history, written by the sink's targets consumer
-- (sink::targets). One row per record; (topic, kafka_partition, kafka_offset, changed_at) is
-- unique, so a replayed record is a no-op. The record's timestamp is in the key because
-- offsets are not unique over time: a topic deleted and created again (or a test broker that
-- forgot its log) starts again at offset 0, and its records are new changes, not replays.
CREATE TABLE target_changes (
    id               bigserial   PRIMARY KEY,
    topic            text        NOT NULL,
    kafka_partition  integer     NOT NULL,
    kafka_offset     bigint      NOT NULL,
    target_name      text        NOT NULL,
    -- The spec as published; NULL for a tombstone (the target was removed).
    spec             jsonb,
    -- The spec's `interval`, exact (nanoseconds); NULL for a tombstone.
    interval_seconds numeric     CHECK (interval_seconds > 0),
    -- common::slots::phase(target_name, interval), exact (nanoseconds), computed by the sink
    -- (SQL has no UUIDv5): the slot grid is phase_seconds + k × interval_seconds since the
    -- Unix epoch. NULL for a tombstone.
    phase_seconds    numeric     CHECK (phase_seconds >= 0),
    -- The spec's `quorum` (down when at least this many locations failed); NULL = the
    -- default, a strict majority of the known locations.
    quorum           integer     CHECK (quorum > 0),
    -- The record's timestamp.
    changed_at       timestamptz NOT NULL,
    inserted_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (topic, kafka_partition, kafka_offset, changed_at),
    CHECK ((spec IS NULL) = (interval_seconds IS NULL) AND (spec IS NULL) = (phase_seconds IS NULL))
);

CREATE INDEX target_changes_name_time ON target_changes (target_name, changed_at);

-- One row per version of a target: since = the change that made it, until = the next change
-- of that name (NULL while current). A tombstone ends a version and starts none. Changes of
-- one name are ordered by record timestamp, then by topic position (one name lives in one
-- partition).
CREATE VIEW targets AS
SELECT target_name, spec, interval_seconds, phase_seconds, quorum, since, until
FROM (
    SELECT target_name, spec, interval_seconds, phase_seconds, quorum,
           changed_at AS since,
           lead(changed_at) OVER (PARTITION BY target_name
                                  ORDER BY changed_at, kafka_partition, kafka_offset) AS until
    FROM target_changes
) versions
WHERE spec IS NOT NULL;
