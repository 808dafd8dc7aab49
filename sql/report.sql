-- name: summary_of_run
SELECT * FROM run_summary WHERE run_id = $run_id;

-- name: export_results
-- The output file: the run's results in input order, keyed by the user's ids, written by DuckDB
-- as the rows stream (a large run need not fit in memory); $format: json (one object per line)
-- or parquet. Parameters: $run_id, $path, $format.
COPY (
    SELECT id, output_text AS output, finish_reason, prompt_tokens, output_tokens, cached_tokens, error,
           metadata::VARCHAR AS metadata
    FROM completions WHERE run_id = $run_id ORDER BY row_number
) TO $path (FORMAT $format);

-- name: export_openai_rows
-- The rows of an OpenAI batch output file, in input order: every result, and every rejected
-- input row (its reason as the error), so each line of the input gets one line back.
SELECT c.run_id, c.row_number, c.id AS custom_id, p.messages IS NOT NULL AS is_chat, c.output_text,
       c.finish_reason, c.prompt_tokens, c.output_tokens, c.error, false AS rejected
FROM completions c JOIN prompts p ON p.run_id = c.run_id AND p.request_id = c.id
WHERE c.run_id = $run_id
UNION ALL
SELECT run_id, row_number, request_id, NULL, NULL, NULL, NULL, NULL, reason, true
FROM rejects WHERE run_id = $run_id
ORDER BY row_number;

-- name: finished_now
-- When the run finished, for its report: now, as the runs table's finished_at is stamped (the
-- flow marks the run finished right after its report and output file are written).
SELECT current_timestamp::TIMESTAMP;

-- name: store_report
INSERT OR REPLACE INTO run_reports (run_id, report, created_at) VALUES ($run_id, $report, current_timestamp);

-- name: schedule_choice
-- The order the run's schedule used and why (the schedule stage records it).
SELECT used, reason FROM schedule_choices WHERE run_id = $run_id;

-- name: example_query
-- The query `batchbin run` suggests a user tries on its results (one line: it is printed).
select id, output_tokens, finish_reason, left(output_text, 60) as output from completions limit 5

-- name: schedule_trace
-- What the schedule did in the run's newest generation attempt, from its engine steps: steps,
-- seconds in steps, the tail (seconds of steps that ran fewer than $half_seqs sequences, half
-- of max_num_seqs: the engine under-used, typically long requests finishing alone at the end),
-- the mean sequences per step, KV-cache use (mean over steps and peak) and preemptions.
-- No row when the run has no steps (an engine core in its own process records none).
-- Parameters: $run_id, $half_seqs.
WITH newest AS (SELECT max(attempt) AS attempt FROM engine_steps WHERE run_id = $run_id)
SELECT count(*) AS steps,
       round(sum(duration_s), 2) AS step_s,
       round(coalesce(sum(duration_s) FILTER (WHERE running < $half_seqs), 0), 2) AS tail_s,
       round(avg(running), 1) AS mean_running,
       round(avg(kv_cache_usage), 3) AS mean_kv_cache_usage,
       round(max(kv_cache_usage), 3) AS peak_kv_cache_usage,
       sum(preempted)::BIGINT AS preempted
FROM engine_steps JOIN newest USING (attempt)
WHERE run_id = $run_id
HAVING count(*) > 0;

-- name: bins_of_run
-- Per length bin of the run: requests, predicted and real output tokens, and when (seconds
-- from the start of the newest generation attempt) its first and last request finished.
-- Parameters: $run_id.
WITH newest AS (SELECT max(attempt) AS attempt FROM results WHERE run_id = $run_id)
SELECT s.bin, count(*) AS requests,
       round(sum(pr.planned_tokens))::BIGINT AS predicted_tokens,
       sum(r.output_tokens)::BIGINT AS output_tokens,
       round(min(r.finished_s) FILTER (WHERE r.attempt = (SELECT attempt FROM newest)), 2) AS first_finished_s,
       round(max(r.finished_s) FILTER (WHERE r.attempt = (SELECT attempt FROM newest)), 2) AS last_finished_s
FROM schedule s
JOIN results r USING (run_id, request_id)
LEFT JOIN planned_lengths pr USING (run_id, request_id)
WHERE s.run_id = $run_id
GROUP BY s.bin
ORDER BY s.bin;

-- name: duplicate_count
-- Requests of the run answered with the result of an identical earlier one (schedule.duplicate_of).
SELECT count(*) FROM schedule WHERE run_id = $run_id AND duplicate_of IS NOT NULL;

-- name: probe_of_run
-- What the run's in-job probe did and taught (no row: no probe ran).
-- Parameters: $run_id.
SELECT requests, templates, round(scale, 4) AS scale, round(shift, 4) AS shift, generate_s
FROM probes WHERE run_id = $run_id;
