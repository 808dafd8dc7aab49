-- name: throughput_points
-- The run's generation over time, one row per checkpoint (results are stamped when their
-- checkpoint is written, so this is as fine as the checkpoints): seconds since the first
-- request was handed to vLLM, and the requests and tokens that checkpoint stored.
-- Failed requests are left out. Parameters: $run_id.
WITH finished AS (
    SELECT finished_at, prompt_tokens, output_tokens, latency_s
    FROM results
    WHERE run_id = $run_id AND error IS NULL AND finished_at IS NOT NULL
),
start AS (SELECT min(epoch(finished_at) - coalesce(latency_s, 0)) AS t0 FROM finished)
SELECT epoch(finished_at) - t0 AS seconds, count(*) AS requests,
       sum(prompt_tokens)::BIGINT AS prompt_tokens, sum(output_tokens)::BIGINT AS output_tokens
FROM finished, start
GROUP BY finished_at, t0
ORDER BY seconds;

-- name: request_finishes
-- The newest generation attempt's finished requests, as they finished: seconds from the
-- attempt's start (vLLM's own finish times, finer than the checkpoints) and output tokens.
-- The throughput chart of a run stored in a single checkpoint draws these. Failed requests
-- are left out. Parameters: $run_id.
WITH newest AS (SELECT max(attempt) AS attempt FROM results WHERE run_id = $run_id)
SELECT finished_s AS seconds, count(*) AS requests, sum(output_tokens)::BIGINT AS output_tokens
FROM results JOIN newest USING (attempt)
WHERE run_id = $run_id AND error IS NULL AND finished_s IS NOT NULL
GROUP BY finished_s
ORDER BY seconds;

-- name: bin_lengths
-- Per length bin of the run's schedule (bin 0: the longest predicted outputs): the requests,
-- their mean predicted and mean real output tokens. Failed requests are left out.
-- Parameters: $run_id.
SELECT s.bin, count(*) AS requests, avg(p.planned_tokens) AS predicted_mean,
       avg(r.output_tokens) AS output_mean, sum(r.output_tokens)::BIGINT AS output_tokens
FROM schedule s
JOIN results r USING (run_id, request_id)
LEFT JOIN planned_lengths p USING (run_id, request_id)
WHERE s.run_id = $run_id AND r.error IS NULL
GROUP BY s.bin
ORDER BY s.bin;
