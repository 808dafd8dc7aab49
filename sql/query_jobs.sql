-- name: as_text
-- Every column of a table job's query result (registered as `query_rows`) as text, the way the
-- template writes it: DuckDB's own cast to VARCHAR.
SELECT COLUMNS(*)::VARCHAR FROM query_rows;

-- name: start_field_order
-- The field values of a table job, one row per (row, field), from `job_fields` (a row key and
-- the fields as text; a missing value is written empty), and every row in one group.
-- Runs in the table job's own in-memory database, never in BatchBin's file.
CREATE OR REPLACE TABLE field_values AS
SELECT row_key, field, value
FROM (UNPIVOT (SELECT row_key, coalesce(COLUMNS(* EXCLUDE (row_key)), '') FROM job_fields)
      ON COLUMNS(* EXCLUDE (row_key)) INTO NAME field VALUE value);
CREATE OR REPLACE TABLE row_groups AS SELECT row_key, 0::BIGINT AS grp FROM job_fields;

-- name: field_gains
-- For every field not chosen yet ($chosen): the characters its `name: value` line would share
-- with the row before it if it came next (rows sorted by the chosen fields, then this one: a
-- line is shared where the row equals the one before it on every earlier field and on this
-- one), its distinct values within the groups so far, and its mean line length.
SELECT field,
       sum((n - 1) * (length(field) + length(value) + 3))::BIGINT AS shared_chars,
       count(*)::BIGINT AS groups,
       (sum(n * (length(field) + length(value) + 3)) / sum(n))::DOUBLE AS mean_chars
FROM (SELECT v.field, g.grp, v.value, count(*) AS n
      FROM field_values v JOIN row_groups g USING (row_key)
      WHERE NOT list_contains($chosen, v.field)
      GROUP BY ALL)
GROUP BY field;

-- name: split_groups
-- The rows' groups refined by one more field: rows stay together only where they also share
-- its value. Numbered in sort order, so the groups are the rows' order.
CREATE OR REPLACE TABLE row_groups AS
SELECT g.row_key, dense_rank() OVER (ORDER BY g.grp, v.value) AS grp
FROM row_groups g JOIN field_values v ON v.row_key = g.row_key AND v.field = $field;

-- name: row_order
-- The rows' keys in the chosen order (by their groups, ties in query order).
SELECT row_key FROM row_groups ORDER BY grp, row_key;

-- name: shared_chars
-- The characters of `name: value` lines that rows share with the row before them when the
-- fields come in the order $fields and the rows are sorted by them (user's order or chosen).
WITH ranked AS (
    SELECT row_key, field, value, list_position($fields, field) AS pos
    FROM field_values WHERE list_contains($fields, field)
), keyed AS (
    SELECT row_key, list(value ORDER BY pos) AS vals, list(length(field) + length(value) + 3 ORDER BY pos) AS lens
    FROM ranked GROUP BY row_key
), sorted AS (
    SELECT vals, lens, lag(vals) OVER (ORDER BY vals) AS prev FROM keyed
)
SELECT coalesce(sum(CASE WHEN prev IS NULL THEN 0 ELSE
           list_sum(list_transform(generate_series(1, len(vals)),
                    lambda i: CASE WHEN vals[1:i] = prev[1:i] THEN lens[i] ELSE 0 END)) END), 0)::BIGINT
FROM sorted;

-- name: agreement_sample
-- The answered requests of a run that the agreement check generates again in the user's field
-- order: $rows of them, picked by a hash of their id (the same ones every time), with their
-- answer and their output limit and stop strings.
SELECT p.request_id, r.output_text, p.max_tokens, p.stop
FROM prompts p JOIN results r ON r.run_id = p.run_id AND r.request_id = p.request_id
WHERE p.run_id = $run_id AND r.error IS NULL AND r.output_text IS NOT NULL
ORDER BY hash(p.request_id), p.request_id
LIMIT $rows;
