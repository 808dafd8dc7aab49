-- name: replace_prompts
-- Replace a run's prompts with the validated rows registered as `incoming_prompts`.
DELETE FROM prompts WHERE run_id = $run_id;
INSERT INTO prompts (run_id, request_id, row_number, prompt, messages, max_tokens, temperature, top_p, seed, stop, metadata,
                     response_format)
SELECT $run_id, request_id, row_number, prompt, messages::JSON, max_tokens, temperature, top_p, seed, stop, metadata::JSON,
       response_format::JSON
FROM incoming_prompts;

-- name: replace_rejects
-- Replace a run's load-time rejects with the rows registered as `incoming_rejects`.
DELETE FROM rejects WHERE run_id = $run_id AND field IS DISTINCT FROM 'prompt_tokens';
INSERT INTO rejects (run_id, row_number, request_id, field, reason, raw)
SELECT $run_id, row_number, request_id, field, reason, raw FROM incoming_rejects;

-- name: counts
-- Valid requests and rejects of a run.
SELECT (SELECT count(*) FROM prompts WHERE run_id = $run_id), (SELECT count(*) FROM rejects WHERE run_id = $run_id);
