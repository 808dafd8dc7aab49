"""Stage 5 SQL: bins by predicted length and the hand-over order, on a small hand-made run."""

from __future__ import annotations

import json

import pytest

from batchbin.tasks.prefixes import assign_prefix_groups
from batchbin.scheduling import ORDERS, JobLoad, choose_order, kv_cache_capacity, lengths_matter, schedule_run

BLOCK = 4
# (request, tokens, predicted output). Two families sharing >= 4 tokens, and two loners.
REQUESTS = [
    ("a1", [1, 2, 3, 4, 5, 10], 100), ("a2", [1, 2, 3, 4, 5, 11], 90), ("a3", [1, 2, 3, 4, 6], 80),
    ("b1", [7, 7, 7, 7, 1], 5), ("b2", [7, 7, 7, 7, 2], 6),
    ("c", [3, 3], 50), ("d", [9, 1], 1),
]


@pytest.fixture
def run_db(fresh_db):
    for row, (request_id, ids, predicted) in enumerate(REQUESTS, start=1):
        fresh_db.execute("insert into prompts (run_id, request_id, row_number, prompt) values ('r', $i, $n, 'x')",
                         {"i": request_id, "n": row})
        fresh_db.execute("insert into tokens values ('r', $i, $t, $l)", {"i": request_id, "t": ids, "l": len(ids)})
        fresh_db.execute("insert into predictions (run_id, request_id, predicted_tokens, predictor) values ('r', $i, $p, 'test')", {"i": request_id, "p": predicted})
    assign_prefix_groups(fresh_db, "r", BLOCK)
    return fresh_db


def order_of(con, order, k_bins=2):
    assert schedule_run(con, "r", k_bins, order, BLOCK) == len(REQUESTS)
    return [r[0] for r in con.execute("select request_id from schedule where run_id = 'r' order by position").fetchall()]


def test_input_and_sorted_orders(run_db):
    assert order_of(run_db, "input") == [r[0] for r in REQUESTS]
    assert order_of(run_db, "sorted") == ["a1", "a2", "a3", "c", "b1", "b2", "d"]


@pytest.mark.parametrize("order", ["group", "hybrid", "sorted"])
def test_families_stay_together_in_token_order(run_db, order):
    got = order_of(run_db, order)
    a = [got.index(x) for x in ("a1", "a2", "a3")]
    b = [got.index(x) for x in ("b1", "b2")]
    assert a == list(range(a[0], a[0] + 3)) and b == [b[0], b[0] + 1]


def test_group_order_puts_decode_heavy_families_first(run_db):
    got = order_of(run_db, "group")
    assert got[:3] == ["a1", "a2", "a3"]  # 270 predicted tokens over 8 distinct prompt tokens
    assert got[-1] == "b2" or got[-1] == "d"


def test_bins_hold_the_longest_predictions_first(run_db):
    order_of(run_db, "bin", k_bins=2)
    bins = dict(run_db.execute("select request_id, bin from schedule where run_id = 'r'").fetchall())
    assert bins["a1"] == 0 and bins["d"] == 1
    got = order_of(run_db, "bin", k_bins=2)
    assert all(bins[x] == 0 for x in got[:3])


def test_rescheduling_replaces_rows(run_db):
    for order in ORDERS:
        order_of(run_db, order)
    assert run_db.execute("select count(*) from schedule").fetchone()[0] == len(REQUESTS)


def test_unknown_order_is_refused(run_db):
    with pytest.raises(ValueError, match="unknown order"):
        schedule_run(run_db, "r", 2, "random", BLOCK)


def test_auto_order_uses_token_order_when_every_request_runs_at_once(run_db):
    got = order_of(run_db, "auto")
    used, reason = run_db.execute("select used, reason from schedule_choices where run_id = 'r'").fetchone()
    assert used == "sorted" and "all 7 requests run at once" in reason
    assert got == order_of(run_db, "sorted")


def test_auto_order_bins_by_length_when_requests_queue_and_lengths_differ(run_db):
    run_db.execute("update predictions set predicted_tokens = 1000 where request_id = 'a1'")  # CV 0.85 -> 1.9
    assert schedule_run(run_db, "r", 2, "auto", BLOCK, max_num_seqs=2) == len(REQUESTS)
    got = [r[0] for r in run_db.execute("select request_id from schedule where run_id = 'r' order by position").fetchall()]
    assert got == order_of(run_db, "hybrid")
    assert run_db.execute("select used from schedule_choices where run_id = 'r'").fetchone()[0] == "hybrid"


@pytest.mark.parametrize("requests, spread, expected", [
    (100, 2.0, "sorted"),   # fits in one wave of 256 sequences
    (1000, 0.2, "sorted"),  # queues, but lengths are alike
    (1000, 0.9, "sorted"),  # queues, lengths differ, but not enough to pay (chat-mix, prefix-heavy)
    (1000, 1.3, "hybrid"),  # queues and lengths differ
])
def test_choose_order(requests, spread, expected):
    assert choose_order("auto", requests, 256, spread).order == expected


@pytest.mark.parametrize("requests, max_num_seqs, needed, held, matter, words", [
    (1000, 256, None, None, True, "1000 requests queue for 256 sequences"),
    (244, 32, None, None, True, "244 requests queue for 32 sequences"),
    (244, 256, None, None, False, "all 244 requests run at once"),
    (244, 256, 244 * 684, None, False, "all 244 requests run at once"),        # cache size unknown
    (244, 256, 244 * 684, 46_592, True, "the KV cache holds 46,592"),         # they cannot all hold it
    (244, 256, 244 * 100, 46_592, False, "KV cache 46,592 tokens"),           # they can
    (32, 32, 32 * 684, 46_592, False, "all 32 requests run at once"),
])
def test_whether_lengths_matter_is_decided_from_the_job(requests, max_num_seqs, needed, held, matter, words):
    verdict = lengths_matter(JobLoad(requests, max_num_seqs, needed, held))
    assert verdict.matter is matter and words in verdict.reason


def test_auto_order_under_kv_pressure_decides_on_the_planned_spread():
    assert choose_order("auto", 200, 256, 1.3, 200 * 700, 46_592).order == "hybrid"
    alike = choose_order("auto", 200, 256, 0.4, 200 * 700, 46_592)
    assert alike.order == "sorted" and "planned lengths are alike" in alike.reason
    assert choose_order("auto", 200, 256, 1.3, 200 * 100, 46_592).order == "sorted"


def test_the_kv_cache_capacity_comes_from_the_models_shape(tmp_path):
    config = {"num_attention_heads": 9, "hidden_size": 576, "num_hidden_layers": 30, "num_key_value_heads": 3,
              "intermediate_size": 1536, "vocab_size": 49152}
    (tmp_path / "config.json").write_text(json.dumps(config))
    # SmolLM2-135M: 2 * 30 layers * 3 heads * 64 dims * 4 bytes = 46,080 bytes a token in float32
    assert kv_cache_capacity(str(tmp_path), 1.0, "float32") == 2**30 // 46_080 == 23_301
    assert kv_cache_capacity(str(tmp_path), 1.0, "bfloat16") == 2**30 // 23_040
    assert kv_cache_capacity(str(tmp_path), None, "float32") is None     # a GPU's share: not known before
    assert kv_cache_capacity("org/hub-id", 1.0, "float32") is None       # no config.json here


def test_an_order_the_user_sets_is_kept():
    choice = choose_order("bin", 10, 256, 0.0)
    assert (choice.order, choice.reason) == ("bin", "set by the user")


def test_a_schedule_that_fails_halfway_leaves_the_old_one_whole(run_db, monkeypatch):
    import batchbin.scheduling as schedule_module

    before = order_of(run_db, "input")
    real_run = schedule_module.execute

    def fails_on_the_choice(con, name, params=None):
        if name == "schedule.record_choice":
            raise OSError("disk full")
        return real_run(con, name, params)

    monkeypatch.setattr(schedule_module, "execute", fails_on_the_choice)
    with pytest.raises(OSError, match="disk full"):
        schedule_run(run_db, "r", 2, "sorted", BLOCK)
    monkeypatch.undo()
    assert [r[0] for r in run_db.execute("select request_id from schedule where run_id = 'r' order by position").fetchall()] == before


def test_identical_greedy_requests_are_generated_once_and_answered_alike(run_db):
    from batchbin.store.queries import execute, fetch_one
    from batchbin.store.checkpoints import store_results

    # "c" again under two more ids: one greedy (a duplicate), one sampled (its own answer)
    for request_id, row, temperature in (("c-again", 8, None), ("c-sampled", 9, 0.7)):
        run_db.execute("insert into prompts (run_id, request_id, row_number, prompt, temperature) "
                       "values ('r', $i, $n, 'x', $t)", {"i": request_id, "n": row, "t": temperature})
        run_db.execute("insert into tokens values ('r', $i, [3, 3], 2)", {"i": request_id})
        run_db.execute("insert into predictions (run_id, request_id, predicted_tokens, predictor) values ('r', $i, 50, 'test')", {"i": request_id})
    assign_prefix_groups(run_db, "r", BLOCK)
    schedule_run(run_db, "r", 2, "sorted", BLOCK)
    marked = dict(run_db.execute("select request_id, duplicate_of from schedule where duplicate_of is not null").fetchall())
    first = min(("c", "c-again"), key=lambda i: run_db.execute(
        "select position from schedule where request_id = $i", {"i": i}).fetchone()[0])
    assert marked == {({"c", "c-again"} - {first}).pop(): first}
    work = [r[0] for r in execute(run_db, "generate.work_in_order", {"run_id": "r", "after": -1, "limit": 100}).fetchall()]
    assert len(work) == len(REQUESTS) + 1 and "c-sampled" in work and set(marked).isdisjoint(work)
    assert fetch_one(run_db, "generate.count_work", {"run_id": "r"})[0] == len(REQUESTS) + 1

    store_results(run_db, "r", [{"request_id": first, "output_text": "same answer", "output_tokens": 2,
                                 "prompt_tokens": 2, "finish_reason": "stop", "batch": 0}], attempt=1)
    [(text, reason, cached)] = run_db.execute("select output_text, finish_reason, cached_tokens from results "
                                              "where request_id = $i", {"i": next(iter(marked))}).fetchall()
    assert (text, reason, cached) == ("same answer", "stop", 2)
    # a stop between a checkpoint and its copies: generation's start copies what is missing
    run_db.execute("delete from results where request_id = $i", {"i": next(iter(marked))})
    execute(run_db, "generate.copy_duplicates", {"run_id": "r", "leaders": None})
    assert run_db.execute("select count(*) from results where request_id = $i",
                          {"i": next(iter(marked))}).fetchone()[0] == 1
