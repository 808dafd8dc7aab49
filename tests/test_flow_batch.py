"""End to end: the batch-inference flow under the ephemeral Prefect API, with the real default
model through vLLM on the CPU. Every input row ends in `results` or in `rejects`; a re-run adds
no duplicate and generates only what is missing."""

from __future__ import annotations

import json
import re
from datetime import datetime

import duckdb
import pytest

from batchbin.config import EngineOptions, JobConfig
from batchbin.flows.batch import batch_inference
from tests.conftest import TEST_ENGINE

VALID = [
    {"id": "capital", "messages": [{"role": "user", "content": "What is the capital of France?"}]},
    {"id": "haiku", "messages": [{"role": "system", "content": "You are a poet."},
                                 {"role": "user", "content": "Write a haiku about rain."}], "max_tokens": 12},
    {"id": "colors", "prompt": "The three primary colors are", "max_tokens": 6},
    {"id": "list", "messages": [{"role": "user", "content": "List three fruits."}], "temperature": 0.7, "seed": 3},
    {"id": "math", "messages": [{"role": "user", "content": "What is 2 + 2? Answer with a number."}], "stop": ["."]},
    {"id": 42, "messages": [{"role": "user", "content": "Say hello."}]},
    {"id": "sum1", "messages": [{"role": "system", "content": "Summarize in one sentence. " * 20},
                                {"role": "user", "content": "Cats sleep a lot."}]},
    {"id": "sum2", "messages": [{"role": "system", "content": "Summarize in one sentence. " * 20},
                                {"role": "user", "content": "Dogs like walks."}]},
    # a length fixed by the request, as vLLM's throughput benchmark fixes ShareGPT's answer lengths
    {"id": "forced", "messages": [{"role": "user", "content": "Say yes."}], "max_tokens": 11, "min_tokens": 11,
     "ignore_eos": True},
]
INVALID_LINES = [
    json.dumps({"id": "empty", "prompt": ""}),
    json.dumps({"id": "capital", "prompt": "duplicate id"}),
    "this is not json",
    json.dumps({"id": "too-long", "prompt": "word " * 3000}),
]


@pytest.fixture(scope="module")
def job(tmp_path_factory, prefect_api, default_model_path):
    folder = tmp_path_factory.mktemp("e2e")
    path = folder / "requests.jsonl"
    path.write_text("\n".join([json.dumps(row) for row in VALID] + INVALID_LINES) + "\n")
    config = JobConfig(input_path=str(path), db_path=str(folder / "bb.duckdb"), max_tokens=8,
                       output_path=str(folder / "out.jsonl"), engine=EngineOptions(**TEST_ENGINE))
    first = batch_inference(config)
    return config, first


@pytest.fixture
def flow_engine(job, default_model_path):
    """The engine the job's flow ran on (shared by the session), for tests that drive it directly."""
    from batchbin.engine.pool import get_engine
    from batchbin.engine.settings import choose_engine_settings
    from batchbin.engine.machine import detect_machine

    config, _ = job
    return get_engine(default_model_path, choose_engine_settings(detect_machine(), config.engine, requests=len(VALID)),
                      config.max_model_len)


def query(config, text, params=None):
    con = duckdb.connect(config.db_path, read_only=True)
    try:
        return con.execute(text, params).fetchall()
    finally:
        con.close()


@pytest.mark.engine
def test_the_finished_run_feeds_this_machines_step_costs(job):
    """The flow's last stage refits this machine's step costs with the run's engine steps; steps
    without a context count (the engine core in its own process) make no fit and no failure."""
    config, report = job
    run_id = report["run_id"]
    steps, with_context = query(config, "select count(*), count(context_tokens) from engine_steps where run_id = ?",
                                [run_id])[0]
    assert steps > 0
    fits = query(config, "select run_ids, steps from step_cost_fits")
    if with_context >= 8:
        assert len(fits) == 1 and run_id in fits[0][0] and fits[0][1] >= 8
    else:
        assert fits == []


@pytest.mark.engine
def test_every_valid_id_has_a_real_completion(job):
    config, report = job
    rows = query(config, "select request_id, output_text, output_tokens, finish_reason, error from results")
    assert sorted(r[0] for r in rows) == sorted(str(row["id"]) for row in VALID)
    for request_id, text, tokens, reason, error in rows:
        assert error is None and text and 1 <= tokens <= 12, request_id
        assert reason in ("stop", "length")
    assert report["completed"] == len(VALID) and report["errors"] == 0
    assert report["output_tokens"] > 0 and report["output_tps"] > 0


@pytest.mark.engine
def test_report_says_when_the_run_finished(job):
    """The report is written just before the run is marked finished: it says finished, and when."""
    config, report = job
    (finished_at,), = query(config, "select finished_at from runs")
    assert report["status"] == "finished" and report["finished_at"] is not None
    assert abs((datetime.fromisoformat(report["finished_at"]) - finished_at).total_seconds()) < 5


@pytest.mark.engine
def test_a_request_with_min_tokens_and_ignore_eos_generates_exactly_that_many(job):
    config, _ = job
    [(tokens, reason, predicted)] = query(config, "select r.output_tokens, r.finish_reason, p.predicted_tokens from results r "
                                           "join predictions p using (run_id, request_id) where request_id = 'forced'")
    assert (tokens, reason) == (11, "length")
    assert predicted == 11  # a length the request fixes is known, not predicted


@pytest.mark.engine
def test_every_engine_step_is_recorded_with_its_shape(job):
    config, report = job
    [(steps, numbered, max_running, decode, prefill, attempts)] = query(
        config, "select count(*), max(step) + 1, max(running), sum(decode_tokens), sum(prefill_tokens), "
                "count(distinct attempt) from engine_steps")
    [(outputs, prompts, cached, requests)] = query(
        config, "select sum(output_tokens), sum(prompt_tokens), sum(cached_tokens), count(*) from results")
    assert steps == numbered > 0 and attempts == 1
    assert 1 <= max_running <= len(VALID)
    # every output token but each request's first (sampled at the end of its prefill) is one decode
    assert decode == outputs - requests
    assert prefill == prompts - cached  # chunked prefill computes exactly the tokens the cache did not hold
    trace = report["schedule_trace"]
    assert trace["steps"] == steps and trace["step_s"] > 0 and 0 < trace["peak_kv_cache_usage"] <= 1
    assert sum(b["requests"] for b in report["bins"]) == len(VALID)
    assert sum(b["output_tokens"] for b in report["bins"]) == outputs
    [(finished_in_order,)] = query(config, "select bool_and(finished_s > 0 and latency_s <= finished_s + 0.01) from results")
    assert finished_in_order


@pytest.mark.engine
def test_report_says_where_the_time_went(job):
    config, report = job
    stages = report["stage_seconds"]
    assert list(stages) == ["start", "load", "tokenize", "reuse", "group_prefixes", "predict_lengths", "probe", "schedule",
                            "generate", "report"]
    assert all(seconds >= 0 for seconds in stages.values())
    # the generate stage holds the generation itself (and, on a first run, the engine's start)
    assert stages["generate"] >= report["generate_s"] - 0.01
    (stored,) = query(config, "select report->>'stage_seconds' from run_reports where run_id = ?", [report["run_id"]])[0]
    assert json.loads(stored) == stages


@pytest.mark.engine
def test_progress_and_report_are_prefect_artifacts_with_vllms_counters(job):
    """The live progress artifact ends at 100% with prefill and output tokens from vLLM's own
    counters; the report is a markdown and a table artifact, with preemptions and KV-cache use."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from batchbin.tasks.generate import PROGRESS_ARTIFACT_KEY
    from batchbin.tasks.report import ARTIFACT_KEY, TABLE_ARTIFACT_KEY

    _, report = job
    with get_client(sync_client=True) as client:
        def latest(key):
            found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            assert found, f"no artifact {key}"
            return max(found, key=lambda artifact: artifact.created)

        progress = latest(PROGRESS_ARTIFACT_KEY)
        table = latest(TABLE_ARTIFACT_KEY)
        assert latest(ARTIFACT_KEY).type == "markdown"
    assert progress.type == "progress" and float(progress.data) == 100.0
    assert re.search(r"[1-9][\d,]* prompt tokens prefilled, [1-9][\d,]* output tokens", progress.description)
    assert table.type == "table" and "preemptions" in str(table.data)
    # a job this small may finish between two samples of the KV cache: its peak can read 0
    assert report["preemptions"] >= 0 and 0 <= report["peak_kv_cache_usage"] <= 1
    # memory-centric admission is on by default, sized by the engine's own KV cache
    assert report["kv_admission"]["budget_tokens"] > 0 and report["kv_admission"]["held_back"] >= 0


@pytest.mark.engine
def test_report_names_the_schedule_order_and_why(job):
    config, report = job
    # a small job runs all at once on one engine: "auto" keeps token order
    assert report["schedule_order"] == "sorted"
    assert report["schedule_reason"].startswith(f"auto: all {len(VALID)} requests run at once")


@pytest.mark.engine
def test_every_invalid_row_is_in_rejects_with_a_reason(job):
    config, report = job
    rejects = query(config, "select row_number, field, reason from rejects order by row_number")
    first = len(VALID) + 1  # the invalid lines follow the valid rows
    assert [(row, field) for row, field, _ in rejects] == [
        (first, "prompt"), (first + 1, "id"), (first + 2, None), (first + 3, "prompt_tokens")]
    assert all(reason for _, _, reason in rejects)
    assert "context" in rejects[-1][2]
    total_rows = len(VALID) + len(INVALID_LINES)
    assert report["completed"] + report["rejects"] == total_rows


@pytest.mark.engine
def test_output_file_is_keyed_by_ids_in_input_order(job):
    config, report = job
    lines = [json.loads(line) for line in open(config.output_path)]
    assert [line["id"] for line in lines] == [str(row["id"]) for row in VALID]
    assert all(line["output"] for line in lines)
    assert report["output_rows"] == len(VALID)


@pytest.mark.engine
def test_rerun_reuses_stages_and_adds_no_duplicates(job):
    config, first = job
    second = batch_inference(config)
    assert second["run_id"] == first["run_id"]
    assert second["generated_now"] == 0
    assert query(config, "select count(*), count(distinct request_id) from results") == [(len(VALID), len(VALID))]
    assert query(config, "select count(*) from rejects")[0][0] == len(INVALID_LINES)


@pytest.mark.engine
def test_retry_errors_generates_again_the_requests_that_failed(job):
    """A resumed run leaves a failed request as it is; --retry-errors generates it again."""
    config, first = job
    con = duckdb.connect(config.db_path)
    con.execute("update results set output_text = null, error = 'RuntimeError: a fault', finish_reason = 'error' "
                "where request_id = 'colors'")
    con.close()
    resumed = batch_inference(config)
    assert resumed["generated_now"] == 0 and resumed["retried_errors"] == 0 and resumed["errors"] == 1
    retried = batch_inference(config.model_copy(update={"retry_errors": True}))
    assert retried["run_id"] == first["run_id"]  # the same run: retrying changes no result's parameters
    assert retried["retried_errors"] == 1 and retried["generated_now"] == 1 and retried["errors"] == 0
    assert query(config, "select error is null, output_text is not null from results where request_id = 'colors'") == [(True, True)]


@pytest.mark.engine
def test_rerun_after_lost_results_generates_only_the_missing(job):
    config, first = job
    con = duckdb.connect(config.db_path)
    con.execute("delete from results where request_id in ('haiku', 'list')")
    con.close()
    third = batch_inference(config)
    assert third["generated_now"] == 2
    assert query(config, "select count(*) from results")[0][0] == len(VALID)


@pytest.mark.engine
def test_views_answer_users_sql(job):
    config, first = job
    summary = query(config, "select requests, rejects, completed from run_summary where run_id = $r", {"r": first["run_id"]})
    assert summary == [(len(VALID), len(INVALID_LINES), len(VALID))]
    assert query(config, "select count(*) from completions")[0][0] == len(VALID)


@pytest.mark.engine
def test_training_on_too_few_results_fails_with_a_message(job):
    from batchbin.flows.train import train_length_predictor

    config, _ = job
    state = train_length_predictor(db_path=config.db_path, return_state=True)
    assert state.is_failed()
    assert "needs at least 20 finished requests" in state.message and "has 8" in state.message


@pytest.mark.engine
def test_greedy_outputs_repeat_run_to_run(flow_engine, default_model_path):
    """pytest's engine core runs in a process of its own; BatchBin holds it from stepping until
    every request is in, so batches, and with them greedy outputs, do not depend on timing."""
    from batchbin.engine.pool import reset_prefix_cache
    from batchbin.engine.step_loop import SamplingDefaults, generate_in_order
    from batchbin.tasks.tokenize import load_tokenizer, render_token_ids

    engine = flow_engine
    assert engine.settings.in_process is False
    chats = [row for row in VALID if "messages" in row]
    token_ids = render_token_ids(load_tokenizer(default_model_path), [None] * len(chats),
                                 [json.dumps(row["messages"]) for row in chats])
    work = [{"request_id": str(row["id"]), "batch": 0, "token_ids": ids, "max_tokens": 16, "temperature": 0.0,
             "top_p": None, "seed": None, "stop": None} for row, ids in zip(chats, token_ids)]

    def texts() -> dict[str, str]:
        reset_prefix_cache(engine)
        stored: list[dict] = []
        generate_in_order(engine, [dict(row) for row in work], SamplingDefaults(max_tokens=16), stored.extend)
        return {row["request_id"]: row["output_text"] for row in stored}

    first, second, third = texts(), texts(), texts()
    assert len(first) == len(chats) and all(first.values())
    assert first == second == third


@pytest.mark.engine
def test_openai_batch_file_in_openai_batch_output_out(tmp_path, prefect_api, default_model_path):
    """An OpenAI batch file runs as it is, and every line comes back as an output line with its
    custom_id, in input order: completions as 200 responses (one constrained to a JSON schema),
    a bad line as an error."""
    lines = [
        {"custom_id": "chat-1", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4}},
        {"custom_id": "json-1", "method": "POST", "url": "/v1/chat/completions",
         "body": {"messages": [{"role": "user", "content": "The capital of France, as JSON."}], "max_tokens": 24,
                  "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {
                      "type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"]}}}}},
        {"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions",
         "body": {"messages": [{"role": "user", "content": "Hi"}], "n": 2}},
        {"custom_id": "text-1", "method": "POST", "url": "/v1/completions",
         "body": {"model": "gpt-4o-mini", "prompt": "The sky is", "max_tokens": 3}},
    ]
    path = tmp_path / "batch.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    config = JobConfig(input_path=str(path), db_path=str(tmp_path / "bb.duckdb"), max_tokens=8,
                       engine=EngineOptions(**TEST_ENGINE))
    result = batch_inference(config)
    assert result["output_format"] == "openai" and result["output_rows"] == 4
    out = [json.loads(line) for line in open(result["output_path"])]
    assert [line["custom_id"] for line in out] == ["chat-1", "json-1", "bad", "text-1"]
    chat, structured, bad, text = out
    answer = json.loads(structured["response"]["body"]["choices"][0]["message"]["content"])  # JSON, by construction
    assert isinstance(answer["capital"], str)
    assert chat["error"] is None and chat["response"]["status_code"] == 200
    assert chat["response"]["body"]["object"] == "chat.completion"
    assert chat["response"]["body"]["choices"][0]["message"]["content"]
    assert 1 <= chat["response"]["body"]["usage"]["completion_tokens"] <= 4
    assert text["response"]["body"]["object"] == "text_completion" and text["response"]["body"]["choices"][0]["text"]
    assert bad["response"] is None and "body.n" in bad["error"]["message"]


def test_openai_output_as_parquet_fails_with_a_message(tmp_path, prefect_api):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt": "hi"}) + "\n")
    state = batch_inference(JobConfig(input_path=str(path), db_path=str(tmp_path / "bb.duckdb"), output_format="openai",
                                      output_path=str(tmp_path / "out.parquet")), return_state=True)
    assert state.is_failed() and "OpenAI batch output is JSONL" in state.message


@pytest.mark.engine
def test_a_job_larger_than_the_in_flight_limit_streams_through_vllm(flow_engine, monkeypatch):
    """At most `in_flight` requests are inside vLLM at once; the rest join as requests finish,
    in order, and every request still gets its result."""
    from batchbin.engine import vllm_adapter
    from batchbin.engine.step_loop import SamplingDefaults, generate_in_order

    engine = flow_engine
    in_vllm_at_each_add: list[int] = []
    add_request = vllm_adapter.add_request

    def counted_add(llm, *args, **kwargs):
        in_vllm_at_each_add.append(vllm_adapter.unfinished_requests(llm))
        return add_request(llm, *args, **kwargs)

    monkeypatch.setattr(vllm_adapter, "add_request", counted_add)
    work = [{"request_id": f"w{i}", "batch": 0, "token_ids": [1, 422, 1012 + i, 30], "max_tokens": 2 + i % 3,
             "temperature": 0.0, "top_p": None, "seed": None, "stop": None} for i in range(7)]
    stored: list[dict] = []
    stats = generate_in_order(engine, iter(work), SamplingDefaults(max_tokens=4), stored.extend, checkpoint_every=2,
                              total=len(work), in_flight=3)
    assert sorted(row["request_id"] for row in stored) == sorted(row["request_id"] for row in work)
    assert stats.requests == 7 and stats.errors == 0 and all(row["output_tokens"] >= 1 for row in stored)
    assert len(in_vllm_at_each_add) == 7 and max(in_vllm_at_each_add) <= 2  # never a 4th while 3 are in
    assert in_vllm_at_each_add[:3] == [0, 1, 2]  # the first three go in before the first step


@pytest.mark.engine
def test_admission_hands_over_only_what_the_kv_budget_holds_at_its_predicted_peak(flow_engine, monkeypatch):
    """With a budget that holds two of these requests at their peak, never more than two are
    inside vLLM; the rest wait their turn, in order, and every request gets its result."""
    from batchbin.engine import vllm_adapter
    from batchbin.engine.admission import KvAdmission
    from batchbin.engine.step_loop import SamplingDefaults, generate_in_order

    in_vllm_at_each_add: list[int] = []
    added: list[str] = []
    add_request = vllm_adapter.add_request

    def counted_add(llm, request_id, token_ids, params):
        in_vllm_at_each_add.append(vllm_adapter.unfinished_requests(llm))
        added.append(token_ids[2])
        return add_request(llm, request_id, token_ids, params)

    monkeypatch.setattr(vllm_adapter, "add_request", counted_add)
    # 4-token prompts, 4 tokens each (min_tokens = max_tokens): a peak of 7 KV tokens apiece
    work = [{"request_id": f"m{i}", "batch": 0, "token_ids": [1, 422, 1012 + i, 30], "max_tokens": 4, "min_tokens": 4,
             "ignore_eos": True, "temperature": 0.0, "top_p": None, "seed": None, "stop": None,
             "predicted_tokens": 4.0} for i in range(6)]
    gate = KvAdmission(budget_tokens=14)
    stored: list[dict] = []
    stats = generate_in_order(flow_engine, iter(work), SamplingDefaults(max_tokens=4), stored.extend,
                              total=len(work), admission=gate)
    assert sorted(row["request_id"] for row in stored) == [row["request_id"] for row in work]
    assert all(row["output_tokens"] == 4 for row in stored)
    assert max(in_vllm_at_each_add) <= 1  # never a third while two are in
    assert added == [1012 + i for i in range(6)]  # in order
    assert stats.held_back > 0 and gate.inside == {}


@pytest.mark.engine
def test_a_schema_vllm_refuses_fails_its_request_only(flow_engine):
    from batchbin.engine.step_loop import SamplingDefaults, generate_in_order

    engine = flow_engine
    bad_schema = json.dumps({"type": "json_schema", "schema": {"type": "object", "properties": 3}})
    work = [{"request_id": name, "batch": 0, "token_ids": [1, 422, 1012 + i], "max_tokens": 3, "temperature": 0.0,
             "top_p": None, "seed": None, "stop": None, "response_format": schema}
            for i, (name, schema) in enumerate([("bad", bad_schema), ("ok", None)])]
    stored: list[dict] = []
    stats = generate_in_order(engine, work, SamplingDefaults(max_tokens=3), stored.extend)
    results = {row["request_id"]: row for row in stored}
    assert stats.errors == 1 and results["bad"]["finish_reason"] == "error" and "Grammar" in results["bad"]["error"]
    assert results["ok"]["error"] is None and results["ok"]["output_tokens"] >= 1
