"""A run's charts as Prefect artifacts: its throughput over the generation, and predicted against
real output tokens per length bin. The report stage reads the data (`read_chart_data`, queries
in sql/charts.sql) and publishes them (`publish_charts`) under fixed keys, so runs can be
compared in the UI's Artifacts page.

Why a markdown artifact with the PNG inside it rather than Prefect's image artifact: an image
artifact (`create_image_artifact`) stores only a URL, and the UI shows `<img src=URL>` with
the whole URL printed beneath it. A chart of a run would then have to be served from a web
server that every viewer of the UI can reach, for as long as the artifact is kept. The UI
renders a markdown artifact's image as `<img src=...>` as well, and leaves a `data:` URL
alone, so a chart embedded as `data:image/png;base64,...` shows on any Prefect server (and
Prefect Cloud), is stored with the artifact in Prefect's database, and outlives the machine
that ran the job. A chart is about 20-40 KB.

matplotlib is a dependency of batchbin, drawing with `matplotlib.figure.Figure` (no pyplot: no
global state, safe in a task's thread). An installation without it (installed with --no-deps)
publishes no charts and says so in one log line; the run itself is not affected.

    python -m batchbin.io.charts out/batchbin.duckdb RUN_ID out/charts   # the PNGs, without Prefect
"""

from __future__ import annotations

import base64
import io
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from batchbin.store.queries import fetch_arrow

THROUGHPUT_ARTIFACT_KEY = "batchbin-run-throughput-chart"
BINS_ARTIFACT_KEY = "batchbin-run-bins-chart"
FIGURE_SIZE = (7.0, 3.2)  # inches; at DPI a readable chart of 20-40 KB
DPI = 100
# fixed margins (fractions of the figure) that fit the labels: matplotlib's tight_layout measured
# every text to find them, a third of a chart's drawing time
MARGINS = {"left": 0.1, "right": 0.9, "bottom": 0.15, "top": 0.9}
MARGINS_ONE_AXIS = {**MARGINS, "right": 0.97}
PREDICTED_COLOR, REAL_COLOR = "#8a8a8a", "#2b7bb9"


@dataclass(frozen=True)
class ChartData:
    """What the charts of one run show, read from its database."""

    run_id: str
    throughput: list[dict]  # per checkpoint: seconds, requests, prompt_tokens, output_tokens
    bins: list[dict]        # per bin: bin, requests, predicted_mean, output_mean, output_tokens
    # per finish time of the newest attempt's requests: seconds, requests, output_tokens
    finishes: list[dict] = field(default_factory=list)


def read_chart_data(con: duckdb.DuckDBPyConnection, run_id: str) -> ChartData:
    """The run's throughput points and per-bin lengths (sql/charts.sql)."""
    return ChartData(run_id=run_id,
                     throughput=fetch_arrow(con, "charts.throughput_points", {"run_id": run_id}).to_pylist(),
                     bins=fetch_arrow(con, "charts.bin_lengths", {"run_id": run_id}).to_pylist(),
                     finishes=fetch_arrow(con, "charts.request_finishes", {"run_id": run_id}).to_pylist())


def throughput_png(points: list[dict], run_id: str, per_request: bool = False) -> bytes:
    """Output tokens generated so far (line) and output tokens/s between checkpoints (steps),
    over the seconds since the first request was handed to vLLM. `per_request`: the points are
    requests' finish times, not checkpoints; no rate steps (between two requests that finish
    a moment apart a rate means nothing)."""
    from matplotlib.figure import Figure

    seconds = [point["seconds"] for point in points]
    tokens = [point["output_tokens"] for point in points]
    cumulative, total = [], 0
    for count in tokens:
        total += count
        cumulative.append(total)
    starts = [0.0] + seconds[:-1]
    rates = [count / (end - start) if end > start else 0.0 for count, start, end in zip(tokens, starts, seconds)]
    elapsed = seconds[-1] if seconds else 0.0
    fig = Figure(figsize=FIGURE_SIZE)
    ax = fig.subplots()
    ax.plot([0.0] + seconds, [0] + cumulative, marker="o", markersize=3, color=REAL_COLOR, label="output tokens so far")
    ax.set_xlabel("seconds since the first request was handed to vLLM")
    ax.set_ylabel("output tokens so far")
    if not per_request:
        rate_ax = ax.twinx()
        rate_ax.stairs(rates, [0.0] + seconds, color=PREDICTED_COLOR, label="output tokens/s")
        rate_ax.set_ylabel("output tokens/s (per checkpoint)")
        rate_ax.set_ylim(bottom=0)
    ax.set_ylim(bottom=0)
    mean = f", {total / elapsed:.0f} tokens/s" if elapsed > 0 else ""
    finished = f", {sum(point['requests'] for point in points)} requests as they finished" if per_request else ""
    ax.set_title(f"run {run_id}: {total} output tokens in {elapsed:.1f} s{mean}{finished}", fontsize=9)
    fig.legend(loc="upper left", bbox_to_anchor=(0.1, 0.88), fontsize=8)
    fig.subplots_adjust(**(MARGINS_ONE_AXIS if per_request else MARGINS))
    return _png(fig)


def bins_png(bins: list[dict], run_id: str) -> bytes:
    """Mean predicted and mean real output tokens per length bin, with each bin's request count."""
    from matplotlib.figure import Figure

    positions = list(range(len(bins)))
    width = 0.38
    fig = Figure(figsize=FIGURE_SIZE)
    ax = fig.subplots()
    predicted = [row["predicted_mean"] or 0.0 for row in bins]
    real = [row["output_mean"] or 0.0 for row in bins]
    ax.bar([p - width / 2 for p in positions], predicted, width, color=PREDICTED_COLOR, label="predicted (mean)")
    real_bars = ax.bar([p + width / 2 for p in positions], real, width, color=REAL_COLOR, label="real (mean)")
    ax.bar_label(real_bars, labels=[f"n={row['requests']}" for row in bins], fontsize=7)
    ax.set_xticks(positions, [f"bin {row['bin']}" + (" (longest)" if i == 0 and len(bins) > 1 else "")
                              for i, row in enumerate(bins)], fontsize=8)
    ax.set_ylabel("output tokens per request")
    ax.set_title(f"run {run_id}: output tokens per length bin", fontsize=9)
    ax.legend(fontsize=8)
    fig.subplots_adjust(**MARGINS_ONE_AXIS)
    return _png(fig)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def markdown_image(title: str, png: bytes, caption: str) -> str:
    """A markdown document showing `png` inline (a data: URL), under a heading and over a caption."""
    encoded = base64.b64encode(png).decode("ascii")
    return f"# {title}\n\n![{title}](data:image/png;base64,{encoded})\n\n{caption}\n"


def render_charts(data: ChartData) -> dict[str, tuple[str, bytes, str]]:
    """The charts there is data for: artifact key -> (title, PNG, caption)."""
    charts = {}
    if len(data.throughput) > 1:
        charts[THROUGHPUT_ARTIFACT_KEY] = (
            f"BatchBin run {data.run_id}: throughput", throughput_png(data.throughput, data.run_id),
            "One point per checkpoint (results are stored in checkpoints): output tokens generated so far, "
            "and output tokens/s since the checkpoint before. A resumed run's gap shows as a flat stretch.")
    elif len(data.finishes) > 1:  # one checkpoint would draw a single straight line: its requests instead
        charts[THROUGHPUT_ARTIFACT_KEY] = (
            f"BatchBin run {data.run_id}: throughput", throughput_png(data.finishes, data.run_id, per_request=True),
            "The run's results were stored in one checkpoint, so each point is the moment requests finished "
            "in vLLM: output tokens generated so far.")
    if data.bins:
        charts[BINS_ARTIFACT_KEY] = (
            f"BatchBin run {data.run_id}: output tokens per length bin", bins_png(data.bins, data.run_id),
            "Bin 0 holds the requests with the longest predicted outputs. Bars: the predictor's mean "
            "against the mean of what was generated; n: the bin's finished requests.")
    return charts


def publish_charts(data: ChartData) -> list[str]:
    """Publish the run's charts as markdown artifacts; return their keys. Without matplotlib,
    or with nothing finished to draw, publish none and say why in one log line."""
    from prefect.artifacts import create_markdown_artifact

    logger = _logger()
    try:
        import matplotlib.figure  # noqa: F401  (a dependency; absent only from a --no-deps install)
    except ImportError as error:
        logger.warning("No chart artifacts for run %s: matplotlib cannot be imported (%s); "
                       "pip install matplotlib to get them", data.run_id, error)
        return []
    charts = render_charts(data)
    if not charts:
        logger.info("No chart artifacts for run %s: it has no finished results", data.run_id)
    elif THROUGHPUT_ARTIFACT_KEY not in charts:
        logger.info("No throughput chart for run %s: its results finished all at once (a single straight line)",
                    data.run_id)
    for key, (title, png, caption) in charts.items():
        create_markdown_artifact(key=key, markdown=markdown_image(title, png, caption), description=title)
    return list(charts)


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The run's logger inside a flow or task run (its lines reach the UI), else this module's."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def write_pngs(db_path: str, run_id: str, folder: str) -> list[Path]:
    """The run's charts as PNG files in `folder` (for a look without a Prefect server)."""
    from batchbin.store import db

    con = db.connect(db_path, read_only=True)
    try:
        data = read_chart_data(con, run_id)
    finally:
        con.close()
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for key, (_, png, _) in render_charts(data).items():
        path = out / f"{key}.png"
        path.write_bytes(png)
        written.append(path)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python -m batchbin.io.charts DB_PATH RUN_ID OUT_FOLDER")
    for written_path in write_pngs(*sys.argv[1:]):
        print(written_path)
