-- name: unused_results
-- Finished requests without error that no registered predictor has learnt from yet: those that
-- finished after the newest predictor was registered (every one, before the first). What a batch
-- run's `retrain_after` compares with its threshold (flows/retrain.py).
SELECT count(*)
FROM results r
WHERE r.error IS NULL AND r.output_tokens IS NOT NULL AND r.reused_from IS NULL  -- copies are not new
  AND r.finished_at > coalesce((SELECT max(created_at) FROM predictors), TIMESTAMP '-infinity');

-- name: unused_results_by_model
-- The same per run model (runs.model: a path or hub id; the caller keys them as the registry
-- does): finished requests without error that finished after the newest predictor of that
-- model (registered under $model_key) was registered; every one before its first.
-- Parameters: $model_key.
SELECT ru.model, count(*)
FROM results r
JOIN runs ru USING (run_id)
WHERE r.error IS NULL AND r.output_tokens IS NOT NULL AND r.reused_from IS NULL
  AND r.finished_at > coalesce((SELECT max(created_at) FROM predictors WHERE model = $model_key),
                               TIMESTAMP '-infinity')
GROUP BY ru.model;
