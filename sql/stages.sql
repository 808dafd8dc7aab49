-- name: mark
-- Record that a stage finished for a run: the hash of its parameters and its row count.
INSERT OR REPLACE INTO stages VALUES ($run_id, $stage, $params, $rows, current_timestamp);

-- name: stamp
-- The completion stamp of one stage; the stage's cache key includes it.
SELECT params, rows, finished_at FROM stages WHERE run_id = $run_id AND stage = $stage;
