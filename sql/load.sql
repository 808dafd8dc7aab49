-- name: clear_requests
-- Remove a run's prompts and load-time rejects before its input file is loaded again.
DELETE FROM prompts WHERE run_id = $run_id;
DELETE FROM rejects WHERE run_id = $run_id AND field IS DISTINCT FROM 'prompt_tokens';

-- name: insert_requests
-- Add one chunk of the input file: the valid rows registered as `incoming_prompts` and the
-- rejected ones as `incoming_rejects`.
INSERT INTO prompts (run_id, request_id, row_number, prompt, messages, max_tokens, temperature, top_p, seed, stop, metadata,
                     response_format, min_tokens, ignore_eos)
SELECT $run_id, request_id, row_number, prompt, messages::JSON, max_tokens, temperature, top_p, seed, stop, metadata::JSON,
       response_format::JSON, min_tokens, ignore_eos
FROM incoming_prompts;
INSERT INTO rejects (run_id, row_number, request_id, field, reason, raw)
SELECT $run_id, row_number, request_id, field, reason, raw FROM incoming_rejects;

-- name: counts
-- Valid requests and rejects of a run.
SELECT (SELECT count(*) FROM prompts WHERE run_id = $run_id), (SELECT count(*) FROM rejects WHERE run_id = $run_id);
