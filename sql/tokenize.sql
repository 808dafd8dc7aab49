-- name: prompts_to_tokenize
-- The prompts of a run in input order.
SELECT request_id, prompt, messages::VARCHAR AS messages FROM prompts WHERE run_id = $run_id ORDER BY row_number;

-- name: clear_tokens
-- Forget a run's token ids before tokenizing again, and the too-long rejects of prompts that are
-- back in `prompts` (a load again), which tokenizing rejects anew. The other too-long rejects
-- stay: their prompts left `prompts`, so tokenizing would not see them a second time.
DELETE FROM tokens WHERE run_id = $run_id;
DELETE FROM rejects WHERE run_id = $run_id AND field = 'prompt_tokens'
  AND request_id IN (SELECT request_id FROM prompts WHERE run_id = $run_id);

-- name: insert_tokens
-- Store one chunk of token ids, `incoming_tokens`.
INSERT INTO tokens (run_id, request_id, token_ids, prompt_tokens)
SELECT $run_id, request_id, token_ids, prompt_tokens FROM incoming_tokens;

-- name: reject_too_long
-- Move the prompts listed in `too_long` to rejects (they leave no room for output in the
-- context) and out of prompts.
INSERT INTO rejects (run_id, row_number, request_id, field, reason, raw)
SELECT p.run_id, p.row_number, p.request_id, 'prompt_tokens',
       format('the prompt has {} tokens; the context (max_model_len) is {}, leaving no room for output',
              t.prompt_tokens, $max_model_len),
       to_json(struct_pack(id := p.request_id, prompt := p.prompt, messages := p.messages,
                           max_tokens := p.max_tokens, metadata := p.metadata))::VARCHAR
FROM prompts p JOIN too_long t USING (request_id)
WHERE p.run_id = $run_id;
DELETE FROM prompts WHERE run_id = $run_id AND request_id IN (SELECT request_id FROM too_long);

-- name: count_prompts
-- How many prompts of a run there are to tokenize (for progress lines).
SELECT count(*) FROM prompts WHERE run_id = $run_id;
