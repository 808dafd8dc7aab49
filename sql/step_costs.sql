-- name: run_engine
-- A run's engine settings and model: the key of the step-cost fit its steps feed.
-- Parameters: $run_id.
SELECT engine::VARCHAR AS engine, model FROM runs WHERE run_id = $run_id;

-- name: run_steps
-- A run's measured engine steps for fitting, at most $keep of them spread evenly over the run
-- (steps without a context count, where the engine core ran in its own process, are left out),
-- with the share of the KV cache in use after each. Parameters: $run_id, $keep.
SELECT prefill_tokens, decode_tokens, context_tokens, kv_cache_usage, duration_s
FROM (SELECT *, row_number() OVER (ORDER BY attempt, step) AS i, count(*) OVER () AS n
      FROM engine_steps
      WHERE run_id = $run_id AND duration_s > 0 AND context_tokens IS NOT NULL)
WHERE (i - 1) % greatest(1, ceil(n / $keep)::BIGINT) = 0
ORDER BY i;

-- name: has_fits
-- Whether the database has the step_cost_fits table (an older file opened read-only may not).
SELECT count(*) > 0 FROM duckdb_tables() WHERE database_name = current_database() AND table_name = 'step_cost_fits';

-- name: get_fit
-- The step-cost fit kept for one key. Parameters: $fit_key.
SELECT fit_key, machine, dtype, enforce_eager, model, intercept_s, per_prefill_token_s, per_decode_token_s,
       per_context_token_s, coalesce(per_kv_token_s, 0) AS per_kv_token_s, run_ids, steps,
       fitted_on::VARCHAR AS fitted_on, updated_at::VARCHAR AS updated_at
FROM step_cost_fits WHERE fit_key = $fit_key;

-- name: put_fit
-- Keep (or replace) the fit of one key.
-- Parameters: $fit_key, $machine, $dtype, $enforce_eager, $model, $intercept_s, $per_prefill_token_s,
-- $per_decode_token_s, $per_context_token_s, $per_kv_token_s, $run_ids, $steps, $fitted_on.
INSERT OR REPLACE INTO step_cost_fits (fit_key, machine, dtype, enforce_eager, model, intercept_s,
                                       per_prefill_token_s, per_decode_token_s, per_context_token_s, per_kv_token_s,
                                       run_ids, steps, fitted_on, updated_at)
VALUES ($fit_key, $machine, $dtype, $enforce_eager, $model, $intercept_s, $per_prefill_token_s, $per_decode_token_s,
        $per_context_token_s, $per_kv_token_s, $run_ids, $steps, $fitted_on::JSON, current_timestamp);

-- name: runs_with_steps
-- The runs that recorded engine steps with their context counts (those a fit can use), oldest
-- first, with their engine settings and model: `batchbin simulate fit` refits each one's key.
SELECT r.run_id, r.engine::VARCHAR AS engine, r.model
FROM runs r
WHERE EXISTS (SELECT 1 FROM engine_steps s
              WHERE s.run_id = r.run_id AND s.duration_s > 0 AND s.context_tokens IS NOT NULL)
ORDER BY r.created_at, r.run_id;
