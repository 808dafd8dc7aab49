-- Stage 3, group prefixes (BatchLLM): over the token lists of one run, find the prefixes that
-- prompts share and cut the run into prefix groups. tasks/prefixes.py runs these in order:
--   sort_prompts -> build_prefix_tree -> assign_groups -> replace_results -> drop_scratch.
--
-- Vocabulary used below:
--   sort order   prompts ordered by token_ids (lexicographic), ties by request_id; sort_rank 0..n-1
--   lcp_prev     longest common prefix, in tokens, with the previous prompt in sort order
--   node         an LCP interval: a maximal run of ranks [lo, hi], hi > lo, whose inner boundaries
--                (ranks lo+1..hi) all have lcp_prev >= depth, depth being their minimum. Every
--                member shares exactly `depth` tokens with all the others. The nodes nest
--                (they form the prefix tree of the run), children are strictly deeper.
-- Only nodes with depth >= $min_shared_tokens are built: shallower sharing is not worth a group.
--
-- The scratch tables prefix_scratch_* are ordinary tables (one writer per database file),
-- replaced on every call and dropped at the end by drop_scratch.

-- name: sort_prompts
-- The run's prompts in lexicographic token order with their LCP against the predecessor.
-- The LCP is the position of the first mismatch in list_zip(ids, prev) (truncated to the
-- shorter list), or the shorter length when one list is a prefix of the other.
-- A missing token list counts as empty; prompt_tokens is the list's length.
CREATE OR REPLACE TABLE prefix_scratch_sorted AS
SELECT
    (rn - 1)::INTEGER AS sort_rank,
    request_id,
    len(ids)::INTEGER AS prompt_tokens,
    CASE
        WHEN prev IS NULL THEN 0
        ELSE coalesce(
            list_position(list_transform(list_zip(ids, prev, true), lambda p: p[1] <> p[2]), true) - 1,
            least(len(ids), len(prev)))
    END::INTEGER AS lcp_prev
FROM (
    SELECT request_id, ids, row_number() OVER w AS rn, lag(ids) OVER w AS prev
    FROM (SELECT request_id, coalesce(token_ids, []::INTEGER[]) AS ids FROM tokens WHERE run_id = $run_id)
    WINDOW w AS (ORDER BY ids, request_id)
);

-- name: build_prefix_tree
-- The nodes (LCP intervals) of depth >= $min_shared_tokens, top-down, one recursion step per
-- tree level. Level 0: maximal runs of ranks joined by lcp_prev >= $min_shared_tokens. A node's
-- children: cut it where lcp_prev equals its depth; every piece with 2+ members is a child whose
-- depth is the minimum lcp_prev inside it. Work is O(prompts x tree height).
CREATE OR REPLACE TABLE prefix_scratch_nodes AS
WITH RECURSIVE
top_runs AS (
    SELECT sort_rank, lcp_prev,
           sum(CASE WHEN lcp_prev < $min_shared_tokens THEN 1 ELSE 0 END) OVER (ORDER BY sort_rank) AS run_no
    FROM prefix_scratch_sorted
),
top_nodes AS (
    SELECT sort_rank, lcp_prev,
           min(sort_rank) OVER r AS lo,
           max(sort_rank) OVER r AS hi,
           min(CASE WHEN lcp_prev >= $min_shared_tokens THEN lcp_prev END) OVER r AS depth
    FROM top_runs
    WINDOW r AS (PARTITION BY run_no)
),
tree(sort_rank, lcp_prev, lo, hi, depth, level, parent_lo) AS (
    SELECT sort_rank, lcp_prev, lo, hi, depth, 0, NULL::INTEGER
    FROM top_nodes
    WHERE hi > lo
    UNION ALL
    SELECT sort_rank, lcp_prev, child_lo, child_hi, child_depth, level + 1, lo
    FROM (
        SELECT sort_rank, lcp_prev, lo, level,
               min(sort_rank) OVER c AS child_lo,
               max(sort_rank) OVER c AS child_hi,
               min(CASE WHEN lcp_prev > depth THEN lcp_prev END) OVER c AS child_depth
        FROM (
            -- a child starts at the node's first rank and wherever lcp_prev falls back to the depth
            SELECT *, sum(CASE WHEN sort_rank = lo OR lcp_prev <= depth THEN 1 ELSE 0 END)
                          OVER (PARTITION BY lo ORDER BY sort_rank) AS child_no
            FROM tree
        )
        WINDOW c AS (PARTITION BY lo, child_no)
    )
    WHERE child_hi > child_lo
)
SELECT DISTINCT lo, hi, depth, level, parent_lo, (hi - lo)::BIGINT * depth AS keep_value
FROM tree;

-- name: assign_groups
-- BatchLLM's rule, bottom-up over the tree: a node either stays one group sharing its own
-- prefix (keep_value = (members - 1) * depth reused tokens) or is split into its children's
-- best groups (leaf prompts reuse 0), whichever reuses more; on a tie the node stays whole.
-- The groups are the nodes that stay whole and have no ancestor that stays whole; every other
-- prompt is a singleton group (prefix_tokens 0). Group ids are dense, in sort order, from 0.
CREATE OR REPLACE TABLE prefix_scratch_assigned AS
WITH RECURSIVE
best(lo, hi, depth, level, parent_lo, best_value, stays_whole) AS (
    SELECT lo, hi, depth, level, parent_lo, keep_value, true
    FROM prefix_scratch_nodes
    WHERE level = (SELECT max(level) FROM prefix_scratch_nodes)
    UNION ALL
    SELECT n.lo, n.hi, n.depth, n.level, n.parent_lo,
           greatest(n.keep_value, coalesce(k.split_value, 0)),
           n.keep_value >= coalesce(k.split_value, 0)
    FROM prefix_scratch_nodes n
    LEFT JOIN (SELECT parent_lo, sum(best_value) AS split_value FROM best GROUP BY parent_lo) k
           ON k.parent_lo = n.lo
    WHERE n.level = (SELECT min(level) FROM best) - 1
),
chosen AS (
    -- the nodes nest, so a whole node lies inside an earlier (lo ascending) whole node
    -- exactly when that earlier node reaches its lo
    SELECT lo, hi, depth
    FROM (
        SELECT lo, hi, depth,
               max(hi) OVER (ORDER BY lo, hi DESC ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS outer_hi
        FROM best
        WHERE stays_whole
    )
    WHERE outer_hi IS NULL OR outer_hi < lo
),
placed AS (
    SELECT s.sort_rank, s.request_id, s.prompt_tokens, s.lcp_prev,
           CASE WHEN s.sort_rank <= c.hi THEN c.lo ELSE s.sort_rank END AS group_lo,
           CASE WHEN s.sort_rank <= c.hi THEN c.depth ELSE 0 END AS prefix_tokens
    FROM prefix_scratch_sorted s
    ASOF LEFT JOIN chosen c ON s.sort_rank >= c.lo
)
SELECT sort_rank, request_id, prompt_tokens, lcp_prev, prefix_tokens,
       sort_rank = group_lo AS group_first,
       (sum(CASE WHEN sort_rank = group_lo THEN 1 ELSE 0 END) OVER (ORDER BY sort_rank) - 1)::INTEGER AS group_id
FROM placed;

-- name: replace_results
-- Replace the run's rows in prompt_groups, prefix_groups and run_prefix_stats.
-- prefix_groups.distinct_tokens is the group's prefill with perfect reuse inside the group
-- (its first member in full, every other member minus lcp_prev); run_prefix_stats.distinct_tokens
-- is the same over the whole sorted run, so sharing across group borders counts there too.
DELETE FROM prompt_groups WHERE run_id = $run_id;
INSERT INTO prompt_groups (run_id, request_id, group_id, sort_rank, lcp_prev)
SELECT $run_id, request_id, group_id, sort_rank, lcp_prev
FROM prefix_scratch_assigned;
DELETE FROM prefix_groups WHERE run_id = $run_id;
INSERT INTO prefix_groups (run_id, group_id, members, prefix_tokens, prompt_tokens, distinct_tokens)
SELECT $run_id, group_id, count(*), max(prefix_tokens), sum(prompt_tokens),
       sum(prompt_tokens - CASE WHEN group_first THEN 0 ELSE lcp_prev END)
FROM prefix_scratch_assigned
GROUP BY group_id;
DELETE FROM run_prefix_stats WHERE run_id = $run_id;
INSERT INTO run_prefix_stats (run_id, prompts, prompt_tokens, distinct_tokens, ideal_cached_tokens, groups)
SELECT $run_id, count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(prompt_tokens - lcp_prev), 0),
       coalesce(sum(lcp_prev), 0), count(DISTINCT group_id)
FROM prefix_scratch_assigned;

-- name: drop_scratch
-- Remove the scratch tables of this stage.
DROP TABLE IF EXISTS prefix_scratch_sorted;
DROP TABLE IF EXISTS prefix_scratch_nodes;
DROP TABLE IF EXISTS prefix_scratch_assigned;

-- name: run_stats
-- The prefix statistics of one run.
SELECT run_id, prompts, prompt_tokens, distinct_tokens, ideal_cached_tokens, groups
FROM run_prefix_stats WHERE run_id = $run_id;
