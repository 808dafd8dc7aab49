-- Answers reused across runs (tasks/reuse.py): each request's reuse key, and the stored answer
-- of any earlier run's request with the same key copied into this run's results.

-- name: requests_to_key
-- A page of the run's requests (after request id $after, $limit of them) with their token ids
-- and output parameters, as generate.work_in_order reads them.
-- Parameters: $run_id, $after, $limit.
SELECT t.request_id, t.token_ids, p.max_tokens, p.min_tokens, p.ignore_eos, p.temperature, p.top_p, p.seed, p.stop,
       p.response_format::VARCHAR AS response_format
FROM tokens t
JOIN prompts p USING (run_id, request_id)
WHERE t.run_id = $run_id AND t.request_id > $after
ORDER BY t.request_id
LIMIT $limit;

-- name: clear_keys
-- Forget a run's keys and the answers it took from earlier runs, before both are found again
-- (the answers it generated itself stay). Parameters: $run_id.
DELETE FROM request_keys WHERE run_id = $run_id;
DELETE FROM results WHERE run_id = $run_id AND reused_from IS NOT NULL;

-- name: insert_keys
-- Store the keys registered as `incoming_keys` (request_id, reuse_key). Parameters: $run_id.
INSERT INTO request_keys (run_id, request_id, reuse_key)
SELECT $run_id, request_id, reuse_key FROM incoming_keys;

-- name: set_fingerprint
-- The fingerprint of the model the run uses (NULL: none could be made).
-- Parameters: $run_id, $fingerprint.
UPDATE runs SET model_fingerprint = $fingerprint WHERE run_id = $run_id;

-- name: reuse_answers
-- Answer every request of the run that has no result yet and whose key another run's request
-- has, with that request's stored result (never one that ended in an error). Where several
-- have it, the answer to the request of the same id (an unchanged row keeps its own answer),
-- else the newest. `reused_from` names the run that generated it (an answer
-- reused twice still names its first run); it was not generated now, so no prompt token is
-- counted as cached and it has no batch, latency or attempt. Parameters: $run_id.
INSERT INTO results (run_id, request_id, output_text, prompt_tokens, output_tokens, cached_tokens, finish_reason,
                     error, batch, latency_s, finished_at, attempt, finished_s, reused_from)
SELECT $run_id, mine.request_id, src.output_text, src.prompt_tokens, src.output_tokens, 0, src.finish_reason,
       NULL, NULL, NULL, current_timestamp, NULL, NULL, coalesce(src.reused_from, src.run_id)
FROM request_keys mine
JOIN request_keys k ON k.reuse_key = mine.reuse_key AND k.run_id <> mine.run_id
JOIN results src ON src.run_id = k.run_id AND src.request_id = k.request_id
LEFT JOIN results r ON r.run_id = mine.run_id AND r.request_id = mine.request_id
WHERE mine.run_id = $run_id AND mine.reuse_key IS NOT NULL AND r.request_id IS NULL
  AND src.error IS NULL AND src.output_text IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY mine.request_id
                           ORDER BY k.request_id = mine.request_id DESC, src.finished_at DESC, k.run_id, k.request_id) = 1
ON CONFLICT DO NOTHING;

-- name: count_reused
-- How many of the run's results were answered from earlier runs. Parameters: $run_id.
SELECT count(*) FROM results WHERE run_id = $run_id AND reused_from IS NOT NULL;
