-- name: training_rows
-- What the length predictor learns from: every finished request without error, of every run,
-- with its run's model, text, limit, real output length and when it finished (the trainer keeps one model's). A request without its own max_tokens had its
-- run's default (runs.config), else $default_max_tokens. Ordered, so training is reproducible.
-- Parameters: $default_max_tokens.
WITH group_sizes AS (
    SELECT run_id, request_id, count(*) OVER (PARTITION BY run_id, group_id) AS group_size
    FROM prompt_groups
)
SELECT r.run_id, ru.model, r.request_id, r.finished_at, p.prompt, p.messages::VARCHAR AS messages,
       coalesce(p.max_tokens, try_cast(json_extract_string(ru.config, '$.max_tokens') AS INTEGER),
                $default_max_tokens) AS max_tokens,
       coalesce(t.prompt_tokens, r.prompt_tokens) AS prompt_tokens,
       g.group_size,
       r.output_tokens
FROM results r
JOIN prompts p USING (run_id, request_id)
LEFT JOIN tokens t USING (run_id, request_id)
LEFT JOIN group_sizes g USING (run_id, request_id)
LEFT JOIN runs ru ON ru.run_id = r.run_id
WHERE r.error IS NULL AND r.output_tokens IS NOT NULL
  -- a length the request fixed (ignore_eos, min_tokens) is not the model's to learn
  AND NOT coalesce(p.ignore_eos, false) AND coalesce(p.min_tokens, 0) <= 1
  AND r.reused_from IS NULL  -- a copy of an earlier run's answer, learnt from there
ORDER BY r.run_id, r.request_id;

-- name: newest_trained_model
-- The model of the newest run that has finished results (what train-predictor trains for).
SELECT ru.model
FROM runs ru
WHERE EXISTS (SELECT 1 FROM results r WHERE r.run_id = ru.run_id AND r.error IS NULL)
ORDER BY coalesce(ru.finished_at, ru.started_at, ru.created_at) DESC, ru.run_id DESC
LIMIT 1;

-- name: run_model
-- The model a run uses (runs.model: a resolved path or a hub id).
-- Parameters: $run_id.
SELECT model FROM runs WHERE run_id = $run_id;

-- name: run_requests
-- The requests of one run with what the predictor reads; max_tokens NULL means the run's
-- default, passed as $default_max_tokens.
-- Parameters: $run_id, $default_max_tokens.
WITH group_sizes AS (
    SELECT request_id, count(*) OVER (PARTITION BY group_id) AS group_size
    FROM prompt_groups WHERE run_id = $run_id
)
SELECT p.request_id, p.prompt, p.messages::VARCHAR AS messages,
       coalesce(p.max_tokens, $default_max_tokens) AS max_tokens, p.min_tokens, p.ignore_eos,
       t.prompt_tokens, g.group_size
FROM prompts p
LEFT JOIN tokens t USING (run_id, request_id)
LEFT JOIN group_sizes g USING (request_id)
WHERE p.run_id = $run_id
ORDER BY p.row_number, p.request_id;

-- name: past_median_output
-- The fallback's base length: median output tokens of the finished requests of other runs
-- (NULL when there are none). The run itself is left out, so predicting again after it ran
-- gives the same numbers.
-- Parameters: $run_id.
SELECT median(output_tokens)
FROM results
WHERE run_id <> $run_id AND error IS NULL AND output_tokens IS NOT NULL;

-- name: oracle_lengths
-- The perfect predictor: the real output tokens that run $source_run_id produced for the same
-- request ids as run $run_id (finished without error).
-- Parameters: $run_id, $source_run_id.
SELECT p.request_id, r.output_tokens
FROM prompts p
JOIN results r ON r.request_id = p.request_id AND r.run_id = $source_run_id
WHERE p.run_id = $run_id AND r.error IS NULL AND r.output_tokens IS NOT NULL;

-- name: count_results
-- Finished requests without error of one run.
-- Parameters: $run_id.
SELECT count(*) FROM results WHERE run_id = $run_id AND error IS NULL AND output_tokens IS NOT NULL;

-- name: clear_predictions
-- Remove a run's predictions before they are made again.
DELETE FROM predictions WHERE run_id = $run_id;

-- name: record_choice
-- Which predictor a run's predictions came from, and why (a run's one row, replaced on a re-run).
-- Parameters: $run_id, $spec, $predictor, $reason.
INSERT OR REPLACE INTO predictor_choices (run_id, spec, predictor, reason) VALUES ($run_id, $spec, $predictor, $reason);

-- name: insert_predictions
-- Add the rows registered as `incoming_predictions` (request_id, predicted_tokens, predictor).
-- Parameters: $run_id.
INSERT INTO predictions (run_id, request_id, predicted_tokens, predictor)
SELECT $run_id, request_id, predicted_tokens, predictor FROM incoming_predictions;

-- name: register_predictor
-- Add a trained predictor to the registry (the same version again replaces its row).
-- Parameters: $version, $kind, $path, $train_rows, $metrics, $model.
INSERT OR REPLACE INTO predictors (version, kind, path, train_rows, metrics, created_at, model)
VALUES ($version, $kind, $path, $train_rows, $metrics, current_timestamp, $model);

-- name: latest_predictor
-- The most recently trained predictor of any model.
SELECT version, kind, path, train_rows, metrics::VARCHAR AS metrics, created_at, model
FROM predictors
ORDER BY created_at DESC, version DESC
LIMIT 1;

-- name: model_predictors
-- The registered predictors of one model (a registry.model_key), newest first.
-- Parameters: $model.
SELECT version, kind, path, train_rows, metrics::VARCHAR AS metrics, created_at, model
FROM predictors
WHERE model = $model
ORDER BY created_at DESC, version DESC;

-- name: get_predictor
-- One registered predictor by version.
-- Parameters: $version.
SELECT version, kind, path, train_rows, metrics::VARCHAR AS metrics, created_at, model
FROM predictors WHERE version = $version;

-- name: predictions_with_results
-- A run's predictions beside its real output lengths (finished requests without error): the
-- prediction the schedule used (after the probe's calibration, if one ran), the predictor's
-- own, and whether the request was one of the probe's.
-- Parameters: $run_id.
SELECT r.output_tokens, pr.planned_tokens AS predicted_tokens, pr.predictor,
       pr.predicted_tokens AS uncalibrated_tokens, q.request_id IS NOT NULL AS in_probe
FROM planned_lengths pr
JOIN results r USING (run_id, request_id)
LEFT JOIN probe_requests q USING (run_id, request_id)
WHERE pr.run_id = $run_id AND r.error IS NULL AND r.output_tokens IS NOT NULL
ORDER BY pr.request_id;

-- name: run_k_bins
-- The number of length bins a run was scheduled with (NULL if unknown).
-- Parameters: $run_id.
SELECT try_cast(json_extract_string(config, '$.k_bins') AS INTEGER) FROM runs WHERE run_id = $run_id;

-- name: choice_of_run
-- Which predictor made a run's predictions, and why (the predict stage's words).
-- Parameters: $run_id.
SELECT predictor, reason FROM predictor_choices WHERE run_id = $run_id;

-- name: probe_choice_of_run
-- Whether the run's in-job probe ran, and why (the probe stage's words).
-- Parameters: $run_id.
SELECT size, reason FROM probe_choices WHERE run_id = $run_id;
