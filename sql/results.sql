-- name: latest_run
-- The run started last (the default of batchbin.results and batchbin.rejects).
SELECT run_id FROM runs ORDER BY started_at DESC NULLS LAST, created_at DESC LIMIT 1;

-- name: results_of_run
-- Every result of a run with its input row and id, in input order (batchbin.results).
SELECT run_id, row_number, id, input, output_text, finish_reason, prompt_tokens, output_tokens, cached_tokens, error,
       latency_s, predicted_tokens, metadata::VARCHAR AS metadata, reused_from
FROM completions
WHERE run_id = $run_id
ORDER BY row_number;

-- name: rejects_of_run
-- The rows of a run's input that were rejected, with the field and the reason (batchbin.rejects).
SELECT run_id, row_number, request_id AS id, field, reason, raw
FROM rejects
WHERE run_id = $run_id
ORDER BY row_number;

-- name: all_runs
-- One row per run, newest first (batchbin.runs): status, times, counts and tokens.
SELECT run_id, status, input_path, model, started_at, finished_at, requests, rejects, completed, errors, output_tokens,
       answered_from_earlier_runs
FROM run_summary
ORDER BY started_at DESC NULLS LAST, created_at DESC;
