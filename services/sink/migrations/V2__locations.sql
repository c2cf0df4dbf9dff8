-- Issue #14: every result names the location that probed it (schema version 4; older
-- messages are stored as 'default').
--
-- The primary key stays (scheduled_at, check_id): check_id is now UUIDv5 of (target,
-- location, scheduled_at) (common::result::check_id), so location is part of the
-- deduplication key. Two locations probing one slot are two rows; two replicas of one
-- location probing the same slot (a cut-off checker's late probe) are one.
-- A constant default is stored in the catalog: no rewrite of existing partitions.
ALTER TABLE probe_results ADD COLUMN location text NOT NULL DEFAULT 'default';

-- One target over time, per location: coverage, missing_slots and the latest result per
-- target and location use it. It replaces (target_name, scheduled_at DESC), so the hot write
-- path keeps one secondary index; a query by target and time alone still scans this index's
-- entries of the target (few locations).
CREATE INDEX probe_results_target_location_time ON probe_results (target_name, location, scheduled_at DESC);
DROP INDEX probe_results_target_time;

-- The locations that ever delivered a result. The sink adds a location the first time a
-- batch holds it (INSERT ... ON CONFLICT DO NOTHING in the batch's transaction); an operator
-- retires one by setting retired_at. Quorum's M is the number of locations not retired.
CREATE TABLE locations (
    name       text        PRIMARY KEY,
    -- The earliest scheduled_at of the batch that first held the location: coverage counts
    -- the location's expected slots from here.
    first_seen timestamptz NOT NULL DEFAULT now(),
    retired_at timestamptz
);

INSERT INTO locations (name, first_seen)
SELECT 'default', min(scheduled_at) FROM probe_results HAVING count(*) > 0;

-- Latest result per target and location. A recursive "skip scan" over
-- probe_results_target_location_time visits one index entry per (target, location) instead
-- of every row.
DROP VIEW probe_results_latest;
CREATE VIEW probe_results_latest AS
WITH RECURSIVE pairs(target_name, location) AS (
    (SELECT target_name, location FROM probe_results ORDER BY target_name, location LIMIT 1)
    UNION ALL
    SELECT n.target_name, n.location
    FROM pairs t
    CROSS JOIN LATERAL (
        SELECT p.target_name, p.location FROM probe_results p
        WHERE (p.target_name, p.location) > (t.target_name, t.location)
        ORDER BY p.target_name, p.location LIMIT 1
    ) n
)
SELECT latest.*
FROM pairs t
CROSS JOIN LATERAL (
    SELECT * FROM probe_results p
    WHERE p.target_name = t.target_name AND p.location = t.location
    ORDER BY p.scheduled_at DESC LIMIT 1
) latest;
