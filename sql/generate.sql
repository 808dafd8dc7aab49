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
