-- name: create_tables
-- The whole BatchBin schema. Every row belongs to a run; re-running it is harmless.
-- (The benchmark's table, bench_runs, is created by bench.create_tables in sql/bench.sql.)
-- Bump meta.schema_version (batchbin/store/db.py SCHEMA_VERSION) when a table changes in a way
-- older databases cannot follow; an added column is an ALTER ... IF NOT EXISTS instead.
CREATE TABLE IF NOT EXISTS meta (
    key VARCHAR PRIMARY KEY,
    value VARCHAR
);

CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    input_path VARCHAR,
    input_fingerprint VARCHAR,
    model VARCHAR,
    config JSON,            -- every flow parameter
    engine JSON,            -- the vLLM engine settings actually used
    status VARCHAR,         -- created | running | finished | failed
    created_at TIMESTAMP DEFAULT current_timestamp,
    started_at TIMESTAMP,
    finished_at TIMESTAMP
);

CREATE TABLE IF NOT EXISTS stages (
    run_id VARCHAR,
    stage VARCHAR,
    params VARCHAR,         -- hash of the stage's parameters
    rows BIGINT,
    finished_at TIMESTAMP,
    PRIMARY KEY (run_id, stage)
);

CREATE TABLE IF NOT EXISTS prompts (
    run_id VARCHAR,
    request_id VARCHAR,
    row_number INTEGER,     -- 1-based row of the input file
    prompt VARCHAR,         -- plain prompt text, or NULL for chat
    messages JSON,          -- chat messages, or NULL for plain prompts
    max_tokens INTEGER,
    temperature DOUBLE,
    top_p DOUBLE,
    seed INTEGER,
    stop VARCHAR[],
    metadata JSON,
    response_format JSON,   -- {"type": "json_object"} or {"type": "json_schema", ...}: constrained output
    PRIMARY KEY (run_id, request_id)
);
-- added after schema version 1 shipped: databases created before get the column, nothing else changes
ALTER TABLE prompts ADD COLUMN IF NOT EXISTS response_format JSON;
ALTER TABLE prompts ADD COLUMN IF NOT EXISTS min_tokens INTEGER;   -- vLLM's min_tokens (no EOS before)
ALTER TABLE prompts ADD COLUMN IF NOT EXISTS ignore_eos BOOLEAN;   -- vLLM's ignore_eos (run to max_tokens)

CREATE TABLE IF NOT EXISTS tokens (
    run_id VARCHAR,
    request_id VARCHAR,
    token_ids INTEGER[],    -- exactly what vLLM receives (chat template applied)
    prompt_tokens INTEGER,
    PRIMARY KEY (run_id, request_id)
);

CREATE TABLE IF NOT EXISTS rejects (
    run_id VARCHAR,
    row_number INTEGER,
    request_id VARCHAR,
    field VARCHAR,
    reason VARCHAR,
    raw VARCHAR
);

CREATE TABLE IF NOT EXISTS prompt_groups (
    run_id VARCHAR,
    request_id VARCHAR,
    group_id INTEGER,
    sort_rank INTEGER,      -- rank in lexicographic token order
    lcp_prev INTEGER,       -- longest common prefix with the previous prompt in that order
    PRIMARY KEY (run_id, request_id)
);

CREATE TABLE IF NOT EXISTS prefix_groups (
    run_id VARCHAR,
    group_id INTEGER,
    members INTEGER,
    prefix_tokens INTEGER,  -- tokens shared by every member
    prompt_tokens BIGINT,
    distinct_tokens BIGINT, -- prefill work of the group with perfect reuse
    PRIMARY KEY (run_id, group_id)
);

CREATE TABLE IF NOT EXISTS run_prefix_stats (
    run_id VARCHAR PRIMARY KEY,
    prompts BIGINT,
    prompt_tokens BIGINT,
    distinct_tokens BIGINT,
    ideal_cached_tokens BIGINT,  -- prompt tokens that perfect prefix reuse skips
    groups BIGINT
);

CREATE TABLE IF NOT EXISTS predictions (
    run_id VARCHAR,
    request_id VARCHAR,
    predicted_tokens DOUBLE,
    predictor VARCHAR,
    PRIMARY KEY (run_id, request_id)
);

-- the prediction after the in-job probe's calibration (predictors/probe.py); NULL without a probe.
-- The schedule reads planned_lengths (below).
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS calibrated_tokens DOUBLE;

-- The in-job probe: the requests that ran first to calibrate the predictor, and what it taught.
CREATE TABLE IF NOT EXISTS probe_requests (
    run_id VARCHAR,
    request_id VARCHAR,
    template_group INTEGER,
    PRIMARY KEY (run_id, request_id)
);

CREATE TABLE IF NOT EXISTS probes (
    run_id VARCHAR PRIMARY KEY,
    requests INTEGER,       -- probe requests with a result
    templates INTEGER,      -- template groups among them
    scale DOUBLE,           -- log1p(real) ~ scale * log1p(predicted) + shift (+ a template's offset)
    shift DOUBLE,
    generate_s DOUBLE,      -- seconds until the probe had finished (the engine kept full with the job meanwhile)
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS predictors (
    version VARCHAR PRIMARY KEY,
    kind VARCHAR,
    path VARCHAR,
    train_rows BIGINT,
    metrics JSON,
    created_at TIMESTAMP DEFAULT current_timestamp
);
-- the model whose runs a predictor learnt from (batchbin.predictors.registry.model_key)
ALTER TABLE predictors ADD COLUMN IF NOT EXISTS model VARCHAR;

-- Registered predictors with their headline metrics (on their held-out rows), for `batchbin sql`:
--   batchbin sql "select * from predictor_metrics"
CREATE OR REPLACE VIEW predictor_metrics AS
SELECT version, model, kind, created_at,
       try_cast(metrics->>'kendall_tau' AS DOUBLE) AS kendall_tau,
       try_cast(metrics->>'spearman' AS DOUBLE) AS spearman,
       try_cast(metrics->>'bin_accuracy_k2' AS DOUBLE) AS bin_accuracy_k2,
       try_cast(metrics->>'bin_accuracy_k4' AS DOUBLE) AS bin_accuracy_k4,
       try_cast(metrics->>'bin_accuracy_k8' AS DOUBLE) AS bin_accuracy_k8,
       try_cast(metrics->>'mae' AS DOUBLE) AS mae,
       try_cast(metrics->>'n_train' AS BIGINT) AS n_train,
       try_cast(metrics->>'n_test' AS BIGINT) AS n_test,
       path
FROM predictors;

CREATE TABLE IF NOT EXISTS schedule (
    run_id VARCHAR,
    request_id VARCHAR,
    bin INTEGER,
    batch INTEGER,
    position INTEGER,       -- order in which the request is handed to vLLM
    PRIMARY KEY (run_id, request_id)
);

-- added after schema version 1 shipped: a greedy request identical to an earlier one (same token
-- ids and output parameters) is generated once; its result is copied (generate.copy_duplicates)
ALTER TABLE schedule ADD COLUMN IF NOT EXISTS duplicate_of VARCHAR;

CREATE TABLE IF NOT EXISTS predictor_choices (
    run_id VARCHAR PRIMARY KEY,
    spec VARCHAR,           -- the --predictor asked for (auto by default)
    predictor VARCHAR,      -- the version that predicted ('fallback' for the rule)
    reason VARCHAR          -- why, in words
);

CREATE TABLE IF NOT EXISTS probe_choices (
    run_id VARCHAR PRIMARY KEY,
    size INTEGER,           -- requests the probe runs (0: none)
    reason VARCHAR          -- why it runs or not, in words
);

CREATE TABLE IF NOT EXISTS schedule_choices (
    run_id VARCHAR PRIMARY KEY,
    requested VARCHAR,      -- the --order asked for (auto by default)
    used VARCHAR,           -- the order the schedule was built in
    reason VARCHAR
);

CREATE TABLE IF NOT EXISTS results (
    run_id VARCHAR,
    request_id VARCHAR,
    output_text VARCHAR,
    prompt_tokens INTEGER,
    output_tokens INTEGER,
    cached_tokens INTEGER,  -- vLLM's num_cached_tokens (prefix-cache hits)
    finish_reason VARCHAR,
    error VARCHAR,
    batch INTEGER,
    latency_s DOUBLE,       -- from hand-over to vLLM to completion
    finished_at TIMESTAMP,
    PRIMARY KEY (run_id, request_id)
);

-- added after schema version 1 shipped
ALTER TABLE results ADD COLUMN IF NOT EXISTS attempt INTEGER;      -- generation attempt (engine_steps.attempt)
ALTER TABLE results ADD COLUMN IF NOT EXISTS finished_s DOUBLE;    -- seconds from the attempt's start to completion
-- answered from an earlier run (the run that generated it), not generated: tasks/reuse.py
ALTER TABLE results ADD COLUMN IF NOT EXISTS reused_from VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS model_fingerprint VARCHAR;  -- batchbin/engine/fingerprint.py

-- Each request's reuse key (batchbin/engine/reuse_key.py: model fingerprint, prompt token ids,
-- output parameters, seed where it samples); NULL: never reused. A later run's request with the
-- same key is answered with this one's result (sql/reuse.sql).
CREATE TABLE IF NOT EXISTS request_keys (
    run_id VARCHAR,
    request_id VARCHAR,
    reuse_key VARCHAR,
    PRIMARY KEY (run_id, request_id)
);

-- What every engine step of a run's generation did, from vLLM's statistics: the schedule's
-- shape over time, and what `batchbin simulate` fits its step costs on.
CREATE TABLE IF NOT EXISTS engine_steps (
    run_id VARCHAR,
    attempt INTEGER,          -- 1 for a run's first generation, +1 for each resume
    step INTEGER,             -- 0, 1, ... within the attempt
    started_s DOUBLE,         -- seconds from the attempt's start
    duration_s DOUBLE,        -- the step's wall time (schedule, model, outputs)
    running INTEGER,          -- sequences the step computed
    waiting INTEGER,          -- requests left waiting after it
    prefill_tokens INTEGER,   -- prompt (or recomputed) tokens computed in it
    decode_tokens INTEGER,    -- tokens decoded (one per decoding sequence without speculation)
    context_tokens BIGINT,    -- tokens in the KV cache of the running sequences after it (attention
                              -- reads them); NULL where the engine core runs in its own process
    kv_cache_usage DOUBLE,    -- share of KV-cache blocks in use after it, 0..1
    preempted INTEGER,        -- sequences preempted (KV cache full) in it
    PRIMARY KEY (run_id, attempt, step)
);

-- This machine's step costs, one fit per machine and engine kind (batchbin/sim/machine_fits.py):
-- refitted after every finished run from its engine_steps and earlier runs' of the same key;
-- `batchbin plan` and `batchbin simulate` use it. The same fits live in the user's cache folder.
CREATE TABLE IF NOT EXISTS step_cost_fits (
    fit_key VARCHAR PRIMARY KEY,   -- machine | dtype | eager or torch.compile | model
    machine VARCHAR,               -- CPU model, bf16/AMX flags and cores, or the GPU's name
    dtype VARCHAR,
    enforce_eager BOOLEAN,
    model VARCHAR,                 -- the model's folder name or hub id
    intercept_s DOUBLE,            -- time = intercept + prefill * tokens + decode * sequences + context * tokens
                                   --        + kv * distinct tokens in the KV cache (per_kv_token_s, below)
    per_prefill_token_s DOUBLE,
    per_decode_token_s DOUBLE,
    per_context_token_s DOUBLE,
    run_ids VARCHAR[],             -- the runs whose steps the fit was made from
    steps INTEGER,                 -- steps fitted on (capped per run)
    fitted_on JSON,                -- the fit's own record: error per step, error of the summed time
    updated_at TIMESTAMP DEFAULT current_timestamp
);
ALTER TABLE step_cost_fits ADD COLUMN IF NOT EXISTS per_kv_token_s DOUBLE;  -- distinct tokens in the KV cache

CREATE TABLE IF NOT EXISTS run_reports (
    run_id VARCHAR PRIMARY KEY,
    report JSON,
    created_at TIMESTAMP DEFAULT current_timestamp
);

-- The output length the schedule, admission and the report use for each request: the probe's
-- calibrated prediction where there is one, else the predictor's.
CREATE OR REPLACE VIEW planned_lengths AS
SELECT *, coalesce(calibrated_tokens, predicted_tokens) AS planned_tokens FROM predictions;

-- Views for users' SQL. `completions`: every result with its input row, id and prompt.
-- `run_summary`: one row per run with counts, tokens and prefix-cache reuse against the ideal.
CREATE OR REPLACE VIEW completions AS
SELECT r.run_id, p.row_number, r.request_id AS id, coalesce(p.prompt, p.messages::VARCHAR) AS input,
       r.output_text, r.finish_reason, r.prompt_tokens, r.output_tokens, r.cached_tokens, r.error,
       r.latency_s, r.batch,
       pr.planned_tokens AS predicted_tokens,  -- as scheduled (after a probe's calibration)
       p.metadata,
       r.reused_from  -- the earlier run whose answer this is (NULL: generated by this run)
FROM results r
JOIN prompts p USING (run_id, request_id)
LEFT JOIN planned_lengths pr USING (run_id, request_id);

CREATE OR REPLACE VIEW run_summary AS
WITH request_counts AS (SELECT run_id, count(*) AS requests FROM prompts GROUP BY run_id),
reject_counts AS (SELECT run_id, count(*) AS rejects FROM rejects GROUP BY run_id),
result_totals AS (
    SELECT run_id,
           count(*) FILTER (WHERE error IS NULL) AS completed,
           count(*) FILTER (WHERE error IS NOT NULL) AS errors,
           count(*) FILTER (WHERE reused_from IS NOT NULL) AS reused,
           sum(prompt_tokens)::BIGINT AS prompt_tokens,
           sum(output_tokens)::BIGINT AS output_tokens,
           sum(cached_tokens)::BIGINT AS cached_tokens
    FROM results
    GROUP BY run_id
)
SELECT ru.run_id, ru.input_path, ru.model, ru.status, ru.started_at, ru.finished_at,
       coalesce(q.requests, 0) AS requests, coalesce(j.rejects, 0) AS rejects,
       coalesce(t.completed, 0) AS completed, coalesce(t.errors, 0) AS errors,
       t.prompt_tokens, t.output_tokens, t.cached_tokens, s.ideal_cached_tokens,
       t.cached_tokens / nullif(s.ideal_cached_tokens, 0) AS reuse_ratio, ru.created_at,
       coalesce(t.reused, 0) AS answered_from_earlier_runs
FROM runs ru
LEFT JOIN request_counts q USING (run_id)
LEFT JOIN reject_counts j USING (run_id)
LEFT JOIN result_totals t USING (run_id)
LEFT JOIN run_prefix_stats s USING (run_id);

-- name: set_memory_limit
-- How much memory DuckDB may hold (batchbin/store/db.py: DUCKDB_MEMORY_SHARE). Parameters: $limit.
SET memory_limit = $limit;

-- name: set_meta
-- Record one key of the meta table.
INSERT OR REPLACE INTO meta VALUES ($key, $value);

-- name: get_versions
-- The schema version and the hash of the schema text that last ran on this file.
SELECT max(value) FILTER (WHERE key = 'schema_version'), max(value) FILTER (WHERE key = 'schema_hash') FROM meta;

-- name: has_meta
-- Whether the database has BatchBin's meta table (a new file has no table at all).
SELECT count(*) > 0 FROM duckdb_tables() WHERE database_name = current_database() AND schema_name = 'main'
    AND table_name = 'meta';

-- name: count_tables
-- Tables and views of the database itself (another program's database has some).
SELECT (SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() AND NOT internal)
     + (SELECT count(*) FROM duckdb_views() WHERE database_name = current_database() AND NOT internal);
