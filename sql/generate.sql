-- name: work_in_order
-- What generation still has to do for a run, in schedule order: requests without a result,
-- the next $limit after schedule position $after (-1: from the start), with the output length
-- the schedule assumed (calibrated by the probe where one ran; NULL without a prediction).
SELECT s.request_id, s.batch, s.position, t.token_ids, p.max_tokens, p.min_tokens, p.ignore_eos, p.temperature,
       p.top_p, p.seed, p.stop, p.response_format::VARCHAR AS response_format,
       pr.planned_tokens AS predicted_tokens
FROM schedule s
JOIN tokens t USING (run_id, request_id)
JOIN prompts p USING (run_id, request_id)
LEFT JOIN planned_lengths pr USING (run_id, request_id)
LEFT JOIN results r USING (run_id, request_id)
WHERE s.run_id = $run_id AND r.request_id IS NULL AND s.position > $after AND s.duplicate_of IS NULL
ORDER BY s.position
LIMIT $limit;

-- name: count_work
-- How many requests of a run still have no result (the size of `work_in_order`), and the
-- number of the generation attempt about to start (1 for the first; a resumed run counts on).
SELECT count(*),
       greatest((SELECT coalesce(max(attempt), 0) FROM engine_steps WHERE run_id = $run_id),
                (SELECT coalesce(max(attempt), 0) FROM results WHERE run_id = $run_id)) + 1
FROM schedule s
LEFT JOIN results r USING (run_id, request_id)
WHERE s.run_id = $run_id AND r.request_id IS NULL AND s.duplicate_of IS NULL;

-- name: insert_results
-- Store a checkpoint of finished requests registered as `finished_batch`. A request that
-- already has a result keeps it (re-runs never duplicate).
INSERT INTO results (run_id, request_id, output_text, prompt_tokens, output_tokens, cached_tokens,
                     finish_reason, error, batch, latency_s, finished_at, attempt, finished_s)
SELECT $run_id, request_id, output_text, prompt_tokens, output_tokens, cached_tokens,
       finish_reason, error, batch, latency_s, current_timestamp, $attempt, finished_s
FROM finished_batch
ON CONFLICT DO NOTHING;

-- name: copy_duplicates
-- Give every request that duplicates another (schedule.duplicate_of) a copy of that one's
-- result, once it has one: the same text and tokens, no prefill of its own (its prompt counts
-- as cached). $leaders: the ids of one checkpoint, to copy theirs only (each checkpoint does);
-- NULL copies every one (generation starts so: a stop between a checkpoint and its copies leaves
-- none behind). A copy of an answer an earlier run gave names that run too (reused_from).
-- Parameters: $run_id, $leaders.
INSERT INTO results (run_id, request_id, output_text, prompt_tokens, output_tokens, cached_tokens,
                     finish_reason, error, batch, latency_s, finished_at, attempt, finished_s, reused_from)
SELECT s.run_id, s.request_id, r.output_text, r.prompt_tokens, r.output_tokens,
       CASE WHEN r.reused_from IS NULL THEN r.prompt_tokens ELSE 0 END,
       r.finish_reason, r.error, s.batch, r.latency_s, r.finished_at, r.attempt, r.finished_s, r.reused_from
FROM schedule s
JOIN results r ON r.run_id = s.run_id AND r.request_id = s.duplicate_of
WHERE s.run_id = $run_id AND s.duplicate_of IS NOT NULL
  AND ($leaders::VARCHAR[] IS NULL OR list_contains($leaders::VARCHAR[], s.duplicate_of))
ON CONFLICT DO NOTHING;

-- name: insert_steps
-- Store the engine steps registered as `engine_step_rows` (tasks/generate.py STEP_SCHEMA) of
-- generation attempt $attempt.
INSERT INTO engine_steps (run_id, attempt, step, started_s, duration_s, running, waiting, prefill_tokens,
                          decode_tokens, context_tokens, kv_cache_usage, preempted)
SELECT $run_id, $attempt, step, started_s, duration_s, running, waiting, prefill_tokens, decode_tokens,
       context_tokens, kv_cache_usage, preempted
FROM engine_step_rows
ON CONFLICT DO NOTHING;

-- name: count_results
SELECT count(*) AS results, count(*) FILTER (WHERE error IS NULL) AS ok FROM results WHERE run_id = $run_id;

-- name: clear_errors
-- Forget the results of a run that ended in an error, so they are generated again
-- (--retry-errors); returns how many.
DELETE FROM results WHERE run_id = $run_id AND error IS NOT NULL RETURNING request_id;

-- name: probe_without_result
-- The run's probe requests (probe_requests) that have no result yet: what the first phase of a
-- probed generation waits for.
-- Parameters: $run_id.
SELECT q.request_id
FROM probe_requests q
LEFT JOIN results r USING (run_id, request_id)
WHERE q.run_id = $run_id AND r.request_id IS NULL;
