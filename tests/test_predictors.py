"""Stage 4, predict lengths: one behaviour suite bound to every predictor (fallback, a trained
MLP, the oracle), plus training, registry, features, fallback rule and metrics.

Synthetic data: the output length depends on the cue words of the prompt ("one word" -> ~3
tokens, "briefly" -> ~30, "list ten" -> ~150, "detailed essay" -> up to max_tokens).
"""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pytest

from batchbin.errors import BatchBinError
from batchbin.predictors.evaluate import kendall_tau, prediction_metrics, ranks, run_prediction_quality, spearman
from batchbin.predictors.features import FeatureSettings, asked_length, feature_matrix, hashed_bag, last_user_text
from batchbin.predictors.model import TINY_CONFIG
from batchbin.predictors.predict import fallback_length, predict_lengths
from batchbin.scheduling import EngineRoom
from batchbin.predictors import registry
from batchbin.predictors.registry import (PredictorNotFound, auto_predictor, latest_predictor, load_predictor,
                                          model_key, shipped_predictor)
from batchbin.predictors.train import TINY_TRAIN_CONFIG, NotEnoughTrainingData, train_predictor

DEFAULT_MAX = 256
TEMPLATES = [  # (prompt template, typical output tokens)
    ("Answer in one word: what is the capital of {t}?", 3),
    ("Yes or no: is {t} older than the printing press?", 2),
    ("Briefly, what is {t} known for?", 30),
    ("Tell me about {t}.", 90),
    ("List ten facts about {t}.", 160),
    ("Write a detailed essay on the history of {t}.", 250),
]
TOPICS = [f"{a} {b}" for a in ("old", "northern", "great", "hidden", "ancient", "modern", "small")
          for b in ("rome", "paris", "cairo", "lima", "oslo", "delhi", "kyoto", "quito", "accra")]


def synthetic_requests(n: int, seed: int, prefix: str) -> list[dict]:
    """n requests (half plain prompts, half chats) with their true output length."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        template, typical = TEMPLATES[i % len(TEMPLATES)]
        text = template.format(t=rng.choice(TOPICS))
        max_tokens = rng.choice([None, 128, DEFAULT_MAX, 512])
        limit = max_tokens or DEFAULT_MAX
        true = max(1, min(limit, round(typical * rng.lognormvariate(0, 0.25))))
        chat = i % 2 == 1
        messages = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": text}]
        rows.append({
            "request_id": f"{prefix}{i}", "row_number": i + 1,
            "prompt": None if chat else text, "messages": json.dumps(messages) if chat else None,
            "max_tokens": max_tokens, "prompt_tokens": len(text.split()) * 2 + (8 if chat else 0),
            "group_id": i % 5, "output_tokens": true,
        })
    return rows


def insert(con, table: str, rows: list[dict]) -> None:
    con.register("incoming_test_rows", pa.Table.from_pylist(rows))
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM incoming_test_rows")
    finally:
        con.unregister("incoming_test_rows")


MODEL = "/models/SmolLM2-135M-Instruct"  # a run's model as runs.model holds it (a resolved path)


def add_run(con, run_id: str, requests: list[dict], with_results: bool, skip_results: int = 0,
            model: str = MODEL) -> None:
    """Prompts, tokens, groups (and results) of a run, straight into the tables."""
    insert(con, "runs", [{"run_id": run_id, "status": "finished" if with_results else "running", "model": model,
                          "config": json.dumps({"max_tokens": DEFAULT_MAX, "k_bins": 4})}])
    insert(con, "prompts", [{"run_id": run_id, **{k: r[k] for k in ("request_id", "row_number", "prompt", "messages",
                                                                     "max_tokens")}} for r in requests])
    insert(con, "tokens", [{"run_id": run_id, "request_id": r["request_id"], "prompt_tokens": r["prompt_tokens"]}
                           for r in requests])
    insert(con, "prompt_groups", [{"run_id": run_id, "request_id": r["request_id"], "group_id": r["group_id"]}
                                  for r in requests])
    if with_results:
        insert(con, "results", [{"run_id": run_id, "request_id": r["request_id"], "output_tokens": r["output_tokens"],
                                 "finish_reason": "stop"} for r in requests[skip_results:]])


NEW_RUN = "new"
ORACLE_SOURCE = "new-done"


@pytest.fixture
def history(fresh_db):
    """A database with one finished run of 300 requests and a new, not yet generated run of 30."""
    add_run(fresh_db, "hist", synthetic_requests(300, seed=1, prefix="h"), with_results=True)
    new = synthetic_requests(30, seed=2, prefix="n")
    new[0]["max_tokens"] = 8  # a tight limit every predictor must respect
    add_run(fresh_db, NEW_RUN, new, with_results=False)
    return fresh_db


def train_tiny(con, models_dir, model: str | None = None) -> dict:
    return train_predictor(con, str(models_dir), DEFAULT_MAX, seed=0, model=model,
                           model_config=TINY_CONFIG, train_config=TINY_TRAIN_CONFIG)


# --- one behaviour suite, bound to each predictor -------------------------------------------

@pytest.fixture(params=["fallback", "mlp", "shipped", "oracle"])
def predictor(request, history, tmp_path):
    """(con, spec, name the predictions carry) for each kind of predictor."""
    con = history
    if request.param == "fallback":
        return con, "fallback", "fallback"
    if request.param == "shipped":  # auto with nothing trained for the run's model
        return con, "auto", shipped_predictor()["version"]
    if request.param == "mlp":
        entry = train_tiny(con, tmp_path / "models")
        return con, "auto", entry["version"]
    # the same requests already ran once, except the first three: those get the fallback
    add_run(con, ORACLE_SOURCE, synthetic_requests(30, seed=2, prefix="n"), with_results=True, skip_results=3)
    return con, f"oracle:{ORACLE_SOURCE}", f"oracle:{ORACLE_SOURCE}"


def stored(con, run_id: str = NEW_RUN) -> list[tuple]:
    return con.execute("SELECT request_id, predicted_tokens, predictor FROM predictions WHERE run_id = $r "
                       "ORDER BY request_id", {"r": run_id}).fetchall()


def check_every_prompt_predicted(con, spec, name):
    counts = predict_lengths(con, NEW_RUN, spec, DEFAULT_MAX)
    prompts = {r[0] for r in con.execute("SELECT request_id FROM prompts WHERE run_id = $r", {"r": NEW_RUN}).fetchall()}
    assert counts["rows"] == len(prompts) == 30
    assert {row[0] for row in stored(con)} == prompts
    assert counts["predictor"] == name


def check_within_limits(con, spec, name):
    predict_lengths(con, NEW_RUN, spec, DEFAULT_MAX)
    rows = con.execute("SELECT pr.predicted_tokens, coalesce(p.max_tokens, $d) FROM predictions pr "
                       "JOIN prompts p USING (run_id, request_id) WHERE pr.run_id = $r",
                       {"r": NEW_RUN, "d": DEFAULT_MAX}).fetchall()
    assert rows and all(1 <= predicted <= limit for predicted, limit in rows)
    assert con.execute("SELECT predicted_tokens FROM predictions WHERE run_id = $r AND request_id = 'n0'",
                       {"r": NEW_RUN}).fetchone()[0] <= 8


def check_idempotent(con, spec, name):
    predict_lengths(con, NEW_RUN, spec, DEFAULT_MAX)
    first = stored(con)
    again = predict_lengths(con, NEW_RUN, spec, DEFAULT_MAX)
    assert stored(con) == first
    assert again["rows"] == len(first) == 30
    assert stored(con, "hist") == []  # other runs untouched


def check_names_predictor(con, spec, name):
    predict_lengths(con, NEW_RUN, spec, DEFAULT_MAX)
    names = {row[2] for row in stored(con)}
    expected = {name, "fallback"} if spec.startswith("oracle:") else {name}
    assert names == expected


def check_orders_short_before_long(con, spec, name):
    """Every predictor puts 'one word' requests below 'detailed essay' ones on average."""
    predict_lengths(con, NEW_RUN, spec, DEFAULT_MAX)
    rows = con.execute("SELECT coalesce(p.prompt, p.messages::VARCHAR), pr.predicted_tokens FROM predictions pr "
                       "JOIN prompts p USING (run_id, request_id) WHERE pr.run_id = $r", {"r": NEW_RUN}).fetchall()
    short = [v for text, v in rows if "one word" in text]
    long = [v for text, v in rows if "detailed essay" in text]
    assert np.mean(short) < np.mean(long)


def check_same_in_batches(con, spec, name):
    """A large run is predicted a batch at a time; the batches change nothing."""
    predict_lengths(con, NEW_RUN, spec, DEFAULT_MAX)
    whole = stored(con)
    counts = predict_lengths(con, NEW_RUN, spec, DEFAULT_MAX, rows_per_batch=7)
    assert counts["rows"] == 30 and counts["fallback_rows"] == sum(row[2] == "fallback" for row in whole)
    batched = stored(con)
    assert [(row[0], row[2]) for row in batched] == [(row[0], row[2]) for row in whole]
    # float32 sums come out a little different with the batch shape (the MLP's matmuls)
    assert [row[1] for row in batched] == pytest.approx([row[1] for row in whole], rel=1e-5)


CHECKS = [check_every_prompt_predicted, check_within_limits, check_idempotent, check_names_predictor,
          check_orders_short_before_long, check_same_in_batches]


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__.removeprefix("check_"))
def test_predictor(predictor, check):
    check(*predictor)


# --- training and registry -------------------------------------------------------------------

def test_training_learns_cue_words(history, tmp_path):
    entry = train_tiny(history, tmp_path / "models")
    metrics = entry["metrics"]
    assert metrics["spearman"] > 0.5, metrics
    assert metrics["val_rows"] > 20 and metrics["val_rows"] + metrics["fit_rows"] == 300
    assert entry["kind"] == "mlp" and entry["train_rows"] == 300
    assert latest_predictor(history)["version"] == entry["version"]
    loaded = load_predictor(entry["path"])
    assert loaded.version == entry["version"] and loaded.metrics["spearman"] == metrics["spearman"]
    one_word, essay = loaded.predict([
        {"prompt": "Answer in one word: what is the capital of old rome?", "max_tokens": 256},
        {"prompt": "Write a detailed essay on the history of old rome.", "max_tokens": 256},
    ])
    assert one_word < 20 < 100 < essay <= 256


def test_training_is_reproducible(history, tmp_path):
    a = train_tiny(history, tmp_path / "a")
    b = train_tiny(history, tmp_path / "b")
    assert a["metrics"]["val_loss"] == b["metrics"]["val_loss"]
    assert a["version"].split("-")[-1] == b["version"].split("-")[-1]  # same data and settings, same hash


def test_too_few_rows_is_a_clear_error(fresh_db, tmp_path):
    add_run(fresh_db, "small", synthetic_requests(12, seed=3, prefix="s"), with_results=True)
    with pytest.raises(NotEnoughTrainingData, match=r"at least 20 .* has 12 for model SmolLM2-135M-Instruct; run a batch job first") as error:
        train_predictor(fresh_db, str(tmp_path))
    assert isinstance(error.value, BatchBinError)
    assert latest_predictor(fresh_db) is None


def test_errored_results_are_not_training_rows(fresh_db, tmp_path):
    add_run(fresh_db, "small", synthetic_requests(25, seed=3, prefix="s"), with_results=True)
    fresh_db.execute("UPDATE results SET error = 'boom', output_tokens = NULL WHERE request_id IN ('s0','s1','s2','s3','s4','s5')")
    with pytest.raises(NotEnoughTrainingData, match="has 19"):
        train_predictor(fresh_db, str(tmp_path))


def test_auto_without_trained_predictor_is_the_shipped_one(history):
    assert predict_lengths(history, NEW_RUN, "auto", DEFAULT_MAX)["predictor"] == shipped_predictor()["version"]


def test_auto_skips_the_predictor_where_lengths_decide_nothing(history, tmp_path):
    """Every request runs at once in the engine: the fallback rule's quick estimates, saying why;
    where requests queue, the predictor; a predictor the user names, however the job runs."""
    requests = history.execute("select count(*) from tokens where run_id = $r", {"r": NEW_RUN}).fetchone()[0]
    assert requests > 2
    all_at_once = EngineRoom(max_num_seqs=requests)
    idle = predict_lengths(history, NEW_RUN, "auto", DEFAULT_MAX, engine_room=all_at_once)
    assert idle["predictor"] == "fallback" and "lengths decide nothing here" in idle["reason"]
    assert idle["rows"] == requests
    assert history.execute("select reason from predictor_choices where run_id = $r", {"r": NEW_RUN}).fetchone()[0] \
        == idle["reason"]
    shipped = shipped_predictor()["version"]
    queueing = EngineRoom(max_num_seqs=requests - 1)
    assert predict_lengths(history, NEW_RUN, "auto", DEFAULT_MAX, engine_room=queueing)["predictor"] == shipped
    short_of_kv = EngineRoom(max_num_seqs=requests, kv_cache_tokens=1)  # they queue for the KV cache
    assert predict_lengths(history, NEW_RUN, "auto", DEFAULT_MAX, engine_room=short_of_kv)["predictor"] == shipped
    named = train_tiny(history, tmp_path / "models")["version"]
    assert predict_lengths(history, NEW_RUN, named, DEFAULT_MAX, engine_room=all_at_once)["predictor"] == named


def test_auto_is_the_fallback_only_when_no_predictor_loads(history, tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "SHIPPED_PATH", tmp_path / "missing.pt")
    assert predict_lengths(history, NEW_RUN, "auto", DEFAULT_MAX)["predictor"] == "fallback"
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(registry, "SHIPPED_PATH", broken)
    assert predict_lengths(history, NEW_RUN, "auto", DEFAULT_MAX)["predictor"] == "fallback"


def test_missing_checkpoint_is_a_clear_error_when_named_and_skipped_by_auto(history, tmp_path):
    entry = train_tiny(history, tmp_path / "models")
    (tmp_path / "models" / entry["path"].rsplit("/", 1)[-1]).unlink()
    with pytest.raises(PredictorNotFound, match="train-predictor"):
        predict_lengths(history, NEW_RUN, entry["version"], DEFAULT_MAX)
    assert predict_lengths(history, NEW_RUN, "auto", DEFAULT_MAX)["predictor"] == shipped_predictor()["version"]


def test_predictors_are_per_model(history, tmp_path):
    """A run's own model's newest predictor; another model's runs get the shipped one."""
    add_run(history, "other-hist", synthetic_requests(300, seed=5, prefix="o"), with_results=True, model="org/other-llm")
    add_run(history, "other-new", synthetic_requests(10, seed=6, prefix="p"), with_results=False, model="org/other-llm")
    ours = train_tiny(history, tmp_path / "a", model=MODEL)
    assert ours["model"] == "SmolLM2-135M-Instruct" and ours["train_rows"] == 300  # not the other model's rows
    assert auto_predictor(history, MODEL)["version"] == ours["version"]
    assert auto_predictor(history, "org/other-llm")["version"] == shipped_predictor()["version"]
    assert predict_lengths(history, "other-new", "auto", DEFAULT_MAX)["predictor"] == shipped_predictor()["version"]
    theirs = train_tiny(history, tmp_path / "b")  # default: the model of the newest run with results
    assert theirs["model"] == "org/other-llm"
    assert predict_lengths(history, "other-new", "auto", DEFAULT_MAX)["predictor"] == theirs["version"]
    assert predict_lengths(history, NEW_RUN, "auto", DEFAULT_MAX)["predictor"] == ours["version"]
    listed = dict(history.execute("SELECT version, model FROM predictor_metrics").fetchall())
    assert listed == {ours["version"]: "SmolLM2-135M-Instruct", theirs["version"]: "org/other-llm"}


def test_model_key():
    assert model_key("/root/.cache/batchbin/models/SmolLM2-135M-Instruct/") == "SmolLM2-135M-Instruct"
    assert model_key("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert model_key(None) is None


def test_a_registered_version_can_be_named(history, tmp_path):
    entry = train_tiny(history, tmp_path / "models")
    assert predict_lengths(history, NEW_RUN, entry["version"], DEFAULT_MAX)["predictor"] == entry["version"]


def test_bad_specs_are_clear_errors(history):
    with pytest.raises(BatchBinError, match="unknown predictor 'nonsense'"):
        predict_lengths(history, NEW_RUN, "nonsense", DEFAULT_MAX)
    with pytest.raises(BatchBinError, match="no finished results"):
        predict_lengths(history, NEW_RUN, "oracle:nope", DEFAULT_MAX)


# --- the fallback rule, features, metrics -----------------------------------------------------

def test_fallback_rule():
    plain = {"prompt": "Tell me about rome.", "max_tokens": 200}
    assert fallback_length(plain, None) == 100                  # no history: max_tokens / 2
    assert fallback_length(plain, 60) == 60                      # the past median
    assert fallback_length(plain, 1000) == 200                   # never above max_tokens
    assert fallback_length({**plain, "prompt": "Briefly: rome?"}, 60) == 15       # short cue: / 4
    assert fallback_length({**plain, "prompt": "List facts about rome."}, 60) == 120  # long cue: * 2
    assert fallback_length({**plain, "prompt": "Describe rome in 50 words."}, 60) == 70  # asked length
    assert fallback_length({**plain, "max_tokens": 1, "prompt": "One word: rome?"}, 60) == 1


def test_fallback_base_is_other_runs_median(history):
    predict_lengths(history, NEW_RUN, "fallback", DEFAULT_MAX)
    median = history.execute("SELECT median(output_tokens) FROM results").fetchone()[0]
    plain = history.execute("SELECT pr.predicted_tokens FROM predictions pr JOIN prompts p USING (run_id, request_id) "
                            "WHERE pr.run_id = $r AND coalesce(p.prompt, p.messages::VARCHAR) LIKE '%Tell me about%' "
                            "AND coalesce(p.max_tokens, 256) >= $m LIMIT 1", {"r": NEW_RUN, "m": median}).fetchone()[0]
    assert plain == median


def test_features_are_deterministic_and_read_the_last_user_message():
    settings = FeatureSettings(n_buckets=64)
    chat = {"prompt": None, "max_tokens": 64, "messages": json.dumps([
        {"role": "user", "content": "Write an essay."}, {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": [{"type": "text", "text": "Now in one word?"}]}])}
    assert last_user_text(chat) == "Now in one word?"
    same = {**chat, "messages": json.loads(chat["messages"])}
    assert np.array_equal(feature_matrix([chat], settings), feature_matrix([same], settings))
    # fixed buckets (blake2b): the same in every process, unlike Python's salted hash()
    assert np.flatnonzero(hashed_bag("hello world", settings)).tolist() == [7, 24, 39]
    assert asked_length("give three short reasons") == 75 and asked_length("hello") is None


def test_metrics():
    true = np.array([1, 5, 10, 50, 100, 200, 300, 400])
    perfect = prediction_metrics(true, true, k_bins=4)
    assert perfect["mae"] == 0 and perfect["spearman"] == 1 and perfect["bin_accuracy"] == 1
    scaled = prediction_metrics(true, true * 3, k_bins=4)  # ranks well, scale off
    assert scaled["spearman"] == 1 and scaled["bin_accuracy"] == 1 and scaled["bin_accuracy_true_edges"] < 1
    reversed_ = prediction_metrics(true, true[::-1], k_bins=4)
    assert reversed_["spearman"] == -1 and reversed_["bin_accuracy"] == 0
    assert prediction_metrics(true, np.full(8, 7.0))["spearman"] is None
    assert ranks(np.array([3, 1, 3, 2])).tolist() == [3.5, 1, 3.5, 2]
    assert spearman(np.array([1.0]), np.array([2.0])) is None
    assert perfect["kendall_tau"] == 1 and reversed_["kendall_tau"] == -1
    assert perfect["bin_accuracy_k2"] == perfect["bin_accuracy_k4"] == perfect["bin_accuracy_k8"] == 1


def test_kendall_tau_closed_form():
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)  # 2 concordant, 1 discordant of 3
    # tau-b with a tie in the first: 2 concordant, 0 discordant, (3 - 1) and 3 untied pairs
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / np.sqrt(2 * 3))
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1
    assert kendall_tau([1, 2], [5, 5]) is None and kendall_tau([1], [1]) is None
    rng = np.random.default_rng(0)  # against the O(n^2) definition, with ties on both sides
    a, b = rng.integers(0, 6, 200), rng.integers(0, 9, 200)
    sa, sb = np.sign(a[:, None] - a[None, :]), np.sign(b[:, None] - b[None, :])
    expected = (sa * sb).sum() / np.sqrt((sa != 0).sum() * (sb != 0).sum())
    assert kendall_tau(a, b) == pytest.approx(expected)


def test_bin_accuracy_by_k():
    true = np.arange(1, 9, dtype=float)
    swapped = true.copy()
    swapped[[3, 4]] = swapped[[4, 3]]  # two neighbours across the k=2 median swap
    metrics = prediction_metrics(true, swapped)
    assert metrics["bin_accuracy_k2"] == 0.75 and metrics["bin_accuracy_k4"] == 0.75
    assert metrics["bin_accuracy_k8"] == 0.75  # 6 of 8 in their own bin of one


def test_run_prediction_quality(history):
    assert run_prediction_quality(history, NEW_RUN) is None  # nothing generated yet
    predict_lengths(history, "hist", "oracle:hist", DEFAULT_MAX)
    quality = run_prediction_quality(history, "hist")
    assert quality["n"] == 300 and quality["spearman"] == 1 and quality["mae"] == 0
    assert quality["k_bins"] == 4 and quality["predictor"] == "oracle:hist"
    assert quality["kendall_tau"] == 1 and quality["bin_accuracy_k8"] == 1
    assert quality["n_test"] == 300 and quality["n_train"] is None  # an oracle learnt nothing
    predict_lengths(history, "hist", "auto", DEFAULT_MAX)  # the shipped predictor
    quality = run_prediction_quality(history, "hist")
    assert quality["n_train"] == load_predictor(registry.SHIPPED_PATH).train_rows > 1000
    assert 0 < quality["kendall_tau"] < 1 and quality["n_test"] == 300


@pytest.mark.parametrize("workload", ["mixed-length", "chat-mix", "prefix-heavy"])
def test_combined_cue_patterns_agree_with_the_single_cues(workload):
    from batchbin.bench.workloads import make_workload
    from batchbin.predictors.features import LONG_CUES, SHORT_CUES, cue_flags, has_long_cue, has_short_cue

    texts = [last_user_text(row).lower() for row in make_workload(workload, 80, 0)]
    texts += ["answer in one word.", "yes or no?", "write an essay", "just say hi", "list three steps"]
    seen_short = seen_long = 0
    for text in texts:
        flags = cue_flags(text)
        assert has_short_cue(text) == any(flags[name] for name in SHORT_CUES), text
        assert has_long_cue(text) == any(flags[name] for name in LONG_CUES), text
        seen_short += has_short_cue(text)
        seen_long += has_long_cue(text)
    assert seen_short and seen_long  # both kinds occur, so the comparison means something


def test_a_requests_own_limits_bind_its_prediction():
    from batchbin.predictors.predict import within_request_limits

    requests = [{"max_tokens": 100, "min_tokens": 100},              # fixed by min_tokens = max_tokens
                {"max_tokens": 300, "ignore_eos": True},             # fixed by ignore_eos
                {"max_tokens": 300, "min_tokens": 50},               # floor above the prediction
                {"max_tokens": 300, "min_tokens": None, "ignore_eos": None}]
    assert within_request_limits(np.array([20.0, 20.0, 20.0, 20.0]), requests).tolist() == [100, 300, 50, 20]


def test_predictions_from_a_file_are_used_as_given(fresh_db, tmp_path):
    from batchbin.predictors.predict import choose_predictor

    path = tmp_path / "lengths.jsonl"
    path.write_text('{"id": "a", "predicted_tokens": 700}\n{"id": 7, "predicted_tokens": 0}\n')
    name, predict = choose_predictor(fresh_db, "r", f"file:{path}")
    values, names = predict([{"request_id": "a", "max_tokens": 64, "prompt": "x"},
                             {"request_id": "7", "max_tokens": 64, "prompt": "x"},
                             {"request_id": "b", "max_tokens": 64, "prompt": "x"}])
    assert name == f"file:{path}"
    assert values.tolist()[:2] == [700, 1]  # as given (at least one token), beyond max_tokens too
    assert names == [name, name, "fallback"] and 1 <= values[2] <= 64


@pytest.mark.parametrize("content, words", [
    (None, "no such file"),
    ('{"id": "a"}\n', "no column predicted_tokens"),
    ('{"id": "a", "predicted_tokens": "many"}\n', "id 'a' is not a number"),
    ('{"id": "a", "predicted_tokens": -3}\n', "id 'a' is not a number >= 0"),
])
def test_a_bad_predictions_file_is_a_clear_error(fresh_db, tmp_path, content, words):
    from batchbin.predictors.predict import PredictorSpecError, choose_predictor

    path = tmp_path / "lengths.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PredictorSpecError, match=words):
        choose_predictor(fresh_db, "r", f"file:{path}")


# --- which predictor auto takes, and its honesty in the report ---------------------------------

def test_auto_takes_the_served_models_own_predictor_once_it_learnt_enough_and_says_why(history, tmp_path):
    from batchbin.predictors.predict import auto_choice_of

    shipped = auto_choice_of(history, NEW_RUN)
    assert shipped.entry["version"] == shipped_predictor()["version"]
    assert "shipped predictor" in shipped.reason and "no predictor of SmolLM2-135M-Instruct yet" in shipped.reason
    ours = train_tiny(history, tmp_path / "models")  # 300 rows of the served model's answers
    own = auto_choice_of(history, NEW_RUN)
    assert own.entry["version"] == ours["version"] and "own predictor, learnt 300 of its answers" in own.reason
    counts = predict_lengths(history, NEW_RUN, "auto", DEFAULT_MAX)
    assert (counts["predictor"], counts["reason"]) == (ours["version"], own.reason)
    assert history.execute("SELECT predictor, reason FROM predictor_choices WHERE run_id = $r",
                           {"r": NEW_RUN}).fetchone() == (ours["version"], own.reason)
    too_few = registry.auto_choice(history, MODEL, min_own_rows=registry.AUTO_MIN_OWN_ROWS + 1000)
    assert too_few.entry["version"] == shipped_predictor()["version"]
    assert f"{ours['version']} has learnt only 300 of its answers" in too_few.reason
    assert "set by the user" in predict_lengths(history, NEW_RUN, "fallback", DEFAULT_MAX)["reason"]


def test_the_report_says_which_predictor_and_how_honest_it_was_with_and_without_the_probe(history, tmp_path):
    ours = train_tiny(history, tmp_path / "models")
    predict_lengths(history, "hist", "auto", DEFAULT_MAX)
    # a probe of 20 requests ran, and its calibration gave every other request its real length
    history.execute("INSERT INTO probe_requests (run_id, request_id, template_group) "
                    "SELECT 'hist', request_id, 0 FROM results WHERE run_id = 'hist' ORDER BY request_id LIMIT 20")
    history.execute("UPDATE predictions SET calibrated_tokens = r.output_tokens FROM results r "
                    "WHERE predictions.run_id = 'hist' AND r.run_id = 'hist' AND r.request_id = predictions.request_id "
                    "AND r.request_id NOT IN (SELECT request_id FROM probe_requests)")
    history.execute("INSERT INTO probe_choices VALUES ('hist', 20, 'asked for')")
    honesty = run_prediction_quality(history, "hist")["honesty"]
    assert honesty["predictor"] == ours["version"] and "own predictor" in honesty["why"]
    (origin,) = honesty["origins"]
    assert origin["own"] and origin["train_rows"] == 300 and origin["trained_on"] == "SmolLM2-135M-Instruct's answers"
    assert set(origin["held_out"]) == {"n_test", "kendall_tau", "spearman", "bin_accuracy_k4", "mae"}
    assert honesty["probe_requests"] == 20 and honesty["scored_requests"] == 280 and honesty["probe_why"] == "asked for"
    assert honesty["planned"] == {"kendall_tau": 1.0, "spearman": 1.0, "bin_accuracy_k4": 1.0, "mae": 0.0}
    raw = history.execute("SELECT pr.predicted_tokens, r.output_tokens FROM predictions pr JOIN results r "
                          "USING (run_id, request_id) WHERE run_id = 'hist' AND request_id NOT IN "
                          "(SELECT request_id FROM probe_requests)").fetchall()
    predicted, true = np.array([r[0] for r in raw]), np.array([r[1] for r in raw], dtype=float)
    assert honesty["raw"]["kendall_tau"] == round(kendall_tau(true, predicted), 4)
    assert honesty["raw"]["mae"] == round(float(np.abs(true - predicted).mean()), 3) > 0

    from batchbin.tasks.report import predictor_lines, report_markdown

    lines = predictor_lines({"predictor_quality": {"honesty": honesty}})
    text = "\n".join(f"{label} {words}" for label, words in lines)
    assert f"{ours['version']} (mlp), trained on SmolLM2-135M-Instruct's answers, 300 rows; the served model's own" in text
    assert "on 280 finished requests (the probe's 20 left out)" in text
    assert "as scheduled: Kendall tau 1.00, Spearman 1.00, k=4 bin accuracy 1.00, mean absolute error 0.0 tokens" in text
    assert "predictor alone (without the probe): Kendall tau" in text
    assert "The length predictor on this run" in report_markdown({"run_id": "hist", "predictor_quality":
                                                                  {"honesty": honesty}})
