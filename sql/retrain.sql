-- name: unused_results
-- Finished requests without error that no registered predictor has learnt from yet: those that
-- finished after the newest predictor was registered (every one, before the first). What a batch
-- run's `retrain_after` compares with its threshold (flows/retrain.py).
SELECT count(*)
FROM results r
WHERE r.error IS NULL AND r.output_tokens IS NOT NULL AND r.reused_from IS NULL  -- copies are not new
  AND r.finished_at > coalesce((SELECT max(created_at) FROM predictors), TIMESTAMP '-infinity');
