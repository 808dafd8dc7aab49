-- name: start_run
-- Create the run (or mark a resumed one as running again) with its parameters.
INSERT INTO runs (run_id, input_path, input_fingerprint, model, config, status, started_at)
VALUES ($run_id, $input_path, $fingerprint, $model, $config, 'running', current_timestamp)
ON CONFLICT (run_id) DO UPDATE SET
    input_path = excluded.input_path, config = excluded.config,
    status = 'running', started_at = excluded.started_at, finished_at = NULL;

-- name: finish_run
UPDATE runs SET status = $status, finished_at = current_timestamp WHERE run_id = $run_id;

-- name: set_engine
-- The vLLM engine settings the run uses (chosen once the number of requests is known).
UPDATE runs SET engine = $engine WHERE run_id = $run_id;

-- name: reject_examples
-- The first rejects of a run, for the message of a run in which no row was valid.
SELECT row_number, request_id, field, reason FROM rejects WHERE run_id = $run_id ORDER BY row_number LIMIT $limit;

-- name: progress
-- How many valid requests a run has, and how many of them have a result.
SELECT (SELECT count(*) FROM prompts WHERE run_id = $run_id), (SELECT count(*) FROM results WHERE run_id = $run_id);
