"""The run's charts: read from the database by SQL, drawn as PNGs, published as markdown
artifacts with the PNG inline (a data: URL the Prefect UI shows), and skipped with one log
line where matplotlib is missing. No engine: the run's rows are written by hand."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys

import pytest

from batchbin.io import charts

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SUBPROCESS_TIMEOUT_S = 120


@pytest.fixture
def finished_run(fresh_db):
    """Run 'r': five requests in two bins, stored by two checkpoints 4 s apart; one failed request;
    and a request of another run that must not show."""
    fresh_db.execute("""
        INSERT INTO schedule (run_id, request_id, bin, batch, position) VALUES
            ('r', 'a', 0, 0, 0), ('r', 'b', 0, 0, 1), ('r', 'c', 1, 1, 2), ('r', 'd', 1, 1, 3), ('r', 'e', 1, 1, 4),
            ('other', 'a', 0, 0, 0)""")
    fresh_db.execute("""
        INSERT INTO predictions (run_id, request_id, predicted_tokens, predictor) VALUES
            ('r', 'a', 100, 'p'), ('r', 'b', 80, 'p'), ('r', 'c', 20, 'p'), ('r', 'd', 10, 'p'), ('r', 'e', 30, 'p')""")
    fresh_db.execute("""
        INSERT INTO results (run_id, request_id, prompt_tokens, output_tokens, error, latency_s, finished_at) VALUES
            ('r', 'c', 5, 12, NULL, 1.0, TIMESTAMP '2026-01-01 00:00:02'),
            ('r', 'd', 5, 8, NULL, 1.5, TIMESTAMP '2026-01-01 00:00:02'),
            ('r', 'a', 5, 90, NULL, 5.5, TIMESTAMP '2026-01-01 00:00:06'),
            ('r', 'b', 5, 70, NULL, 5.0, TIMESTAMP '2026-01-01 00:00:06'),
            ('r', 'e', 5, 0, 'ValueError: bad', 0.0, TIMESTAMP '2026-01-01 00:00:06'),
            ('other', 'a', 5, 999, NULL, 1.0, TIMESTAMP '2026-01-01 00:00:01')""")
    return fresh_db


def test_chart_data_has_one_point_per_checkpoint_and_one_row_per_bin(finished_run):
    data = charts.read_chart_data(finished_run, "r")
    # the first request was handed over 5.5 s before the second checkpoint, i.e. at 00:00:00.5
    assert [(round(p["seconds"], 2), p["requests"], p["output_tokens"]) for p in data.throughput] == [
        (1.5, 2, 20), (5.5, 2, 160)]
    assert [(b["bin"], b["requests"], b["predicted_mean"], b["output_mean"]) for b in data.bins] == [
        (0, 2, 90.0, 80.0), (1, 2, 15.0, 10.0)]


def test_charts_are_pngs_inside_markdown(finished_run):
    rendered = charts.render_charts(charts.read_chart_data(finished_run, "r"))
    assert set(rendered) == {charts.THROUGHPUT_ARTIFACT_KEY, charts.BINS_ARTIFACT_KEY}
    for title, png, caption in rendered.values():
        assert png.startswith(PNG_SIGNATURE) and 5_000 < len(png) < 200_000
        markdown = charts.markdown_image(title, png, caption)
        encoded = re.search(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown).group(1)
        assert base64.b64decode(encoded) == png


def test_a_run_without_results_has_no_charts(fresh_db):
    data = charts.read_chart_data(fresh_db, "nothing")
    assert data.throughput == [] and data.bins == []
    assert charts.render_charts(data) == {}


def test_charts_are_published_as_markdown_artifacts_under_fixed_keys(finished_run, prefect_api):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    data = charts.read_chart_data(finished_run, "r")

    @flow
    def publish() -> tuple[list[str], str]:
        from prefect.runtime import flow_run

        return charts.publish_charts(data), flow_run.id

    keys, flow_run_id = publish()
    assert keys == [charts.THROUGHPUT_ARTIFACT_KEY, charts.BINS_ARTIFACT_KEY]
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    assert sorted(artifact.key for artifact in found) == sorted(keys)
    assert all(artifact.type == "markdown" and "data:image/png;base64," in artifact.data for artifact in found)


def test_without_matplotlib_no_chart_and_one_log_line(tmp_path):
    """A --no-deps install without matplotlib: publish_charts returns no keys and logs one line."""
    done = subprocess.run([sys.executable, "-c", (
        "import sys\n"
        "sys.modules['matplotlib'] = None  # as if matplotlib were not installed\n"
        "sys.modules['matplotlib.figure'] = None\n"
        "from batchbin.io import charts\n"
        "data = charts.ChartData('r', [{'seconds': 1.0, 'requests': 1, 'prompt_tokens': 1, 'output_tokens': 5}], [])\n"
        "print(charts.publish_charts(data))\n")],
        capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S,
        env={**os.environ, "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore"})  # no flow run here
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
    lines = [line for line in done.stderr.splitlines() if "chart" in line]
    assert len(lines) == 1 and "matplotlib" in lines[0] and "pip install matplotlib" in lines[0], done.stderr


def test_a_run_stored_in_one_checkpoint_draws_its_requests_as_they_finished(fresh_db):
    """One checkpoint is one point: the chart would be a single straight line from zero. The
    newest attempt's finish times (finished_s) draw it instead; a single finish time, no chart."""
    fresh_db.execute("""
        INSERT INTO results (run_id, request_id, output_tokens, error, latency_s, finished_at, attempt, finished_s) VALUES
            ('r', 'a', 1, NULL, 0.05, TIMESTAMP '2026-01-01 00:00:01', 2, 0.07),
            ('r', 'b', 6, NULL, 0.2, TIMESTAMP '2026-01-01 00:00:01', 2, 0.24),
            ('r', 'c', 6, NULL, 0.2, TIMESTAMP '2026-01-01 00:00:01', 2, 0.24),
            ('r', 'd', 0, 'ValueError: bad', 0.2, TIMESTAMP '2026-01-01 00:00:01', 2, 0.3),
            ('r', 'e', 9, NULL, 2.0, TIMESTAMP '2026-01-01 00:00:01', 1, 3.0)""")
    data = charts.read_chart_data(fresh_db, "r")
    assert len(data.throughput) == 1
    assert [(p["seconds"], p["requests"], p["output_tokens"]) for p in data.finishes] == [(0.07, 1, 1), (0.24, 2, 12)]
    title, png, caption = charts.render_charts(data)[charts.THROUGHPUT_ARTIFACT_KEY]
    assert png.startswith(PNG_SIGNATURE) and "one checkpoint" in caption
    one_finish = charts.ChartData(run_id="r", throughput=data.throughput, bins=data.bins, finishes=data.finishes[:1])
    assert charts.THROUGHPUT_ARTIFACT_KEY not in charts.render_charts(one_finish)
