-- Issue #14: the slot grid in SQL (coverage: the history knows its own holes), quorum
-- verdicts per slot, and uptime from the verdicts. Reads only; no trigger or index is added
-- to probe_results, so the write path is unchanged.
--
-- The grid of a target version is phase + k × interval (common::slots), computed in integer
-- microseconds since the Unix epoch: the resolution of timestamptz. The checker's slot times
-- have nanoseconds, which PostgreSQL truncates to microseconds on the way in; an interval
-- is a whole number of microseconds (the sink refuses others), so a stored slot time is
-- exactly k × interval_us + floor(phase_ns / 1000).

-- A timestamp as microseconds since the Unix epoch (exact: extract returns numeric).
CREATE FUNCTION epoch_us(t timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN (extract(epoch FROM t) * 1000000)::bigint;

-- Microseconds since the Unix epoch as a timestamp.
CREATE FUNCTION from_epoch_us(us bigint) RETURNS timestamptz
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN timestamptz '1970-01-01 00:00:00+00' + us * interval '1 microsecond';

-- How many slots of the grid (interval_us, phase_us) lie in [from_ts, to_ts).
CREATE FUNCTION slot_count(interval_us bigint, phase_us bigint, from_ts timestamptz, to_ts timestamptz)
RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN greatest(0, ceil((epoch_us(to_ts) - phase_us)::numeric / interval_us)
                 - ceil((epoch_us(from_ts) - phase_us)::numeric / interval_us))::bigint;

-- The slots of the grid (interval_us, phase_us) in [from_ts, to_ts), in order.
CREATE FUNCTION slot_series(interval_us bigint, phase_us bigint, from_ts timestamptz, to_ts timestamptz)
RETURNS SETOF timestamptz
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
BEGIN ATOMIC
    SELECT from_epoch_us(k * interval_us + phase_us)
    FROM generate_series(ceil((epoch_us(from_ts) - phase_us)::numeric / interval_us)::bigint,
                         ceil((epoch_us(to_ts) - phase_us)::numeric / interval_us)::bigint - 1) k;
END;

-- Where a location should have probed a target: one row per target version and location
-- known during it (not retired, first seen before the version ended), with the window
-- [window_from, window_to): the version's [since, until) ∩ [first_seen, retired_at) ∩
-- (-∞, now()). Used by coverage, missing_slots and slot_verdicts.
CREATE VIEW coverage_windows AS
SELECT t.target_name, l.name AS location,
       (t.interval_seconds * 1000000)::bigint AS interval_us,
       floor(t.phase_seconds * 1000000)::bigint AS phase_us,
       greatest(t.since, l.first_seen) AS window_from,
       least(coalesce(t.until, 'infinity'), coalesce(l.retired_at, 'infinity'), now()) AS window_to
FROM targets t
JOIN locations l
  ON l.first_seen < coalesce(t.until, 'infinity')
 AND coalesce(l.retired_at, 'infinity') > t.since
WHERE greatest(t.since, l.first_seen)
    < least(coalesce(t.until, 'infinity'), coalesce(l.retired_at, 'infinity'), now());

-- Per target, location and hour (up to now): the slots the grid expects, the slots with a
-- row (distinct scheduled_at on the grid), and the missing ones. A version change inside an
-- hour counts each version's part with its own grid. Each piece is one range scan of
-- probe_results_target_location_time (target_name, location, scheduled_at).
CREATE VIEW coverage AS
SELECT p.target_name, p.location, p.hour,
       sum(slot_count(p.interval_us, p.phase_us, p.piece_from, p.piece_to))::bigint AS expected_slots,
       sum(c.present)::bigint AS present_slots,
       (sum(slot_count(p.interval_us, p.phase_us, p.piece_from, p.piece_to)) - sum(c.present))::bigint AS missing_slots
FROM (
    SELECT w.target_name, w.location, w.interval_us, w.phase_us, h.hour,
           greatest(w.window_from, h.hour) AS piece_from,
           least(w.window_to, h.hour + interval '1 hour') AS piece_to
    FROM coverage_windows w
    CROSS JOIN LATERAL generate_series(date_trunc('hour', w.window_from), w.window_to, interval '1 hour') h(hour)
) p
CROSS JOIN LATERAL (
    SELECT count(DISTINCT r.scheduled_at) AS present
    FROM probe_results r
    WHERE r.target_name = p.target_name AND r.location = p.location
      AND r.scheduled_at >= p.piece_from AND r.scheduled_at < p.piece_to
      AND (epoch_us(r.scheduled_at) - p.phase_us) % p.interval_us = 0
) c
WHERE p.piece_from < p.piece_to
GROUP BY p.target_name, p.location, p.hour;

-- The slots of `target` that `location` should have probed in [from_ts, to_ts) and that
-- have no row, in order. One index probe of probe_results_target_location_time per slot.
CREATE FUNCTION missing_slots(target text, location text, from_ts timestamptz, to_ts timestamptz)
RETURNS TABLE (scheduled_at timestamptz)
LANGUAGE sql STABLE STRICT PARALLEL SAFE
BEGIN ATOMIC
    SELECT s.slot
    FROM coverage_windows w
    CROSS JOIN LATERAL slot_series(w.interval_us, w.phase_us,
                                   greatest(w.window_from, missing_slots.from_ts),
                                   least(w.window_to, missing_slots.to_ts)) s(slot)
    WHERE w.target_name = missing_slots.target AND w.location = missing_slots.location
      AND NOT EXISTS (
          SELECT 1 FROM probe_results r
          WHERE r.target_name = missing_slots.target AND r.location = missing_slots.location
            AND r.scheduled_at = s.slot)
    ORDER BY s.slot;
END;

-- Per target and slot: the locations that probed it and those that failed (sorted), the
-- quorum Q (the spec's `quorum` of the version in force at the slot, else a strict majority
-- floor(M/2)+1 of the M locations not retired), and the verdict: `down` when at least Q
-- locations failed; `up` when the successes make `down` impossible even if every location
-- that has not reported had failed (successes > M − Q, and at least one success); otherwise
-- `unknown`. Slots come from the rows and from the grid of every target version up to now, so
-- a slot no location probed is `unknown`, never up. Targets with no version (a static target
-- list, no targets topic) have their probed slots only.
CREATE VIEW slot_verdicts AS
WITH known AS (
    SELECT count(*)::int AS m FROM locations WHERE retired_at IS NULL
),
slots AS (
    SELECT target_name, scheduled_at,
           coalesce(array_agg(DISTINCT location ORDER BY location) FILTER (WHERE location IS NOT NULL),
                    '{}') AS locations_probed,
           coalesce(array_agg(DISTINCT location ORDER BY location) FILTER (WHERE NOT success),
                    '{}') AS locations_failed
    FROM (
        SELECT target_name, scheduled_at, location, success FROM probe_results
        UNION ALL
        SELECT t.target_name, g.slot, NULL, NULL
        FROM targets t
        CROSS JOIN LATERAL slot_series((t.interval_seconds * 1000000)::bigint,
                                       floor(t.phase_seconds * 1000000)::bigint,
                                       t.since, least(coalesce(t.until, 'infinity'), now())) g(slot)
        WHERE t.since < least(coalesce(t.until, 'infinity'), now())
    ) s
    GROUP BY target_name, scheduled_at
)
SELECT s.target_name, s.scheduled_at, s.locations_probed, s.locations_failed, q.quorum,
       CASE
           WHEN cardinality(s.locations_failed) >= q.quorum THEN 'down'
           WHEN cardinality(s.locations_probed) > cardinality(s.locations_failed)
            AND cardinality(s.locations_probed) - cardinality(s.locations_failed) > k.m - q.quorum THEN 'up'
           ELSE 'unknown'
       END AS verdict
FROM slots s
CROSS JOIN known k
CROSS JOIN LATERAL (
    SELECT coalesce(
        (SELECT c.quorum FROM target_changes c
         WHERE c.target_name = s.target_name AND c.changed_at <= s.scheduled_at
         ORDER BY c.changed_at DESC, c.kafka_partition DESC, c.kafka_offset DESC LIMIT 1),
        k.m / 2 + 1) AS quorum
) q;

-- Uptime per target and hour / day from the verdicts: up, down and unknown slots,
-- uptime_ratio = up / (up + down) over the slots with a known verdict (NULL when none),
-- coverage_ratio = (up + down) / all slots. A missing slot is unknown, never up. probes,
-- successes and the latency percentiles (seconds) are over every location's rows. Buckets
-- follow the session's TimeZone.
DROP VIEW target_uptime_hourly;
DROP VIEW target_uptime_daily;

CREATE VIEW target_uptime_hourly AS
SELECT v.target_name, v.bucket, v.up_slots, v.down_slots, v.unknown_slots,
       v.up_slots::double precision / nullif(v.up_slots + v.down_slots, 0)                     AS uptime_ratio,
       (v.up_slots + v.down_slots)::double precision / (v.up_slots + v.down_slots + v.unknown_slots) AS coverage_ratio,
       coalesce(p.probes, 0) AS probes, coalesce(p.successes, 0) AS successes,
       p.p50_seconds, p.p95_seconds, p.p99_seconds
FROM (
    SELECT target_name, date_trunc('hour', scheduled_at) AS bucket,
           count(*) FILTER (WHERE verdict = 'up')      AS up_slots,
           count(*) FILTER (WHERE verdict = 'down')    AS down_slots,
           count(*) FILTER (WHERE verdict = 'unknown') AS unknown_slots
    FROM slot_verdicts
    GROUP BY 1, 2
) v
LEFT JOIN (
    SELECT target_name, date_trunc('hour', scheduled_at) AS bucket,
           count(*)                                                       AS probes,
           count(*) FILTER (WHERE success)                                AS successes,
           percentile_cont(0.50) WITHIN GROUP (ORDER BY duration_seconds) AS p50_seconds,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_seconds) AS p95_seconds,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_seconds) AS p99_seconds
    FROM probe_results
    GROUP BY 1, 2
) p USING (target_name, bucket);

CREATE VIEW target_uptime_daily AS
SELECT v.target_name, v.bucket, v.up_slots, v.down_slots, v.unknown_slots,
       v.up_slots::double precision / nullif(v.up_slots + v.down_slots, 0)                     AS uptime_ratio,
       (v.up_slots + v.down_slots)::double precision / (v.up_slots + v.down_slots + v.unknown_slots) AS coverage_ratio,
       coalesce(p.probes, 0) AS probes, coalesce(p.successes, 0) AS successes,
       p.p50_seconds, p.p95_seconds, p.p99_seconds
FROM (
    SELECT target_name, date_trunc('day', scheduled_at) AS bucket,
           count(*) FILTER (WHERE verdict = 'up')      AS up_slots,
           count(*) FILTER (WHERE verdict = 'down')    AS down_slots,
           count(*) FILTER (WHERE verdict = 'unknown') AS unknown_slots
    FROM slot_verdicts
    GROUP BY 1, 2
) v
LEFT JOIN (
    SELECT target_name, date_trunc('day', scheduled_at) AS bucket,
           count(*)                                                       AS probes,
           count(*) FILTER (WHERE success)                                AS successes,
           percentile_cont(0.50) WITHIN GROUP (ORDER BY duration_seconds) AS p50_seconds,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_seconds) AS p95_seconds,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_seconds) AS p99_seconds
    FROM probe_results
    GROUP BY 1, 2
) p USING (target_name, bucket);
