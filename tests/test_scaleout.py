"""Shard planning for scale-out (batchbin/scaleout/shares.py): whole prefix families, balanced by
predicted work, handed out in schedule order, stolen at the tail, given back when an engine is lost."""

from __future__ import annotations

import pytest

from batchbin.scaleout.shares import (OUTPUT_TOKEN_COST, Family, WorkPool, balance, chunked, families_from_rows,
                               plan_shares, request_cost, split_cores)


def rows_of(spec: list[tuple[int, int, int, float]]) -> list[dict]:
    """(family, members, new prompt tokens each, predicted tokens each) -> work rows in order."""
    rows, position = [], 0
    for family, members, prompt, predicted in spec:
        for member in range(members):
            rows.append({"request_id": f"f{family}-{member}", "position": position, "family": family,
                         "new_prompt_tokens": prompt, "predicted_tokens": predicted})
            position += 1
    return rows


def all_ids(pool_or_shares) -> list[str]:
    return [request_id for share in pool_or_shares for chunk in share.chunks for request_id in chunk.request_ids]


def test_families_keep_members_in_schedule_order_and_sum_their_cost():
    rows = rows_of([(0, 2, 100, 10), (1, 1, 50, 0)])
    rows.reverse()  # order of arrival does not matter
    families = families_from_rows(rows)
    assert [f.request_ids for f in families] == [("f0-0", "f0-1"), ("f1-0",)]
    assert families[0].cost == 2 * request_cost(100, 10) == 2 * (100 + OUTPUT_TOKEN_COST * 10)
    assert families[1].first_position == 2


def test_balance_never_splits_a_family_and_evens_the_load():
    families = families_from_rows(rows_of([(0, 5, 100, 50), (1, 1, 300, 10), (2, 2, 200, 20),
                                           (3, 3, 10, 5), (4, 1, 900, 100)]))
    shares = balance(families, 2)
    placed = {f.family: i for i, share in enumerate(shares) for f in share}
    assert sorted(placed) == [0, 1, 2, 3, 4]
    loads = [sum(f.cost for f in share) for share in shares]
    assert max(loads) - min(loads) <= max(f.cost for f in families)
    for share in shares:  # schedule order inside a share
        assert [f.first_position for f in share] == sorted(f.first_position for f in share)


def test_chunks_join_consecutive_families_and_keep_big_ones_whole():
    families = [Family(i, (f"r{i}a", f"r{i}b"), i * 2, cost) for i, cost in enumerate([1, 1, 1, 10, 1])]
    chunks = chunked(families, target_cost=2.5)
    assert [c.request_ids for c in chunks] == [["r0a", "r0b", "r1a", "r1b"], ["r2a", "r2b"], ["r3a", "r3b"],
                                               ["r4a", "r4b"]]


def test_plan_covers_every_request_once():
    rows = rows_of([(i, 1 + i % 4, 50 + 7 * i, 3 * i) for i in range(40)])
    shares = plan_shares(families_from_rows(rows), engines=3)
    ids = all_ids(shares)
    assert sorted(ids) == sorted(r["request_id"] for r in rows) and len(ids) == len(set(ids))


def drain(pool: WorkPool, engine: int, steal_from_unstarted: bool = False) -> list[str]:
    taken = []
    while (chunk := pool.take(engine, steal_from_unstarted)) is not None:
        taken += chunk.request_ids
        pool.done(engine, chunk.request_ids)
    return taken


def test_an_engine_that_finishes_early_steals_from_the_tail_of_the_busiest_share():
    rows = rows_of([(i, 2, 100, 20) for i in range(16)])
    pool = WorkPool(plan_shares(families_from_rows(rows), engines=2, chunks_per_engine=4))
    own_tail = pool.shares[1].chunks[-1].request_ids
    pool.take(1)  # engine 1 is up: it took its first chunk, and holds it
    own = drain(pool, 0)
    stolen = drain(pool, 0)
    assert stolen == [] and pool.stolen[0] == 3  # it took engine 1's other three chunks, tail first
    assert own[-len(own_tail) * 3:][:len(own_tail)] == own_tail
    assert not pool.finished()  # engine 1 still holds its first chunk


def test_a_share_waits_for_its_engine_while_it_builds_unless_the_driver_gives_up_waiting():
    rows = rows_of([(i, 2, 100, 20) for i in range(16)])
    pool = WorkPool(plan_shares(families_from_rows(rows), engines=2, chunks_per_engine=4))
    own = drain(pool, 0)
    assert pool.stolen[0] == 0 and len(own) == 16 and not pool.finished()
    late = drain(pool, 0, steal_from_unstarted=True)  # engine 1's start hangs: its share is taken
    assert pool.stolen[0] == 4 and sorted(own + late) == sorted(r["request_id"] for r in rows)
    assert pool.finished()


def test_a_lost_engine_gives_back_exactly_what_it_had_not_finished():
    rows = rows_of([(i, 3, 100, 20) for i in range(12)])
    pool = WorkPool(plan_shares(families_from_rows(rows), engines=2, chunks_per_engine=3))
    held = pool.take(1)
    pool.done(1, held.request_ids[:1])  # one result came back before the engine died
    assert pool.engine_lost(1) == len(held.request_ids) - 1
    assert pool.requeued == len(held.request_ids) - 1
    with pytest.raises(ValueError, match="lost"):
        pool.take(1)
    first = pool.take(0)
    assert first.request_ids == held.request_ids[1:]  # the lost engine's unfinished work comes first
    pool.done(0, first.request_ids)
    rest = drain(pool, 0)
    finished = held.request_ids[:1] + first.request_ids + rest
    assert sorted(finished) == sorted(r["request_id"] for r in rows) and len(finished) == len(set(finished))
    assert pool.finished()


def test_done_names_results_an_engine_did_not_hold():
    pool = WorkPool(plan_shares(families_from_rows(rows_of([(0, 2, 10, 1)])), engines=1))
    chunk = pool.take(0)
    assert pool.done(0, chunk.request_ids[:1]) == []
    assert pool.done(0, chunk.request_ids[:1] + ["nobody"]) == [chunk.request_ids[0], "nobody"]  # twice, unknown
    assert not pool.finished() and pool.outstanding(0) == 1


def test_finished_waits_for_work_held_by_other_engines():
    pool = WorkPool(plan_shares(families_from_rows(rows_of([(0, 1, 10, 1), (1, 1, 10, 1)])), engines=2))
    a, b = pool.take(0), pool.take(1)
    pool.done(0, a.request_ids)
    assert pool.take(0) is None and not pool.finished()  # engine 1 may still give work back
    pool.done(1, b.request_ids)
    assert pool.finished()


def test_split_cores_gives_each_engine_its_own():
    assert [split_cores((0, 1), 2, slot) for slot in range(2)] == [(0,), (1,)]
    assert [split_cores((0, 1, 2, 3, 4), 2, slot) for slot in range(2)] == [(0, 1, 2), (3, 4)]
    assert split_cores((0,), 2, 1) == (0,)
    with pytest.raises(ValueError, match="slot 2 of 2"):
        split_cores((0, 1), 2, 2)


def test_bad_counts_are_named():
    with pytest.raises(ValueError, match="engines must be at least 1"):
        balance([], 0)
    with pytest.raises(ValueError, match="chunks_per_engine"):
        plan_shares([], 2, chunks_per_engine=0)
