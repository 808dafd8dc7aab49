-- name: latest_run
-- The run started last (the default of batchbin.results and batchbin.rejects).
SELECT run_id FROM runs ORDER BY started_at DESC NULLS LAST, created_at DESC LIMIT 1;

-- name: results_of_run
-- Every result of a run with its input row and id, in input order (batchbin.results).
SELECT r.run_id, p.row_number, r.request_id AS id, coalesce(p.prompt, p.messages::VARCHAR) AS input,
       r.output_text, r.finish_reason, r.prompt_tokens, r.output_tokens, r.cached_tokens, r.error,
       r.latency_s, coalesce(pr.calibrated_tokens, pr.predicted_tokens) AS predicted_tokens, p.metadata::VARCHAR AS metadata
FROM results r
JOIN prompts p USING (run_id, request_id)
LEFT JOIN predictions pr USING (run_id, request_id)
WHERE r.run_id = $run_id
ORDER BY p.row_number;

-- name: rejects_of_run
-- The rows of a run's input that were rejected, with the field and the reason (batchbin.rejects).
SELECT run_id, row_number, request_id AS id, field, reason, raw
FROM rejects
WHERE run_id = $run_id
ORDER BY row_number;

-- name: all_runs
-- One row per run, newest first (batchbin.runs): status, times, counts and tokens.
WITH request_counts AS (SELECT run_id, count(*) AS requests FROM prompts GROUP BY run_id),
reject_counts AS (SELECT run_id, count(*) AS rejects FROM rejects GROUP BY run_id),
result_totals AS (
    SELECT run_id,
           count(*) FILTER (WHERE error IS NULL) AS completed,
           count(*) FILTER (WHERE error IS NOT NULL) AS errors,
           sum(output_tokens)::BIGINT AS output_tokens
    FROM results
    GROUP BY run_id
)
SELECT ru.run_id, ru.status, ru.input_path, ru.model, ru.started_at, ru.finished_at,
       coalesce(q.requests, 0) AS requests, coalesce(j.rejects, 0) AS rejects,
       coalesce(t.completed, 0) AS completed, coalesce(t.errors, 0) AS errors, t.output_tokens
FROM runs ru
LEFT JOIN request_counts q USING (run_id)
LEFT JOIN reject_counts j USING (run_id)
LEFT JOIN result_totals t USING (run_id)
ORDER BY ru.started_at DESC NULLS LAST, ru.created_at DESC;
