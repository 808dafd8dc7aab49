-- Scale-out (batchbin/scaleout/shares.py, batchbin/scaleout/ray_engines.py): the work a run still has, as
-- prefix families with their predicted cost, for spreading over several engines.

-- name: work_families
-- Every request of a run without a result (but those that copy an identical earlier one's:
-- generate.copy_duplicates gives them theirs), with its prefix family and predicted work, in
-- schedule order. A family is what sql/schedule.sql keeps together: a maximal run of prompts,
-- in token order, sharing at least $min_shared_tokens with their neighbour (the same rule, so
-- a shard never splits what the schedule kept whole and vLLM's prefix cache keeps its reuse).
-- new_prompt_tokens: the prompt tokens the family's prefix cache does not already hold (the
-- first member's whole prompt, then each one's part beyond what it shares with the one before).
-- Parameters: $run_id, $min_shared_tokens.
WITH fam AS (
    SELECT g.request_id, g.lcp_prev,
           sum(CASE WHEN g.lcp_prev < $min_shared_tokens THEN 1 ELSE 0 END) OVER (ORDER BY g.sort_rank) AS family
    FROM prompt_groups g
    WHERE g.run_id = $run_id
)
SELECT s.request_id, s.position, f.family::BIGINT AS family, t.prompt_tokens,
       (t.prompt_tokens - CASE WHEN f.lcp_prev < $min_shared_tokens THEN 0 ELSE f.lcp_prev END)::BIGINT
           AS new_prompt_tokens,
       coalesce(pr.planned_tokens, 1)::DOUBLE AS predicted_tokens
FROM schedule s
JOIN fam f USING (request_id)
JOIN tokens t USING (run_id, request_id)
LEFT JOIN planned_lengths pr USING (run_id, request_id)
LEFT JOIN results r USING (run_id, request_id)
WHERE s.run_id = $run_id AND r.request_id IS NULL AND s.duplicate_of IS NULL
ORDER BY s.position;

-- name: work_rows
-- What an engine needs of the requests registered as `wanted_ids` (one column, request_id):
-- the rows of generate.work_in_order, in schedule order.
SELECT s.request_id, s.batch, s.position, t.token_ids, p.max_tokens, p.temperature, p.top_p, p.seed, p.stop,
       p.response_format::VARCHAR AS response_format
FROM schedule s
JOIN tokens t USING (run_id, request_id)
JOIN prompts p USING (run_id, request_id)
WHERE s.run_id = $run_id AND s.request_id IN (SELECT request_id FROM wanted_ids)
ORDER BY s.position;
