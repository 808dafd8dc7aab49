-- name: template_groups
-- Every request of a run with its template group: a maximal run of prompts, in token order,
-- whose neighbours share at least $template_tokens tokens beyond the prefix the whole job
-- shares (the smallest neighbour LCP: the chat template's start, say). Prompts made from one
-- template (the same system prompt or instructions) fall in one group.
-- Parameters: $run_id, $template_tokens.
WITH common AS (
    SELECT coalesce(min(lcp_prev) FILTER (WHERE sort_rank > 0), 0) AS tokens
    FROM prompt_groups WHERE run_id = $run_id
)
SELECT g.request_id,
       sum(CASE WHEN g.sort_rank = 0 OR g.lcp_prev < c.tokens + $template_tokens THEN 1 ELSE 0 END)
           OVER (ORDER BY g.sort_rank) AS template_group
FROM prompt_groups g, common c
WHERE g.run_id = $run_id;

-- name: choose_probe
-- The probe's requests, in place of the run's earlier ones: $size requests not answered from an
-- earlier run (tasks/reuse.py) whose length is not fixed by the request (ignore_eos, min_tokens >= max_tokens), taken from the predicted
-- quartiles in proportion to their size, and inside a quartile one request of every template group before a
-- second of any; which one, by a hash of its id (a re-run picks the same). The candidates'
-- template groups come registered as `probe_templates` (request_id, template_group).
-- Parameters: $run_id, $size, $default_max_tokens.
DELETE FROM probe_requests WHERE run_id = $run_id;
INSERT INTO probe_requests (run_id, request_id, template_group)
WITH candidates AS (
    SELECT pr.request_id, pr.predicted_tokens, tg.template_group
    FROM predictions pr
    JOIN prompts p USING (run_id, request_id)
    JOIN probe_templates tg USING (request_id)
    LEFT JOIN results r USING (run_id, request_id)
    WHERE pr.run_id = $run_id AND NOT coalesce(p.ignore_eos, false) AND r.reused_from IS NULL  -- not answered already
      AND coalesce(p.min_tokens, 0) < coalesce(p.max_tokens, $default_max_tokens)
),
quartiles AS (
    SELECT *, ntile(4) OVER (ORDER BY predicted_tokens, request_id) AS quartile,
           row_number() OVER (PARTITION BY template_group ORDER BY hash(request_id), request_id) AS turn
    FROM candidates
),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY quartile ORDER BY turn, hash(request_id), request_id) AS pick,
           count(*) OVER (PARTITION BY quartile) AS in_quartile
    FROM quartiles
),
-- the quartiles take turns in proportion to their size: the k-th pick of a quartile of n comes
-- at (k - 0.5) / n of the way
interleaved AS (
    SELECT *, row_number() OVER (ORDER BY (pick - 0.5) / in_quartile, quartile) AS place FROM ranked
)
SELECT $run_id, request_id, template_group FROM interleaved
WHERE place <= $size;

-- name: schedule_probe
-- The run's schedule while the probe runs: the probe's requests first, then the rest of the
-- job, each part in token order (so shared prefixes meet). The generate stage runs it only
-- until the probe has finished, the engine kept full meanwhile with the first of the rest;
-- then the schedule stage replaces it with the whole job in its calibrated order.
-- Parameters: $run_id.
DELETE FROM schedule WHERE run_id = $run_id;
INSERT INTO schedule (run_id, request_id, bin, batch, position)
SELECT $run_id, g.request_id, -1, -1, row_number() OVER (ORDER BY q.request_id IS NULL, g.sort_rank) - 1
FROM prompt_groups g LEFT JOIN probe_requests q USING (run_id, request_id)
WHERE g.run_id = $run_id;

-- name: probe_outcomes
-- The probe's predicted and real output tokens, with their template groups (finished without error).
-- Parameters: $run_id.
SELECT q.template_group, pr.predicted_tokens, r.output_tokens
FROM probe_requests q
JOIN predictions pr USING (run_id, request_id)
JOIN results r USING (run_id, request_id)
WHERE q.run_id = $run_id AND r.error IS NULL AND r.output_tokens IS NOT NULL
ORDER BY q.request_id;

-- name: rest_of_job
-- The requests the probe did not run: their predictions, limits and template groups (registered
-- as `probe_templates`), a page after request id $after.
-- Parameters: $run_id, $default_max_tokens, $after, $limit.
SELECT pr.request_id, pr.predicted_tokens, coalesce(p.max_tokens, $default_max_tokens) AS max_tokens,
       p.min_tokens, p.ignore_eos, tg.template_group
FROM predictions pr
JOIN prompts p USING (run_id, request_id)
JOIN probe_templates tg USING (request_id)
LEFT JOIN probe_requests q USING (run_id, request_id)
WHERE pr.run_id = $run_id AND q.request_id IS NULL AND pr.request_id > $after
ORDER BY pr.request_id
LIMIT $limit;

-- name: clear_calibration
-- Forget a run's calibrated predictions (before a probe writes new ones, or when none runs).
-- Parameters: $run_id.
UPDATE predictions SET calibrated_tokens = NULL WHERE run_id = $run_id AND calibrated_tokens IS NOT NULL;
DELETE FROM probes WHERE run_id = $run_id;

-- name: write_calibration
-- Calibrated predictions registered as `calibrated_rows` (request_id, calibrated_tokens).
-- Parameters: $run_id.
UPDATE predictions SET calibrated_tokens = c.calibrated_tokens
FROM calibrated_rows c
WHERE predictions.run_id = $run_id AND predictions.request_id = c.request_id;

-- name: record_probe
-- What the probe did and taught (one row a run).
-- Parameters: $run_id, $requests, $templates, $scale, $shift, $generate_s.
INSERT OR REPLACE INTO probes (run_id, requests, templates, scale, shift, generate_s)
VALUES ($run_id, $requests, $templates, $scale, $shift, $generate_s);

-- name: study_rows
-- A finished run's requests, for bench/probe_study.py: predicted and real tokens and limits
-- (the run must have its results; errors left out).
-- Parameters: $run_id.
SELECT pr.request_id, pr.predicted_tokens, r.output_tokens,
       coalesce(p.max_tokens, try_cast(json_extract_string(runs.config, '$.max_tokens') AS INTEGER)) AS max_tokens
FROM predictions pr
JOIN results r USING (run_id, request_id)
JOIN prompts p USING (run_id, request_id)
JOIN runs USING (run_id)
WHERE pr.run_id = $run_id AND r.error IS NULL AND r.output_tokens IS NOT NULL
ORDER BY pr.request_id;

-- name: latest_finished_run
-- The newest finished run of a database.
SELECT run_id FROM runs WHERE status = 'finished' ORDER BY started_at DESC LIMIT 1;

-- name: count_predictions
-- How many requests of a run have a prediction and are to be generated (not answered from an
-- earlier run, tasks/reuse.py), the KV tokens they need at their limits (prompt + max_tokens),
-- and how many of them fix their own length (ignore_eos, or min_tokens at max_tokens).
-- Parameters: $run_id, $default_max_tokens.
SELECT count(*), coalesce(sum(coalesce(t.prompt_tokens, 0) + coalesce(p.max_tokens, $default_max_tokens)), 0)::BIGINT,
       count(*) FILTER (WHERE coalesce(p.ignore_eos, false)
                           OR coalesce(p.min_tokens, 0) >= coalesce(p.max_tokens, $default_max_tokens))
FROM predictions pr
JOIN prompts p USING (run_id, request_id)
LEFT JOIN tokens t USING (run_id, request_id)
LEFT JOIN results r USING (run_id, request_id)
WHERE pr.run_id = $run_id AND r.reused_from IS NULL;

-- name: run_predictors
-- The predictors that made a run's predictions (one, but for ids an oracle or file lacked).
-- Parameters: $run_id.
SELECT DISTINCT predictor FROM predictions WHERE run_id = $run_id ORDER BY predictor;

-- name: record_choice
-- Whether the run's probe runs, and why (a run's one row).
-- Parameters: $run_id, $size, $reason.
INSERT OR REPLACE INTO probe_choices (run_id, size, reason) VALUES ($run_id, $size, $reason);

-- name: count_probe
-- How many requests the run's probe holds.
-- Parameters: $run_id.
SELECT count(*) FROM probe_requests WHERE run_id = $run_id;

-- name: clear_probe
-- A run without a probe.
-- Parameters: $run_id.
DELETE FROM probe_requests WHERE run_id = $run_id;
