-- name: replace_schedule
-- Bin and order a run's requests (Multi-Bin Batching + BatchLLM). One row per request:
-- bin 0 holds the longest predicted outputs; `position` is the order of hand-over to vLLM.
-- The unit kept together is a prefix family: a maximal run of prompts, in token order, that
-- share at least $min_shared_tokens (one KV block) with their neighbour. vLLM's prefix cache
-- reuses nested prefixes (system prompt -> document -> question, conversation turns) as long
-- as the whole family runs back to back in token order, so families are never split; BatchLLM's
-- one-level groups (prefix_groups) would split conversations and lose reuse.
-- Orders ($order):
--   input  - the input file's order;
--   sorted - lexicographic token order (what a capable user does by hand);
--   group  - families kept together, families with the larger decode ratio first
--            (predicted output tokens over the family's distinct prefill tokens);
--   bin    - bin-major (longest bin first), token order inside a bin: families may be split;
--   hybrid - each whole family goes to the bin of its mean predicted length; bins longest
--            first, then families by decode ratio, token order inside a family.
-- ("auto" never reaches this query: tasks/schedule.py resolves it to hybrid or sorted.)
-- Parameters: $run_id, $k_bins, $order, $min_shared_tokens.
DELETE FROM schedule WHERE run_id = $run_id;
INSERT INTO schedule (run_id, request_id, bin, batch, position)
WITH req0 AS (
    SELECT t.request_id, t.prompt_tokens, p.row_number, g.sort_rank, g.lcp_prev,
           coalesce(pr.planned_tokens, 1) AS predicted
    FROM tokens t
    JOIN prompts p USING (run_id, request_id)
    JOIN prompt_groups g USING (run_id, request_id)
    LEFT JOIN planned_lengths pr USING (run_id, request_id)
    WHERE t.run_id = $run_id
),
req AS (
    SELECT *, sum(CASE WHEN lcp_prev < $min_shared_tokens THEN 1 ELSE 0 END) OVER (ORDER BY sort_rank) AS group_id
    FROM req0
),
grp AS (
    SELECT group_id,
           avg(predicted) AS mean_predicted,
           sum(predicted) / greatest(1, sum(prompt_tokens - lcp_prev)) AS decode_ratio
    FROM req GROUP BY group_id
),
request_bins AS (
    SELECT request_id, $k_bins - ntile($k_bins) OVER (ORDER BY predicted, request_id) AS bin FROM req
),
group_bins AS (
    SELECT group_id, $k_bins - ntile($k_bins) OVER (ORDER BY mean_predicted, group_id) AS bin FROM grp
),
keyed AS (
    SELECT r.request_id,
           CASE WHEN $order = 'hybrid' THEN gb.bin ELSE rb.bin END AS bin,
           CASE $order
               WHEN 'input'  THEN [r.row_number::DOUBLE]
               WHEN 'sorted' THEN [r.sort_rank::DOUBLE]
               WHEN 'group'  THEN [-g.decode_ratio, r.group_id, r.sort_rank]
               WHEN 'bin'    THEN [rb.bin::DOUBLE, r.sort_rank]
               WHEN 'hybrid' THEN [gb.bin::DOUBLE, -g.decode_ratio, r.group_id, r.sort_rank]
           END AS sort_key
    FROM req r
    JOIN grp g USING (group_id)
    JOIN request_bins rb USING (request_id)
    JOIN group_bins gb USING (group_id)
)
SELECT $run_id, request_id, bin, bin AS batch,
       row_number() OVER (ORDER BY sort_key, request_id) - 1 AS position
FROM keyed;

-- name: mark_duplicates
-- Identical greedy requests (same token ids, limits, stops and response format, temperature 0
-- by their own or the run's default): every one but the leader names it in `duplicate_of`;
-- generation runs the leader only and copies its result. The leader is one that has a result
-- already (the probe's phase ran it, or an earlier run answered it), else the first in
-- schedule order: an answer is never generated twice in a run. Parameters: $run_id.
UPDATE schedule SET duplicate_of = NULL WHERE run_id = $run_id AND duplicate_of IS NOT NULL;
UPDATE schedule SET duplicate_of = d.leader
FROM (
    SELECT s.request_id,
           first_value(s.request_id) OVER (
               PARTITION BY t.token_ids, p.max_tokens, p.min_tokens, coalesce(p.ignore_eos, false), p.stop,
                            p.response_format::VARCHAR
               ORDER BY r.request_id IS NULL, s.position) AS leader
    FROM schedule s
    JOIN tokens t USING (run_id, request_id)
    JOIN prompts p USING (run_id, request_id)
    LEFT JOIN runs ru USING (run_id)
    LEFT JOIN results r ON r.run_id = s.run_id AND r.request_id = s.request_id AND r.error IS NULL
    WHERE s.run_id = $run_id
      AND coalesce(p.temperature, try_cast(json_extract_string(ru.config, '$.temperature') AS DOUBLE), 0) = 0
) d
WHERE schedule.run_id = $run_id AND schedule.request_id = d.request_id AND d.leader <> d.request_id;

-- name: count_scheduled
SELECT count(*) FROM schedule WHERE run_id = $run_id;

-- name: prediction_spread
-- How many requests the run has, how much their planned lengths differ (coefficient of
-- variation: standard deviation over mean; 0 when there are no predictions), and the KV tokens
-- they need at their limits (prompt + max_tokens, the run's default where a request sets none).
-- Parameters: $run_id.
SELECT count(*) AS requests,
       coalesce(stddev_pop(pl.planned_tokens)
                / nullif(avg(pl.planned_tokens), 0), 0) AS spread,
       sum(t.prompt_tokens + coalesce(p.max_tokens, try_cast(json_extract_string(ru.config, '$.max_tokens') AS INTEGER),
                                      0))::BIGINT AS kv_tokens_needed
FROM tokens t
LEFT JOIN prompts p USING (run_id, request_id)
LEFT JOIN runs ru USING (run_id)
LEFT JOIN planned_lengths pl USING (run_id, request_id)
WHERE t.run_id = $run_id;

-- name: record_choice
INSERT OR REPLACE INTO schedule_choices (run_id, requested, used, reason) VALUES ($run_id, $requested, $used, $reason);
