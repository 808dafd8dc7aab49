"""Stage 3, prefix grouping (sql/prefixes.sql through tasks/prefixes.py) on hand-made runs whose
groups and ideal reuse are known, plus a randomized check against a plain-Python reference."""

from __future__ import annotations

import random

import pytest

from batchbin.tasks.prefixes import assign_prefix_groups


def seq(start: int, length: int) -> list[int]:
    """`length` token ids counting up from `start` (distinct ranges never share a token)."""
    return list(range(start, start + length))


def add_prompts(con, run_id: str, prompts: dict[str, list[int]]) -> None:
    con.executemany(
        "INSERT INTO tokens (run_id, request_id, token_ids, prompt_tokens) VALUES (?, ?, ?, ?)",
        [(run_id, rid, ids, len(ids)) for rid, ids in prompts.items()],
    )


def groups_of(con, run_id: str) -> list[tuple[list[str], int]]:
    """[(members in sort order, prefix_tokens)] in group-id order."""
    rows = con.execute(
        """SELECT pg.group_id, list(pr.request_id ORDER BY pr.sort_rank), any_value(pg.prefix_tokens)
           FROM prompt_groups pr JOIN prefix_groups pg USING (run_id, group_id)
           WHERE run_id = ? GROUP BY pg.group_id ORDER BY pg.group_id""",
        [run_id],
    ).fetchall()
    assert [r[0] for r in rows] == list(range(len(rows))), "group ids must be dense from 0"
    return [(members, prefix) for _, members, prefix in rows]


def prompt_rows(con, run_id: str) -> list[tuple]:
    return con.execute(
        "SELECT request_id, group_id, sort_rank, lcp_prev FROM prompt_groups WHERE run_id = ? ORDER BY sort_rank",
        [run_id],
    ).fetchall()


def table_rows(con, table: str, run_id: str) -> list[tuple]:
    return con.execute(f"SELECT * FROM {table} WHERE run_id = ? ORDER BY ALL", [run_id]).fetchall()


def check_consistency(con, run_id: str) -> None:
    """Invariants every result must satisfy, whatever the data."""
    ranks = prompt_rows(con, run_id)
    assert [r[2] for r in ranks] == list(range(len(ranks)))
    group_ids = [r[1] for r in ranks]
    assert group_ids == sorted(group_ids), "a group's members are contiguous in sort order"
    stats = table_rows(con, "run_prefix_stats", run_id)
    assert len(stats) == 1
    _, prompts, prompt_tokens, distinct, cached, groups = stats[0]
    assert prompts == len(ranks) and groups == len(set(group_ids))
    assert distinct + cached == prompt_tokens
    per_group = con.execute(
        "SELECT sum(members), sum(prompt_tokens), sum(distinct_tokens), count(*) FROM prefix_groups WHERE run_id = ?",
        [run_id],
    ).fetchone()
    assert per_group[0] == prompts and per_group[1] == prompt_tokens and per_group[3] == groups
    assert per_group[2] >= distinct, "groups alone never reuse more than the whole sorted run"


def test_no_sharing_gives_singletons_and_no_reuse(fresh_db):
    add_prompts(fresh_db, "r", {"c": seq(3000, 200), "a": seq(1000, 150), "b": seq(2000, 300)})
    stats = assign_prefix_groups(fresh_db, "r")
    assert stats == {"run_id": "r", "prompts": 3, "prompt_tokens": 650, "distinct_tokens": 650,
                     "ideal_cached_tokens": 0, "groups": 3}
    assert prompt_rows(fresh_db, "r") == [("a", 0, 0, 0), ("b", 1, 1, 0), ("c", 2, 2, 0)]
    assert groups_of(fresh_db, "r") == [(["a"], 0), (["b"], 0), (["c"], 0)]
    assert table_rows(fresh_db, "prefix_groups", "r") == [
        ("r", 0, 1, 0, 150, 150), ("r", 1, 1, 0, 300, 300), ("r", 2, 1, 0, 200, 200)]
    check_consistency(fresh_db, "r")


def test_identical_prompts_group_together_ties_by_request_id(fresh_db):
    same = seq(500, 200)
    add_prompts(fresh_db, "r", {"z": same, "x": same, "y": same, "other": seq(9000, 50)})
    stats = assign_prefix_groups(fresh_db, "r")
    assert stats["distinct_tokens"] == 200 + 50
    assert stats["ideal_cached_tokens"] == 400
    assert stats["groups"] == 2
    assert prompt_rows(fresh_db, "r") == [("x", 0, 0, 0), ("y", 0, 1, 200), ("z", 0, 2, 200), ("other", 1, 3, 0)]
    assert groups_of(fresh_db, "r") == [(["x", "y", "z"], 200), (["other"], 0)]
    assert table_rows(fresh_db, "prefix_groups", "r")[0] == ("r", 0, 3, 200, 600, 200)
    check_consistency(fresh_db, "r")


def test_prompt_that_is_a_prefix_of_another(fresh_db):
    base = seq(100, 150)
    add_prompts(fresh_db, "r", {"long": base + [7, 8], "short": base})
    stats = assign_prefix_groups(fresh_db, "r")
    assert prompt_rows(fresh_db, "r") == [("short", 0, 0, 0), ("long", 0, 1, 150)]
    assert groups_of(fresh_db, "r") == [(["short", "long"], 150)]
    assert stats["distinct_tokens"] == 152


def test_two_groups_and_a_loner(fresh_db):
    a, b = seq(1000, 150), seq(2000, 130)
    add_prompts(fresh_db, "r", {
        "a1": a + [1, 2], "a2": a + [3], "a3": a + [4, 5, 6],
        "b1": b + seq(50, 10), "b2": b + seq(70, 20),
        "loner": seq(5000, 140),
    })
    stats = assign_prefix_groups(fresh_db, "r")
    assert groups_of(fresh_db, "r") == [(["a1", "a2", "a3"], 150), (["b1", "b2"], 130), (["loner"], 0)]
    assert stats["prompt_tokens"] == 3 * 150 + 6 + 2 * 130 + 30 + 140
    assert stats["ideal_cached_tokens"] == 2 * 150 + 130
    assert table_rows(fresh_db, "prefix_groups", "r") == [
        ("r", 0, 3, 150, 456, 156), ("r", 1, 2, 130, 290, 160), ("r", 2, 1, 0, 140, 140)]
    check_consistency(fresh_db, "r")


def test_nested_split_wins_system_prompt_then_documents(fresh_db):
    # The brief's shape: a system prompt shared by 100 prompts, 10 documents of 1000 tokens each
    # shared by 10 questions. Keeping the system level reuses 99 * 200; splitting into documents
    # reuses 10 * 9 * 1200, so the documents are the groups.
    system = seq(100_000, 200)
    prompts = {}
    for d in range(10):
        doc = seq(200_000 + d * 1000, 1000)
        for q in range(10):
            prompts[f"d{d}q{q}"] = system + doc + seq(900_000 + (d * 10 + q) * 20, 20)
    add_prompts(fresh_db, "r", prompts)
    stats = assign_prefix_groups(fresh_db, "r")
    groups = groups_of(fresh_db, "r")
    assert groups == [([f"d{d}q{q}" for q in range(10)], 1200) for d in range(10)]
    assert stats["groups"] == 10
    assert stats["distinct_tokens"] == 200 + 10 * 1000 + 100 * 20  # system once, each document once, questions
    check_consistency(fresh_db, "r")


def test_nested_parent_wins_when_children_share_little(fresh_db):
    # 6 prompts share 400 tokens; only one pair shares 10 more. Keeping the parent reuses
    # 5 * 400 = 2000, splitting only 1 * 410.
    system = seq(10_000, 400)
    add_prompts(fresh_db, "r", {
        "p1": system + seq(1, 10) + [900], "p2": system + seq(1, 10) + [901],
        "p3": system + [50, 1], "p4": system + [60, 1], "p5": system + [70, 1], "p6": system + [80, 1],
    })
    stats = assign_prefix_groups(fresh_db, "r")
    assert groups_of(fresh_db, "r") == [(["p1", "p2", "p3", "p4", "p5", "p6"], 400)]
    assert stats["groups"] == 1
    # the group's own prefill with perfect reuse still counts the pair's extra 10 shared tokens
    prompt_tokens, distinct_tokens = 6 * 400 + 11 + 11 + 4 * 2, 400 + 11 + 1 + 4 * 2
    assert table_rows(fresh_db, "prefix_groups", "r") == [("r", 0, 6, 400, prompt_tokens, distinct_tokens)]
    check_consistency(fresh_db, "r")


def test_nested_mixed_levels_choose_per_subtree(fresh_db):
    # Two system prompts: under S1 the documents are worth their own groups, under S2 they are not.
    s1, s2 = seq(10_000, 150), seq(20_000, 150)
    prompts = {}
    for d in range(3):  # S1: 3 documents of 300 tokens x 4 questions: split 3*3*450 > keep 11*150
        for q in range(4):
            prompts[f"a{d}{q}"] = s1 + seq(30_000 + d * 300, 300) + [q]
    for q in range(8):  # S2: 8 prompts, one pair shares 5 more tokens: keep 7*150 > split 155
        prompts[f"b{q}"] = s2 + (seq(40_000, 5) + [q] if q < 2 else [50_000 + q])
    add_prompts(fresh_db, "r", prompts)
    assign_prefix_groups(fresh_db, "r")
    assert groups_of(fresh_db, "r") == [
        ([f"a0{q}" for q in range(4)], 450),
        ([f"a1{q}" for q in range(4)], 450),
        ([f"a2{q}" for q in range(4)], 450),
        (["b0", "b1"] + [f"b{q}" for q in range(2, 8)], 150),
    ]
    check_consistency(fresh_db, "r")


def test_min_shared_tokens_threshold(fresh_db):
    shared = seq(1000, 100)
    add_prompts(fresh_db, "r", {"a": shared + [1, 2], "b": shared + [3, 4]})
    stats_default = assign_prefix_groups(fresh_db, "r")  # one KV block: 128 > 100
    assert groups_of(fresh_db, "r") == [(["a"], 0), (["b"], 0)]
    stats_at = assign_prefix_groups(fresh_db, "r", min_shared_tokens=100)  # exactly enough
    assert groups_of(fresh_db, "r") == [(["a", "b"], 100)]
    stats_above = assign_prefix_groups(fresh_db, "r", min_shared_tokens=101)
    assert groups_of(fresh_db, "r") == [(["a"], 0), (["b"], 0)]
    # the ideal does not depend on the threshold, only the groups do
    for stats in (stats_default, stats_at, stats_above):
        assert (stats["distinct_tokens"], stats["ideal_cached_tokens"]) == (104, 100)
    assert [s["groups"] for s in (stats_default, stats_at, stats_above)] == [2, 1, 2]
    check_consistency(fresh_db, "r")


def test_min_shared_tokens_must_be_positive(fresh_db):
    with pytest.raises(ValueError):
        assign_prefix_groups(fresh_db, "r", min_shared_tokens=0)


def test_rerun_is_idempotent_and_replaces_stale_rows(fresh_db):
    system = seq(1000, 200)
    add_prompts(fresh_db, "r", {f"q{i}": system + [i] for i in range(5)} | {"solo": seq(7000, 10)})
    first = assign_prefix_groups(fresh_db, "r")
    snapshot = {t: table_rows(fresh_db, t, "r") for t in ("prompt_groups", "prefix_groups", "run_prefix_stats")}
    second = assign_prefix_groups(fresh_db, "r")
    assert second == first
    assert {t: table_rows(fresh_db, t, "r") for t in snapshot} == snapshot
    assert len(snapshot["prompt_groups"]) == 6 and len(snapshot["run_prefix_stats"]) == 1

    # the tokens change (a prompt is gone): a re-run leaves no row of the old grouping behind
    fresh_db.execute("DELETE FROM tokens WHERE run_id = 'r' AND request_id = 'solo'")
    third = assign_prefix_groups(fresh_db, "r")
    assert third["prompts"] == 5 and third["groups"] == 1
    assert len(table_rows(fresh_db, "prompt_groups", "r")) == 5
    assert len(table_rows(fresh_db, "prefix_groups", "r")) == 1
    check_consistency(fresh_db, "r")


def test_runs_are_isolated(fresh_db):
    shared = seq(1000, 200)
    add_prompts(fresh_db, "a", {"x": shared + [1], "y": shared + [2]})
    add_prompts(fresh_db, "b", {"x": shared + [3], "z": seq(5000, 20)})
    assign_prefix_groups(fresh_db, "a")
    before = {t: table_rows(fresh_db, t, "a") for t in ("prompt_groups", "prefix_groups", "run_prefix_stats")}
    stats_b = assign_prefix_groups(fresh_db, "b")
    assert {t: table_rows(fresh_db, t, "a") for t in before} == before
    # run b sees only its own prompts: its x shares 200 tokens with a's prompts, but not within b
    assert stats_b["ideal_cached_tokens"] == 0 and stats_b["groups"] == 2
    assert groups_of(fresh_db, "b") == [(["x"], 0), (["z"], 0)]


def test_empty_run_and_no_scratch_tables_left(fresh_db):
    stats = assign_prefix_groups(fresh_db, "nothing")
    assert stats == {"run_id": "nothing", "prompts": 0, "prompt_tokens": 0, "distinct_tokens": 0,
                     "ideal_cached_tokens": 0, "groups": 0}
    add_prompts(fresh_db, "r", {"a": seq(1, 200), "b": seq(1, 200)})
    assign_prefix_groups(fresh_db, "r")
    left = fresh_db.execute("SELECT table_name FROM duckdb_tables() WHERE table_name LIKE 'prefix_scratch%'").fetchall()
    assert left == []


# --- randomized check against a direct implementation of the rule --------------------------

def reference_groups(prompts: dict[str, list[int]], min_shared: int) -> tuple[list[tuple[list[str], int]], int]:
    """BatchLLM's rule written out recursively over the LCP intervals of the sorted prompts."""
    order = sorted(prompts, key=lambda rid: (prompts[rid], rid))
    lists = [prompts[rid] for rid in order]

    def common(a, b):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    lcp = [0] + [common(lists[i - 1], lists[i]) for i in range(1, len(lists))]

    def pieces(lo, hi, below):
        """Maximal runs of [lo, hi] whose inner boundaries have lcp > below."""
        start = lo
        for i in range(lo + 1, hi + 1):
            if lcp[i] <= below:
                yield start, i - 1
                start = i
        yield start, hi

    def best(lo, hi):  # a node: hi > lo, returns (reused tokens, groups)
        depth = min(lcp[lo + 1: hi + 1])
        split_value, split_groups = 0, []
        for a, b in pieces(lo, hi, depth):
            if b > a:
                value, groups = best(a, b)
                split_value += value
                split_groups += groups
        keep_value = (hi - lo) * depth
        if keep_value >= split_value:
            return keep_value, [(lo, hi, depth)]
        return split_value, split_groups

    chosen = []
    for a, b in pieces(0, len(lists) - 1, min_shared - 1):
        if b > a:
            chosen += best(a, b)[1]
    starts = {lo: (hi, depth) for lo, hi, depth in chosen}
    result, i = [], 0
    while i < len(lists):
        hi, depth = starts.get(i, (i, 0))
        result.append((order[i: hi + 1], depth))
        i = hi + 1
    distinct = sum(len(ids) for ids in lists) - sum(lcp)
    return result, distinct


def random_nested_prompts(rng: random.Random, count: int) -> dict[str, list[int]]:
    """Prompts built from a small random prefix tree, so sharing nests at varied depths."""
    tree = [[]]
    for _ in range(count // 3):
        parent = rng.choice(tree)
        tree.append(parent + [rng.randrange(6) for _ in range(rng.randrange(1, 12))])
    prompts = {}
    for i in range(count):
        base = rng.choice(tree)
        prompts[f"r{i:03d}"] = base + [rng.randrange(6) for _ in range(rng.randrange(0, 4))]
    return prompts


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_on_random_nested_prompts(fresh_db, seed):
    rng = random.Random(seed)
    prompts = random_nested_prompts(rng, 150)
    add_prompts(fresh_db, "r", prompts)
    for min_shared in (1, 4, 12):
        stats = assign_prefix_groups(fresh_db, "r", min_shared_tokens=min_shared)
        expected, distinct = reference_groups(prompts, min_shared)
        assert groups_of(fresh_db, "r") == expected, f"min_shared_tokens={min_shared}"
        assert stats["distinct_tokens"] == distinct
        check_consistency(fresh_db, "r")
