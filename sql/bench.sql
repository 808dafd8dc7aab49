-- name: create_tables
-- The benchmark's own table (bench/report.py stores one row per variant); re-running it is harmless.
CREATE TABLE IF NOT EXISTS bench_runs (
    bench_id VARCHAR,
    workload VARCHAR,
    variant VARCHAR,
    metrics JSON,
    created_at TIMESTAMP DEFAULT current_timestamp
);

-- name: store_oracle_lengths
-- A baseline's real output lengths (registered as `oracle_lengths`) as results of a source run,
-- so the oracle variant's predictor ("oracle:<run_id>") reads them like any finished run.
DELETE FROM results WHERE run_id = $run_id;
INSERT INTO results (run_id, request_id, output_tokens, finish_reason, finished_at)
SELECT $run_id, request_id, output_tokens, 'oracle', current_timestamp FROM oracle_lengths;

-- name: result_lengths
SELECT request_id, output_tokens FROM results WHERE run_id = $run_id;

-- name: run_engine
SELECT engine::VARCHAR FROM runs WHERE run_id = $run_id;

-- name: store_bench_run
INSERT INTO bench_runs (bench_id, workload, variant, metrics) VALUES ($bench_id, $workload, $variant, $metrics);

-- name: predictions_of_run
-- A run's predicted output lengths, as a `--predictor file:` file takes them (id, predicted_tokens).
SELECT request_id AS id, predicted_tokens FROM predictions WHERE run_id = $run_id ORDER BY request_id;

-- name: engine_trace
-- The totals of a run's engine steps, every generation attempt (the probe's phase included), as
-- bench.harness.engine_trace counts them for the plain vLLM variants. Parameters: $run_id.
SELECT count(*) AS steps, sum(preempted)::BIGINT AS preempted, sum(prefill_tokens)::BIGINT AS prefill_tokens,
       sum(decode_tokens)::BIGINT AS decode_tokens, round(avg(running), 1)::DOUBLE AS mean_running,
       round(sum(duration_s), 3)::DOUBLE AS steps_s
FROM engine_steps
WHERE run_id = $run_id
HAVING count(*) > 0;

-- name: answered_how
-- How each request of a run got its answer: 'reused' (an earlier run's, results.reused_from),
-- 'copied' (an identical request of the run, schedule.duplicate_of) or 'generated'. The
-- incremental benchmark checks that only new and changed rows were generated.
-- Parameters: $run_id.
SELECT r.request_id,
       CASE WHEN r.reused_from IS NOT NULL THEN 'reused'
            WHEN s.duplicate_of IS NOT NULL THEN 'copied'
            ELSE 'generated' END AS how
FROM results r
LEFT JOIN schedule s USING (run_id, request_id)
WHERE r.run_id = $run_id;
