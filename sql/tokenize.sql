-- name: prompts_to_tokenize
-- The prompts of a run in input order.
SELECT request_id, prompt, messages::VARCHAR FROM prompts WHERE run_id = $run_id ORDER BY row_number;

-- name: replace_tokens
-- Store `incoming_tokens`; move prompts listed in `too_long` to rejects (they leave no room
-- for output in the context) and out of prompts.
DELETE FROM tokens WHERE run_id = $run_id;
INSERT INTO tokens (run_id, request_id, token_ids, prompt_tokens)
SELECT $run_id, request_id, token_ids, prompt_tokens FROM incoming_tokens;
DELETE FROM rejects WHERE run_id = $run_id AND field = 'prompt_tokens';
INSERT INTO rejects (run_id, row_number, request_id, field, reason, raw)
SELECT p.run_id, p.row_number, p.request_id, 'prompt_tokens',
       format('the prompt has {} tokens; the context (max_model_len) is {}, leaving no room for output',
              t.prompt_tokens, $max_model_len),
       to_json(struct_pack(id := p.request_id, prompt := p.prompt, messages := p.messages,
                           max_tokens := p.max_tokens, metadata := p.metadata))::VARCHAR
FROM prompts p JOIN too_long t USING (request_id)
WHERE p.run_id = $run_id;
DELETE FROM prompts WHERE run_id = $run_id AND request_id IN (SELECT request_id FROM too_long);
