-- name: work_in_order
-- What generation still has to do for a run, in schedule order: requests without a result,
-- the next $limit after schedule position $after (-1: from the start).
SELECT s.request_id, s.batch, s.position, t.token_ids, p.max_tokens, p.temperature, p.top_p, p.seed, p.stop,
       p.response_format::VARCHAR AS response_format
FROM schedule s
JOIN tokens t USING (run_id, request_id)
JOIN prompts p USING (run_id, request_id)
LEFT JOIN results r USING (run_id, request_id)
WHERE s.run_id = $run_id AND r.request_id IS NULL AND s.position > $after
ORDER BY s.position
LIMIT $limit;

-- name: count_work
-- How many requests of a run still have no result (the size of `work_in_order`).
SELECT count(*)
FROM schedule s
LEFT JOIN results r USING (run_id, request_id)
WHERE s.run_id = $run_id AND r.request_id IS NULL;

-- name: insert_results
-- Store a checkpoint of finished requests registered as `finished_batch`. A request that
-- already has a result keeps it (re-runs never duplicate).
INSERT INTO results (run_id, request_id, output_text, prompt_tokens, output_tokens, cached_tokens,
                     finish_reason, error, batch, latency_s, finished_at)
SELECT $run_id, request_id, output_text, prompt_tokens, output_tokens, cached_tokens,
       finish_reason, error, batch, latency_s, current_timestamp
FROM finished_batch
ON CONFLICT DO NOTHING;

-- name: count_results
SELECT count(*) AS results, count(*) FILTER (WHERE error IS NULL) AS ok FROM results WHERE run_id = $run_id;

-- name: clear_errors
-- Forget the results of a run that ended in an error, so they are generated again
-- (--retry-errors); returns how many.
DELETE FROM results WHERE run_id = $run_id AND error IS NOT NULL RETURNING request_id;
