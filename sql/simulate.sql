-- name: run_settings
-- A run's model, job parameters and engine settings (the simulator's engine limits come from
-- them). Parameters: $run_id.
SELECT run_id, model, config::VARCHAR AS config, engine::VARCHAR AS engine, status FROM runs WHERE run_id = $run_id;

-- name: newest_run
-- The newest run that has results (what `batchbin simulate run` takes without --run-id).
SELECT r.run_id FROM runs r WHERE EXISTS (SELECT 1 FROM results x WHERE x.run_id = r.run_id)
ORDER BY r.created_at DESC LIMIT 1;

-- name: measured_generation
-- What the run's report measured: seconds of generation, preemptions, prefix-cache hits.
-- Parameters: $run_id.
SELECT try_cast(report->>'generate_s' AS DOUBLE) AS generate_s,
       try_cast(report->>'preemptions' AS BIGINT) AS preemptions,
       try_cast(report->>'cached_tokens' AS BIGINT) AS cached_tokens
FROM run_reports WHERE run_id = $run_id;

-- name: copy_prompts
-- The columns of a run's rows the schedule and the simulator read, for a copy in memory (one
-- query per table: runs, prompts, tokens, prompt_groups, predictions, results, schedule,
-- schedule_choices; the prompts' sampling columns tell identical requests apart).
-- Parameters: $run_id.
SELECT run_id, request_id, row_number, max_tokens, min_tokens, ignore_eos, temperature, stop,
       response_format::VARCHAR AS response_format
FROM prompts WHERE run_id = $run_id;

-- name: copy_runs
SELECT run_id, model, config::VARCHAR AS config, engine::VARCHAR AS engine FROM runs WHERE run_id = $run_id;

-- name: copy_tokens
SELECT run_id, request_id, token_ids, prompt_tokens FROM tokens WHERE run_id = $run_id;

-- name: copy_prompt_groups
SELECT run_id, request_id, group_id, sort_rank, lcp_prev FROM prompt_groups WHERE run_id = $run_id;

-- name: copy_predictions
SELECT run_id, request_id, predicted_tokens, predictor, calibrated_tokens FROM predictions WHERE run_id = $run_id;

-- name: copy_results
SELECT run_id, request_id, output_tokens, cached_tokens, error, reused_from FROM results WHERE run_id = $run_id;

-- name: copy_schedule
SELECT run_id, request_id, bin, batch, position, duplicate_of FROM schedule WHERE run_id = $run_id;

-- name: copy_schedule_choices
SELECT run_id, requested, used, reason FROM schedule_choices WHERE run_id = $run_id;

-- name: paste_prompts
-- The copied rows into the in-memory database (the registered Arrow table `incoming`).
INSERT INTO prompts (run_id, request_id, row_number, max_tokens, min_tokens, ignore_eos, temperature, stop,
                     response_format)
SELECT run_id, request_id, row_number, max_tokens, min_tokens, ignore_eos, temperature, stop,
       response_format::JSON
FROM incoming;

-- name: paste_runs
INSERT INTO runs (run_id, model, config, engine) SELECT run_id, model, config::JSON, engine::JSON FROM incoming;

-- name: paste_tokens
INSERT INTO tokens (run_id, request_id, token_ids, prompt_tokens)
SELECT run_id, request_id, token_ids, prompt_tokens FROM incoming;

-- name: paste_prompt_groups
INSERT INTO prompt_groups (run_id, request_id, group_id, sort_rank, lcp_prev)
SELECT run_id, request_id, group_id, sort_rank, lcp_prev FROM incoming;

-- name: paste_predictions
INSERT INTO predictions (run_id, request_id, predicted_tokens, predictor, calibrated_tokens)
SELECT run_id, request_id, predicted_tokens, predictor, calibrated_tokens FROM incoming;

-- name: paste_results
INSERT INTO results (run_id, request_id, output_tokens, cached_tokens, error, reused_from)
SELECT run_id, request_id, output_tokens, cached_tokens, error, reused_from FROM incoming;

-- name: paste_schedule
INSERT INTO schedule (run_id, request_id, bin, batch, position, duplicate_of)
SELECT run_id, request_id, bin, batch, position, duplicate_of FROM incoming;

-- name: paste_schedule_choices
INSERT INTO schedule_choices (run_id, requested, used, reason)
SELECT run_id, requested, used, reason FROM incoming;

-- name: requests_in_order
-- The run's requests in schedule order with what the simulator needs: the prompt's token ids,
-- the real output length (NULL without a result; requests that failed are left out), the
-- predicted one (calibrated by the probe where one ran) and the request's max_tokens (or the
-- job's $max_tokens). A request that
-- repeats an earlier one (duplicate_of) or was answered from an earlier run (reused_from) is
-- not generated, so it is left out.
-- Parameters: $run_id, $max_tokens.
SELECT t.request_id, t.token_ids, t.prompt_tokens,
       r.output_tokens AS real_tokens,
       pr.planned_tokens AS predicted_tokens,
       coalesce(p.max_tokens, $max_tokens) AS max_tokens,
       s.position
FROM schedule s
JOIN tokens t USING (run_id, request_id)
JOIN prompts p USING (run_id, request_id)
LEFT JOIN planned_lengths pr USING (run_id, request_id)
LEFT JOIN results r USING (run_id, request_id)
WHERE s.run_id = $run_id AND r.error IS NULL AND s.duplicate_of IS NULL AND r.reused_from IS NULL
ORDER BY s.position;

-- name: schedule_choice
-- The order a run's schedule was built in, and why. Parameters: $run_id.
SELECT requested, used, reason FROM schedule_choices WHERE run_id = $run_id;

-- name: prefix_stats
-- A run's prefix reuse as the group_prefixes stage found it. Parameters: $run_id.
SELECT prompts, prompt_tokens, distinct_tokens, ideal_cached_tokens, groups FROM run_prefix_stats WHERE run_id = $run_id;

-- name: prediction_stats
-- Predicted output tokens of a run: total, mean, median, 90th percentile, and the predictor.
-- Parameters: $run_id.
SELECT count(*) AS requests, sum(predicted_tokens) AS total, avg(predicted_tokens) AS mean,
       median(predicted_tokens) AS median, quantile_cont(predicted_tokens, 0.9) AS p90,
       string_agg(DISTINCT predictor, ', ') AS predictor
FROM predictions WHERE run_id = $run_id;

-- name: has_engine_steps
-- Whether the database has the engine_steps table (step traces of generation).
SELECT count(*) > 0 FROM duckdb_tables() WHERE database_name = current_database() AND table_name = 'engine_steps';

-- name: engine_steps
-- Measured engine steps of finished runs with their engine settings, for fitting the step
-- cost (only runs whose engine matches $dtype and $enforce_eager; $run_ids empty: every run).
SELECT s.run_id, s.step, s.duration_s, s.running, s.prefill_tokens, s.decode_tokens, s.context_tokens
FROM engine_steps s JOIN runs r USING (run_id)
WHERE r.engine->>'dtype' = $dtype
  AND (r.engine->>'enforce_eager')::BOOLEAN = $enforce_eager
  AND (len($run_ids) = 0 OR list_contains($run_ids, s.run_id))
  AND s.duration_s > 0
ORDER BY s.run_id, s.attempt, s.step;

-- name: runs_with_steps
-- The runs that have a step trace, with their engine settings and measured generation seconds.
SELECT r.run_id, r.engine::VARCHAR AS engine, count(*) AS steps, sum(s.duration_s) AS step_s,
       any_value(try_cast(rr.report->>'generate_s' AS DOUBLE)) AS generate_s
FROM engine_steps s JOIN runs r USING (run_id) LEFT JOIN run_reports rr USING (run_id)
GROUP BY r.run_id, r.engine::VARCHAR, r.created_at ORDER BY r.created_at;
