"""Answers reused across runs (tasks/reuse.py, batchbin/engine/reuse_key.py, sql/reuse.sql):
the key's fields (a property test with hypothesis: a changed model, prompt, parameter or seed
never hits), the lookup in DuckDB (errors and unseeded sampled requests never reused, the run
an answer came from recorded), the model fingerprint and its cache, and whole runs on the real
default model: a second job with new and changed rows generates only those, the rest
byte-identical; off with --no-reuse-results; with resume, identical requests and OpenAI batch files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchbin.engine.fingerprint import model_fingerprint
from batchbin.engine.reuse_key import reuse_key
from batchbin.engine.step_loop import SamplingDefaults, output_params
from batchbin.store import db
from batchbin.tasks.reuse import reuse_run

MODEL = "sha256:model-a"
BASE = {"request_id": "q1", "token_ids": [1, 2, 3, 4], "max_tokens": None, "min_tokens": None, "ignore_eos": None,
        "temperature": None, "top_p": None, "seed": None, "stop": None, "response_format": None}


def key_of(row: dict, defaults: SamplingDefaults, model: str = MODEL) -> str | None:
    return reuse_key(model, row["token_ids"], output_params(row, defaults))


# --- the key -------------------------------------------------------------------------------

# one field of the request (or the job's defaults, or the model) changed to a value that vLLM
# would treat differently
CHANGES = {
    "model": lambda row, d, v: (row, d, MODEL + "x"),
    "prompt": lambda row, d, v: ({**row, "token_ids": row["token_ids"] + [v % 50000]}, d, MODEL),
    "template": lambda row, d, v: ({**row, "token_ids": [v % 50000 + 1] + row["token_ids"]}, d, MODEL),
    "max_tokens": lambda row, d, v: ({**row, "max_tokens": output_params(row, d)["max_tokens"] + 1 + v % 100}, d, MODEL),
    "min_tokens": lambda row, d, v: ({**row, "min_tokens": output_params(row, d)["min_tokens"] + 1,
                                      "max_tokens": output_params(row, d)["max_tokens"] + 1}, d, MODEL),
    "ignore_eos": lambda row, d, v: ({**row, "ignore_eos": not output_params(row, d)["ignore_eos"]}, d, MODEL),
    "stop": lambda row, d, v: ({**row, "stop": (row["stop"] or []) + [f"stop{v}"]}, d, MODEL),
    "temperature": lambda row, d, v: ({**row, "temperature": output_params(row, d)["temperature"] + 0.25}, d, MODEL),
    "top_p": lambda row, d, v: ({**row, "top_p": 0.5 if output_params(row, d)["top_p"] != 0.5 else 0.75}, d, MODEL),
    "response_format": lambda row, d, v: ({**row, "response_format": json.dumps({"type": "json_object"})
                                           if row["response_format"] is None else None}, d, MODEL),
    "default_max_tokens": lambda row, d, v: ({**row, "max_tokens": None}, SamplingDefaults(
        **{**d.__dict__, "max_tokens": output_params(row, d)["max_tokens"] + 1}), MODEL),
}

requests = st.fixed_dictionaries({
    "request_id": st.text(min_size=1, max_size=8),
    "token_ids": st.lists(st.integers(0, 49151), min_size=1, max_size=40),
    "max_tokens": st.one_of(st.none(), st.integers(1, 500)),
    "min_tokens": st.one_of(st.none(), st.integers(0, 20)),
    "ignore_eos": st.one_of(st.none(), st.booleans()),
    "temperature": st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0])),
    "top_p": st.one_of(st.none(), st.sampled_from([0.9, 1.0])),
    "seed": st.one_of(st.none(), st.integers(0, 2**31 - 1)),
    "stop": st.one_of(st.none(), st.lists(st.sampled_from(["\n", "END", "."]), min_size=1, max_size=2)),
    "response_format": st.one_of(st.none(), st.just(json.dumps({"type": "json_object"}))),
})
defaults = st.builds(SamplingDefaults, max_tokens=st.integers(1, 300), temperature=st.sampled_from([0.0, 0.7]),
                     top_p=st.sampled_from([0.95, 1.0]), seed=st.one_of(st.none(), st.integers(0, 1000)),
                     max_model_len=st.just(2048))


@settings(max_examples=300, deadline=None)
@given(row=requests, job=defaults, change=st.sampled_from(sorted(CHANGES)), value=st.integers(0, 10**6))
def test_a_changed_model_template_parameter_or_seed_never_hits(row, job, change, value):
    key = key_of(row, job)
    changed_row, changed_job, model = CHANGES[change](row, job, value)
    assert key_of(row, job) == key  # the same request: the same key
    if key is not None:
        assert key_of(changed_row, changed_job, model) != key, change


@settings(max_examples=200, deadline=None)
@given(row=requests, job=defaults, other_seed=st.integers(0, 2**31 - 1))
def test_the_seed_counts_where_the_request_samples_only(row, job, other_seed):
    params = output_params(row, job)
    reseeded = {**row, "seed": other_seed}
    if params["temperature"] == 0:  # greedy: the seed changes nothing
        assert key_of(reseeded, job) == key_of(row, job)
    elif params["seed"] is None:  # sampled without any seed: never reused
        assert key_of(row, job) is None
    elif output_params(reseeded, job)["seed"] != params["seed"]:
        assert key_of(reseeded, job) != key_of(row, job)


def test_an_unseeded_sampled_request_has_no_key():
    assert key_of({**BASE, "temperature": 0.7}, SamplingDefaults(seed=None)) is None
    assert key_of({**BASE, "temperature": 0.7}, SamplingDefaults(seed=3)) is not None  # derived from the job's seed
    assert key_of({**BASE, "temperature": 0.7, "seed": 5}, SamplingDefaults(seed=None)) is not None
    assert key_of(BASE, SamplingDefaults(seed=None)) is not None  # greedy
    assert key_of(BASE, SamplingDefaults(), model=None) is None  # no model fingerprint: nothing reused


def test_max_tokens_counts_as_vllm_gets_it_within_the_context():
    """A limit beyond the context's room is the room either way: the same answer."""
    job = SamplingDefaults(max_model_len=10)
    assert key_of({**BASE, "max_tokens": 50}, job) == key_of({**BASE, "max_tokens": 60}, job)
    assert key_of({**BASE, "max_tokens": 5}, job) != key_of({**BASE, "max_tokens": 6}, job)


# --- the lookup in DuckDB ------------------------------------------------------------------

def add_request(con, run_id: str, request_id: str, token_ids: list[int], temperature: float | None = None,
                seed: int | None = None) -> None:
    con.execute("insert into prompts (run_id, request_id, row_number, prompt, temperature, seed) values (?, ?, 1, 'p', ?, ?)",
                [run_id, request_id, temperature, seed])
    con.execute("insert into tokens values (?, ?, ?, ?)", [run_id, request_id, token_ids, len(token_ids)])


def add_result(con, run_id: str, request_id: str, text: str | None, error: str | None = None,
               reused_from: str | None = None) -> None:
    con.execute("insert into results (run_id, request_id, output_text, prompt_tokens, output_tokens, cached_tokens, "
                "finish_reason, error, finished_at, reused_from) values (?, ?, ?, 4, 3, 0, 'stop', ?, now(), ?)",
                [run_id, request_id, text, error, reused_from])


def answers(con, run_id: str) -> dict[str, tuple]:
    rows = con.execute("select request_id, output_text, reused_from from results where run_id = ?", [run_id]).fetchall()
    return {request_id: (text, source) for request_id, text, source in rows}


def test_a_later_run_takes_stored_answers_but_never_errors_or_unseeded_samples(fresh_db):
    con, job = fresh_db, SamplingDefaults(seed=None)
    for rid, ids, temperature, seed in [("a", [1, 2], None, None), ("b", [3, 4], None, None), ("c", [5, 6], 0.8, None),
                                        ("d", [7, 8], 0.8, 42), ("e", [9], None, None)]:
        add_request(con, "first", rid, ids, temperature, seed)
    reuse_run(con, "first", MODEL, job, enabled=True)
    add_result(con, "first", "a", "answer a")
    add_result(con, "first", "b", None, error="engine died")
    add_result(con, "first", "c", "sampled c")
    add_result(con, "first", "d", "seeded d")  # "e" has no result: nothing to reuse
    # the next run: new ids, the same requests, and one new prompt
    for rid, ids, temperature, seed in [("A", [1, 2], None, None), ("B", [3, 4], None, None), ("C", [5, 6], 0.8, None),
                                        ("D", [7, 8], 0.8, 42), ("E", [9], None, None), ("F", [1, 2, 3], None, None),
                                        ("A2", [1, 2], None, None)]:
        add_request(con, "second", rid, ids, temperature, seed)
    assert reuse_run(con, "second", MODEL, job, enabled=True) == 3
    assert answers(con, "second") == {"A": ("answer a", "first"), "A2": ("answer a", "first"), "D": ("seeded d", "first")}

    # a third run names the run that generated the answer, not the one that copied it
    add_request(con, "third", "x", [1, 2])
    assert reuse_run(con, "third", MODEL, job, enabled=True) == 1
    assert answers(con, "third") == {"x": ("answer a", "first")}

    # another model never hits; switched off, the answers taken before are dropped (to be generated)
    assert reuse_run(con, "third", MODEL + "-other", job, enabled=True) == 0
    assert reuse_run(con, "third", MODEL, job, enabled=True) == 1
    assert reuse_run(con, "third", MODEL, job, enabled=False) == 0
    assert answers(con, "third") == {}


def test_a_request_with_its_own_result_keeps_it(fresh_db):
    """A resumed run: what it generated itself stays; only requests without a result take one."""
    con, job = fresh_db, SamplingDefaults()
    add_request(con, "first", "a", [1, 2])
    reuse_run(con, "first", MODEL, job, enabled=True)
    add_result(con, "first", "a", "old answer")
    add_request(con, "second", "a", [1, 2])
    add_result(con, "second", "a", "own answer")
    assert reuse_run(con, "second", MODEL, job, enabled=True) == 0
    assert answers(con, "second") == {"a": ("own answer", None)}


def test_an_unchanged_row_keeps_its_own_answer_among_identical_requests(fresh_db):
    """Two identical requests of an earlier run whose stored answers differ (a database written
    before identical requests were generated once): each id takes its own answer back."""
    con, job = fresh_db, SamplingDefaults()
    for rid in ("a", "b"):
        add_request(con, "first", rid, [1, 2])
    reuse_run(con, "first", MODEL, job, enabled=True)
    add_result(con, "first", "a", "answer of a")
    add_result(con, "first", "b", "answer of b")
    for rid in ("b", "a", "c"):
        add_request(con, "second", rid, [1, 2])
    assert reuse_run(con, "second", MODEL, job, enabled=True) == 3
    answered = answers(con, "second")
    assert answered["a"] == ("answer of a", "first") and answered["b"] == ("answer of b", "first")
    assert answered["c"][0] in ("answer of a", "answer of b")  # a new id: either stored answer


def test_identical_requests_run_once_in_the_probes_phase_and_after_it(fresh_db):
    """The probe's schedule marks identical requests too (a probe request and its twin in the
    rest of the job ran both once); the schedule after it keeps as leader the one that has a
    result, so neither phase generates an answer twice."""
    import pyarrow as pa

    from batchbin.store.queries import execute
    from batchbin.tasks.probe import choose_probe

    con = fresh_db
    for rank, (rid, ids) in enumerate([("p", [1, 2]), ("q", [1, 2]), ("r", [3, 4]), ("s", [1, 2])]):
        add_request(con, "run", rid, ids)
        con.execute("insert into prompt_groups (run_id, request_id, group_id, sort_rank) values ('run', ?, 0, ?)",
                    [rid, rank])
        con.execute("insert into predictions (run_id, request_id, predicted_tokens, predictor) values ('run', ?, 10, 'x')",
                    [rid])
    templates = pa.table({"request_id": ["s", "r"], "template_group": [1, 2]})
    assert choose_probe(con, "run", 1, 16, templates) == 1
    probe = con.execute("select request_id from probe_requests").fetchone()[0]
    duplicates = dict(con.execute("select request_id, duplicate_of from schedule where duplicate_of is not null").fetchall())
    twins = {"p", "q", "s"}
    leader = probe if probe in twins else sorted(twins)[0]
    assert duplicates == {rid: leader for rid in twins - {leader}}

    add_result(con, "run", "q", "q ran in the probe's phase")  # the twin the engine finished first
    con.execute("update schedule set position = 3 - position where run_id = 'run'")  # the later schedule's order
    execute(con, "schedule.mark_duplicates", {"run_id": "run"})
    duplicates = dict(con.execute("select request_id, duplicate_of from schedule where duplicate_of is not null").fetchall())
    assert duplicates == {"p": "q", "s": "q"}


def test_the_views_and_frames_count_answers_from_earlier_runs(db_path):
    import batchbin

    con = db.connect(db_path)
    try:
        con.execute("insert into runs (run_id, status, created_at) values ('first', 'finished', now() - interval 1 hour), "
                    "('second', 'finished', now())")
        add_request(con, "first", "a", [1, 2])
        reuse_run(con, "first", MODEL, SamplingDefaults(), enabled=True)
        add_result(con, "first", "a", "answer a")
        add_request(con, "second", "a", [1, 2])
        reuse_run(con, "second", MODEL, SamplingDefaults(), enabled=True)
        summary = dict(con.execute("select run_id, answered_from_earlier_runs from run_summary").fetchall())
        assert summary == {"first": 0, "second": 1}
    finally:
        con.close()
    assert batchbin.results(db_path, run_id="second")["reused_from"].to_list() == ["first"]
    assert dict(batchbin.runs(db_path).select("run_id", "answered_from_earlier_runs").iter_rows()) == summary


def test_the_probe_neither_counts_nor_picks_answered_requests(fresh_db):
    import pyarrow as pa

    from batchbin.store.db import registered
    from batchbin.store.queries import execute, fetch_one

    con = fresh_db
    for i in range(6):
        add_request(con, "r", f"q{i}", [1, i])
        con.execute("insert into predictions (run_id, request_id, predicted_tokens, predictor) values ('r', ?, 10, 'x')",
                    [f"q{i}"])
    for i in range(4):
        add_result(con, "r", f"q{i}", "stored", reused_from="earlier")
    assert fetch_one(con, "probe.count_predictions", {"run_id": "r", "default_max_tokens": 16})[0] == 2
    templates = pa.table({"request_id": [f"q{i}" for i in range(6)], "template_group": [1] * 6})
    with registered(con, probe_templates=templates):
        execute(con, "probe.choose_probe", {"run_id": "r", "size": 6, "default_max_tokens": 16})
    assert sorted(r for r, in con.execute("select request_id from probe_requests").fetchall()) == ["q4", "q5"]


# --- the model fingerprint ---------------------------------------------------------------------

def test_the_model_fingerprint_follows_the_files_not_the_path(tmp_path):
    cache = tmp_path / "fingerprints.json"
    one, two = tmp_path / "one", tmp_path / "two"
    for folder in (one, two):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"weights")
        (folder / "tokenizer.json").write_text("{}")
    assert model_fingerprint(str(one), cache) == model_fingerprint(str(two), cache)  # same files, two paths
    first = model_fingerprint(str(one), cache)
    assert json.loads(cache.read_text())  # cached
    (one / "tokenizer.json").write_text('{"changed": 1}')
    assert model_fingerprint(str(one), cache) != first
    assert model_fingerprint(str(tmp_path / "missing"), cache) is None  # nothing local to fingerprint


def test_the_cached_fingerprint_is_used_while_sizes_and_times_hold(tmp_path):
    cache = tmp_path / "fingerprints.json"
    (tmp_path / "m").mkdir()
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(b"weights")
    first = model_fingerprint(str(tmp_path / "m"), cache)
    stat = weights.stat()
    weights.write_bytes(b"WEIGHTS")  # same size: only the mtime tells, so restore it
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert model_fingerprint(str(tmp_path / "m"), cache) == first  # not hashed again


# --- whole runs on the real default model ----------------------------------------------------

TOPICS = ["rain", "the sea", "a cat", "bread", "winter", "trains", "a violin", "the moon", "apples", "a bridge"]


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def first_rows() -> list[dict]:
    rows = [{"id": f"t{i}", "messages": chat(f"Write one sentence about {topic}.")} for i, topic in enumerate(TOPICS)]
    rows.append({"id": "copy", "messages": chat(f"Write one sentence about {TOPICS[0]}.")})  # identical to t0
    rows.append({"id": "sampled", "messages": chat("Name a colour."), "temperature": 0.8})  # no seed anywhere
    return rows


def write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def outputs(path: str) -> dict[str, str]:
    return {row["id"]: row["output"] for row in map(json.loads, Path(path).read_text().splitlines())}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, prefect_api, default_model_path):
    from batchbin.config import EngineOptions, JobConfig
    from batchbin.flows.batch import batch_inference
    from tests.conftest import TEST_ENGINE

    folder = tmp_path_factory.mktemp("reuse")
    config = JobConfig(input_path=write(folder / "monday.jsonl", first_rows()), db_path=str(folder / "bb.duckdb"),
                       output_path=str(folder / "monday.out.jsonl"), max_tokens=8, seed=None,
                       engine=EngineOptions(**TEST_ENGINE))
    return folder, config, batch_inference(config)


@pytest.mark.engine
def test_the_next_job_generates_only_new_and_changed_rows(first_run):
    from batchbin.flows.batch import batch_inference

    folder, config, first = first_run
    assert first["generated_now"] == 11 and first["answered_from_earlier_runs"] == 0  # "copy" answered by t0
    rows = first_rows()
    rows[3]["messages"] = chat(f"Write two sentences about {TOPICS[3]}.")  # changed
    rows[7]["max_tokens"] = 6                                               # changed: another limit
    rows += [{"id": "new1", "messages": chat("Write one sentence about a lighthouse.")},
             {"id": "new2", "messages": chat("Write one sentence about tea.")},
             {"id": "copy2", "messages": chat(f"Write one sentence about {TOPICS[5]}.")}]  # a new id, an old request
    second_config = config.model_copy(update={"input_path": write(folder / "tuesday.jsonl", rows),
                                              "output_path": str(folder / "tuesday.out.jsonl")})
    second = batch_inference(second_config)
    # t3, t7, new1, new2 and the unseeded sampled request; the rest (copy and copy2 too) from Monday
    assert second["generated_now"] == 5
    assert second["answered_from_earlier_runs"] == 10
    monday, tuesday = outputs(first["output_path"]), outputs(second["output_path"])
    for rid in [f"t{i}" for i in range(10) if i not in (3, 7)] + ["copy"]:
        assert tuesday[rid] == monday[rid]  # byte-identical
    assert tuesday["copy2"] == monday["t5"]
    con = db.connect(config.db_path, read_only=True)
    try:
        sources = dict(con.execute("select request_id, reused_from from results where run_id = ?",
                                   [second["run_id"]]).fetchall())
    finally:
        con.close()
    assert {sources[rid] for rid in ("t0", "copy", "copy2")} == {first["run_id"]}
    assert sources["new1"] is None and sources["sampled"] is None

    again = batch_inference(second_config)  # the same file again: a resume, nothing generated
    assert again["generated_now"] == 0 and again["answered_from_earlier_runs"] == 10

    fresh = batch_inference(second_config.model_copy(update={"reuse_results": False}))
    # all ten generated again but "copy" and "copy2", which their identical requests answer
    assert fresh["generated_now"] == 8 and fresh["answered_from_earlier_runs"] == 0
    assert fresh["completed"] == len(rows)


@pytest.mark.engine
def test_an_openai_batch_file_reuses_the_answers_of_a_plain_file(first_run):
    from batchbin.flows.batch import batch_inference

    folder, config, first = first_run
    lines = [{"custom_id": row["id"], "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "default", "messages": row["messages"]}} for row in first_rows()[:4]]
    batch = config.model_copy(update={"input_path": write(folder / "batch.jsonl", lines),
                                      "output_path": str(folder / "batch.out.jsonl")})
    report = batch_inference(batch)
    assert report["output_format"] == "openai"
    assert report["generated_now"] == 0 and report["answered_from_earlier_runs"] == 4
    monday = outputs(first["output_path"])
    for line in map(json.loads, Path(report["output_path"]).read_text().splitlines()):
        content = line["response"]["body"]["choices"][0]["message"]["content"]
        assert content == monday[line["custom_id"]]


def test_plan_counts_the_requests_answered_already(tmp_path, prefect_api, default_model_path):
    """`batchbin plan --db` of a grown file: the rows an earlier run answered are counted and not simulated."""
    from click.testing import CliRunner

    from batchbin.cli.main import main

    db_path = str(tmp_path / "bb.duckdb")
    rows = first_rows()[:6]
    monday = write(tmp_path / "monday.jsonl", rows)
    result = CliRunner().invoke(main, ["plan", monday, "--db", db_path, "--max-tokens", "8"])
    assert result.exit_code == 0, result.output
    assert "answered        0 requests already" in result.output
    con = db.connect(db_path)
    try:  # Monday's run answered its first four requests
        run_id, = con.execute("select run_id from runs").fetchone()
        for row in rows[:4]:
            add_result(con, run_id, row["id"], f"answer {row['id']}")
    finally:
        con.close()
    tuesday = write(tmp_path / "tuesday.jsonl", rows + [{"id": "new", "messages": chat("Name a bird.")}])
    result = CliRunner().invoke(main, ["plan", tuesday, "--db", db_path, "--max-tokens", "8"])
    assert result.exit_code == 0, result.output
    assert "answered        4 requests already" in result.output
