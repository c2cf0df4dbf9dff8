-- Coverage over any window (a fault drill's, say), not whole hours: per target and location,
-- the slots the grid expects in [from_ts, to_ts) (and the target version, and the
-- location's life, up to now), those with a row, and the missing ones. Same counting as the
-- coverage view; missing_slots lists the missing ones.
CREATE FUNCTION coverage_between(from_ts timestamptz, to_ts timestamptz)
RETURNS TABLE (target_name text, location text, expected_slots bigint, present_slots bigint, missing_slots bigint)
LANGUAGE sql STABLE STRICT PARALLEL SAFE
BEGIN ATOMIC
    SELECT w.target_name, w.location,
           sum(slot_count(w.interval_us, w.phase_us, b.piece_from, b.piece_to))::bigint,
           sum(c.present)::bigint,
           (sum(slot_count(w.interval_us, w.phase_us, b.piece_from, b.piece_to)) - sum(c.present))::bigint
    FROM coverage_windows w
    CROSS JOIN LATERAL (
        SELECT greatest(w.window_from, coverage_between.from_ts) AS piece_from,
               least(w.window_to, coverage_between.to_ts) AS piece_to
    ) b
    CROSS JOIN LATERAL (
        SELECT count(DISTINCT r.scheduled_at) AS present
        FROM probe_results r
        WHERE r.target_name = w.target_name AND r.location = w.location
          AND r.scheduled_at >= b.piece_from AND r.scheduled_at < b.piece_to
          AND (epoch_us(r.scheduled_at) - w.phase_us) % w.interval_us = 0
    ) c
    WHERE b.piece_from < b.piece_to
    GROUP BY w.target_name, w.location
    ORDER BY w.target_name, w.location;
END;
