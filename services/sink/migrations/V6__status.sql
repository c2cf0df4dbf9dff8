-- Issue #10: what the status page reads. Rollups per target and hour / day, incidents and
-- maintenance windows, maintained by the sink's rollup job (sink::rollup, Store::rollup_once)
-- from marks that the write path leaves: a page reads a few rows per target, never the
-- history itself. Hours and days are UTC.

-- The spec's `failure_threshold` (K: consecutive down slots that open an incident); NULL =
-- the default, 2 (sink::store::status::DEFAULT_FAILURE_THRESHOLD).
ALTER TABLE target_changes ADD COLUMN failure_threshold integer CHECK (failure_threshold > 0);

CREATE OR REPLACE VIEW targets AS
SELECT target_name, spec, interval_seconds, phase_seconds, quorum, since, until, failure_threshold
FROM (
    SELECT target_name, spec, interval_seconds, phase_seconds, quorum, failure_threshold,
           changed_at AS since,
           lead(changed_at) OVER (PARTITION BY target_name
                                  ORDER BY changed_at, kafka_partition, kafka_offset) AS until
    FROM target_changes
) versions
WHERE spec IS NOT NULL;

-- What the rollup job has to recompute: one row per (target, hour) a write transaction
-- touched, committed with its rows. No unique key, so concurrent writers never wait on each
-- other; the job deletes the marks it takes (duplicates included) in its own transaction.
-- A mark is taken once not_before has passed (a maintenance window's future hours are
-- recomputed when they have ended).
CREATE TABLE rollup_marks (
    id          bigserial   PRIMARY KEY,
    target_name text        NOT NULL,
    hour        timestamptz NOT NULL,
    not_before  timestamptz NOT NULL DEFAULT now()
);

-- Maintenance windows: [starts_at, ends_at), one target or (target_name NULL) every target.
CREATE TABLE maintenance_windows (
    id          bigserial   PRIMARY KEY,
    target_name text,
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL,
    reason      text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at > starts_at)
);

CREATE INDEX maintenance_windows_ends ON maintenance_windows (ends_at);

-- The slots of `target` in [from_ts, to_ts) with their verdicts, as slot_verdicts (V4)
-- defines them (the rows, and the grid of every target version up to now, so that a slot no
-- location probed is unknown), plus: the failure_threshold K of the version in force (the
-- default 2 without one), whether a maintenance window covers the slot, and the error kind
-- and text of its first failed location (by name). One range scan of
-- probe_results_target_location_time per location.
CREATE FUNCTION slot_verdicts_between(target text, from_ts timestamptz, to_ts timestamptz)
RETURNS TABLE (scheduled_at timestamptz, locations_probed text[], locations_failed text[], quorum integer,
               failure_threshold integer, verdict text, maintenance boolean, error_kind text, error text)
LANGUAGE sql STABLE STRICT PARALLEL SAFE
BEGIN ATOMIC
    WITH known AS (
        SELECT count(*)::int AS m FROM locations WHERE retired_at IS NULL
    ),
    slots AS (
        SELECT s.scheduled_at,
               coalesce(array_agg(DISTINCT s.location ORDER BY s.location) FILTER (WHERE s.location IS NOT NULL),
                        '{}') AS locations_probed,
               coalesce(array_agg(DISTINCT s.location ORDER BY s.location) FILTER (WHERE NOT s.success),
                        '{}') AS locations_failed,
               (array_agg(s.error_kind ORDER BY s.location) FILTER (WHERE NOT s.success))[1] AS error_kind,
               (array_agg(s.error ORDER BY s.location) FILTER (WHERE NOT s.success))[1] AS error
        FROM (
            SELECT r.scheduled_at, r.location, r.success, r.error_kind, r.error
            FROM locations l
            JOIN probe_results r
              ON r.target_name = slot_verdicts_between.target AND r.location = l.name
             AND r.scheduled_at >= slot_verdicts_between.from_ts AND r.scheduled_at < slot_verdicts_between.to_ts
            UNION ALL
            SELECT g.slot, NULL, NULL, NULL, NULL
            FROM targets t
            CROSS JOIN LATERAL slot_series((t.interval_seconds * 1000000)::bigint,
                                           floor(t.phase_seconds * 1000000)::bigint,
                                           greatest(t.since, slot_verdicts_between.from_ts),
                                           least(coalesce(t.until, 'infinity'), now(), slot_verdicts_between.to_ts)) g(slot)
            WHERE t.target_name = slot_verdicts_between.target
              AND greatest(t.since, slot_verdicts_between.from_ts)
                < least(coalesce(t.until, 'infinity'), now(), slot_verdicts_between.to_ts)
        ) s
        GROUP BY s.scheduled_at
    )
    SELECT s.scheduled_at, s.locations_probed, s.locations_failed, c.quorum, c.failure_threshold,
           CASE
               WHEN cardinality(s.locations_failed) >= c.quorum THEN 'down'
               WHEN cardinality(s.locations_probed) > cardinality(s.locations_failed)
                AND cardinality(s.locations_probed) - cardinality(s.locations_failed) > k.m - c.quorum THEN 'up'
               ELSE 'unknown'
           END,
           EXISTS (SELECT 1 FROM maintenance_windows w
                   WHERE (w.target_name IS NULL OR w.target_name = slot_verdicts_between.target)
                     AND w.starts_at <= s.scheduled_at AND w.ends_at > s.scheduled_at),
           s.error_kind, s.error
    FROM slots s
    CROSS JOIN known k
    CROSS JOIN LATERAL (
        SELECT coalesce(v.quorum, k.m / 2 + 1) AS quorum, coalesce(v.failure_threshold, 2) AS failure_threshold
        FROM (SELECT 1) one
        LEFT JOIN LATERAL (
            SELECT ch.quorum, ch.failure_threshold FROM target_changes ch
            WHERE ch.target_name = slot_verdicts_between.target AND ch.changed_at <= s.scheduled_at
            ORDER BY ch.changed_at DESC, ch.kafka_partition DESC, ch.kafka_offset DESC LIMIT 1
        ) v ON true
    ) c
    ORDER BY s.scheduled_at;
END;

-- Per target and UTC hour: slots by verdict (maintenance slots apart, in no other count),
-- expected_slots = the slots the grid of its versions expects in the hour up to computed_at
-- (a page adds the grid's slots after that, and those of hours without a row, as unknown),
-- probes and successes over every location, per-phase sums and counts (for means, seconds),
-- and the durations as a sparse histogram: duration_bins[i] holds duration_counts[i] probes,
-- bin b = width_bucket(duration_seconds, bounds) over the fixed bounds of
-- sink::store::histogram (log-spaced, 1 ms to 65.5 s).
CREATE TABLE rollup_hourly (
    target_name       text        NOT NULL,
    hour              timestamptz NOT NULL,
    up_slots          integer     NOT NULL,
    down_slots        integer     NOT NULL,
    unknown_slots     integer     NOT NULL,
    maintenance_slots integer     NOT NULL,
    expected_slots    integer     NOT NULL,
    probes            integer     NOT NULL,
    successes         integer     NOT NULL,
    resolve_sum       double precision NOT NULL,
    resolve_count     integer     NOT NULL,
    connect_sum       double precision NOT NULL,
    connect_count     integer     NOT NULL,
    tls_sum           double precision NOT NULL,
    tls_count         integer     NOT NULL,
    processing_sum    double precision NOT NULL,
    processing_count  integer     NOT NULL,
    transfer_sum      double precision NOT NULL,
    transfer_count    integer     NOT NULL,
    duration_bins     integer[]   NOT NULL,
    duration_counts   integer[]   NOT NULL,
    -- The latest slot of the hour judged up (maintenance or not): where the incident walk
    -- may start.
    last_up_at        timestamptz,
    computed_at       timestamptz NOT NULL,
    PRIMARY KEY (target_name, hour)
);

-- The overview reads the slot counts of every target's last 90 hours (90,000 rows for 1,000
-- targets): an index-only scan of this index (25 ms measured on 10 M rows, 90 ms from the
-- heap).
CREATE INDEX rollup_hourly_hour ON rollup_hourly (hour)
    INCLUDE (target_name, up_slots, down_slots, unknown_slots, maintenance_slots, expected_slots);

-- The same per target and UTC day, summed from rollup_hourly.
CREATE TABLE rollup_daily (LIKE rollup_hourly);
ALTER TABLE rollup_daily RENAME COLUMN hour TO day;
ALTER TABLE rollup_daily ADD PRIMARY KEY (target_name, day);
CREATE INDEX rollup_daily_day ON rollup_daily (day);

-- Incidents: a run of at least K consecutive down slots (unknown slots in between neither
-- break nor end it) from its first down slot to the first up slot after it (ended_at; NULL
-- while open). Recomputed by the rollup job per target from the earliest hour it marked
-- (rows of one target are replaced in one transaction; an incident keeps its id while its
-- started_at stays). planned: it overlaps a maintenance window of the target or of all.
CREATE TABLE incidents (
    id                bigserial   PRIMARY KEY,
    target_name       text        NOT NULL,
    started_at        timestamptz NOT NULL,
    ended_at          timestamptz CHECK (ended_at > started_at),
    down_slots        integer     NOT NULL,
    failing_locations text[]      NOT NULL,
    first_error_kind  text,
    first_error       text,
    planned           boolean     NOT NULL,
    UNIQUE (target_name, started_at)
);

CREATE INDEX incidents_started ON incidents (started_at DESC);
CREATE INDEX incidents_open ON incidents (target_name) WHERE ended_at IS NULL;

-- Per target, as the rollup job last saw it: the verdict of its latest slot that has one
-- (up or down; unknown when none), the first slot of that run, and its latest failed probe.
CREATE TABLE target_state (
    target_name     text        PRIMARY KEY,
    state           text        NOT NULL CHECK (state IN ('up', 'down', 'unknown')),
    since           timestamptz,
    last_slot       timestamptz,
    last_error_kind text,
    last_error_at   timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Each target's latest result per location, as of the rollup job's last pass: the overview's
-- per-location state without a skip scan over probe_results (1,000 Merge Appends over the
-- partitions measured 136 ms on 10 M rows).
CREATE TABLE latest_results (
    target_name      text             NOT NULL,
    location         text             NOT NULL,
    scheduled_at     timestamptz      NOT NULL,
    success          boolean          NOT NULL,
    status_code      integer,
    error_kind       text,
    duration_seconds double precision NOT NULL,
    url              text             NOT NULL,
    PRIMARY KEY (target_name, location)
);

-- A history written before this migration has no marks: mark all of it, so that the first
-- passes of the rollup job build its rollups and incidents.
INSERT INTO rollup_marks (target_name, hour)
SELECT DISTINCT target_name, date_trunc('hour', scheduled_at, 'UTC') FROM probe_results;

-- A target page's last failures: an index of the failed probes alone (small; a success
-- adds nothing to it).
CREATE INDEX probe_results_failures ON probe_results (target_name, scheduled_at DESC) WHERE NOT success;
