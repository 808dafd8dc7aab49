"""The Prefect UI as a person uses it, in a real browser; and a schedule that fires.

A real `prefect server start` (UI and scheduler on, loopback only), `prefect deploy --all` and a
process worker (tests/test_deployments.py's `prefect_stack`), and Debian's chromium driven by
Playwright (`make setup` installs both; Playwright's own browser download is not used). The
browser test does what a user does: Deployments, batch-adhoc, Run, Custom run; checks that the
form shows every JobConfig field with its description; types `input_path` and `db_path` into the
form; submits; opens the run from the deployment's list and waits until the UI says Completed;
then opens the run's artifacts: the report shows the run's real counts (read from its DuckDB
file) and when it finished, and each chart's image loads (naturalWidth > 0). A failing step
leaves a screenshot (its path is printed; BATCHBIN_UI_SHOTS sets the folder).

    BATCHBIN_UI_DOCS=1 pytest tests/test_ui_browser.py   # also writes docs/ui-*.png

The schedule test adds a schedule to batch-nightly through the API, half a minute ahead: the
server's scheduler must create its run (no schedule fired on SQLAlchemy 2.1), the worker runs
it, and it completes with its artifacts.

The inputs are tiny (four prompts of at most 6 output tokens): each run builds a vLLM engine in
the worker's flow-run process, which is most of the time.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import urllib.request
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from batchbin.flows.batch import PIPELINE
from tests.test_deployments import (ADHOC, NIGHTLY, PROMPTS, ROOT, RUN_TIMEOUT_S, client, prefect_stack, state_of,
                                    wait_final)

CHROMIUM = Path(os.environ.get("BATCHBIN_CHROMIUM", "/usr/bin/chromium"))
DOCS = ROOT / "docs"
WRITE_DOCS = os.environ.get("BATCHBIN_UI_DOCS") == "1"
UI_TIMEOUT_MS = 60_000  # any one step in the browser (the slow CI CPU included)
SCHEDULE_AHEAD_S = 30
SUBMIT_TRIES = 3  # a person clicks Submit again when the UI says the server was unavailable
# how often the server's scheduler looks for schedules that need runs (Prefect's default 60 s): a
# schedule whose first time passes before the scheduler's next look gets its next time instead
SCHEDULER_LOOP_S = 10
# what a finished run shows (the user-visible keys and task names, spelled out on purpose)
ARTIFACT_KEYS = ("batchbin-run-report", "batchbin-run-report-table", "batchbin-generation-progress",
                 "batchbin-run-throughput-chart", "batchbin-run-bins-chart")
CHART_KEYS = ("batchbin-run-throughput-chart", "batchbin-run-bins-chart")
STAGES = (*PIPELINE, "generate", "report")  # a task run each, in this order
# after the run: its engine steps refit this machine's step costs (tasks/step_costs.py)
TASK_RUNS = (*STAGES, "learn-step-costs")

# the share of an image's pixels the browser paints (a chart's PNG is opaque: all of them)
DRAWN_SHARE = """image => {
    const canvas = document.createElement("canvas");
    canvas.width = image.naturalWidth;
    canvas.height = image.naturalHeight;
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0);
    const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
    let painted = 0;
    for (let alpha = 3; alpha < pixels.length; alpha += 4) painted += pixels[alpha] > 0 ? 1 : 0;
    return painted / (canvas.width * canvas.height);
}"""

pytestmark = pytest.mark.engine  # the worker's flow runs build vLLM engines


def prompts_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": f"r{i}", "prompt": text, "max_tokens": 6}) + "\n"
                            for i, text in enumerate(PROMPTS)))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Server (UI, scheduler), worker and deployments; the flow runs work in a project directory
    of their own ($BATCHBIN_HOME in the worker's environment), so nothing lands in the checkout."""
    home = tmp_path_factory.mktemp("ui-home")
    (home / "flows").symlink_to(ROOT / "flows")  # a project directory holds the entrypoints
    with prefect_stack(tmp_path_factory.mktemp("ui-prefect"), ui=True, scheduler=True,
                       worker_env={"BATCHBIN_HOME": str(home)}, query_seconds=2,
                       settings={"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": str(SCHEDULER_LOOP_S)}) as running:
        yield {**running, "home": home}


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        # `make setup` installs it: a missing browser is a broken set-up, not a reason to check nothing
        pytest.fail(f"no {CHROMIUM}: `make setup` installs Debian's chromium as root (apt-get install chromium), "
                    "or set BATCHBIN_CHROMIUM")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    """A browser tab (each step of the test saves a screenshot of it when it fails: shot_on_failure)."""
    context = browser.new_context(viewport={"width": 1200, "height": 760})
    tab = context.new_page()
    tab.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield tab
    finally:
        context.close()


@contextmanager
def shot_on_failure(tab, name: str):
    """Run a step; if it fails, save the page as it was and say where."""
    folder = Path(os.environ.get("BATCHBIN_UI_SHOTS") or Path(os.environ.get("TMPDIR", "/tmp")) / "batchbin-ui-shots")
    try:
        yield
    except BaseException:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        try:
            tab.screenshot(path=str(path), full_page=True)
            print(f"screenshot of the failing step {name!r}: {path} (page {tab.url})")
        except Exception as error:  # the page itself may be gone
            print(f"no screenshot of the failing step {name!r}: {error}")
        raise


def docs_shot(tab, name: str) -> None:
    """The screenshots of docs/deployment.md, written only when asked (BATCHBIN_UI_DOCS=1), in
    128 colours (a third of the size; the UI has few)."""
    if WRITE_DOCS:
        from PIL import Image

        shot = Image.open(io.BytesIO(tab.screenshot())).convert("RGB")
        shot.quantize(colors=128).save(DOCS / f"ui-{name}.png", optimize=True)


def form_label(title: str) -> str:
    """The selector of the form field `title`'s label (the JSON schema property's title; the UI
    adds " (Optional)" to a field with a default)."""
    return f'.schema-form-property__label:text-matches("^{re.escape(title)}( \\\\(Optional\\\\))?$")'


def form_field(tab, title: str):
    """The text box of the form field `title`."""
    return tab.locator(f".schema-form-property:has(> .p-label__header {form_label(title)}) textarea").first


def plain(text: str) -> str:
    """Text as the UI shows it: markdown's code marks gone, typographic quotes straight, white space collapsed."""
    for curly, straight in (("\u2018", "'"), ("\u2019", "'"), ("\u201c", '"'), ("\u201d", '"')):
        text = text.replace(curly, straight)
    return " ".join(text.replace("`", "").split())


def graph_parents(ui: str, flow_run_id) -> dict[str, set[str]]:
    """The upstream task runs Prefect recorded for each task run (what its graph draws), by task name."""
    with urllib.request.urlopen(f"{ui}/api/flow_runs/{flow_run_id}/graph-v2", timeout=30) as answer:
        graph = json.load(answer)
    names = {node_id: node["label"].rsplit("-", 1)[0] for node_id, node in graph["nodes"]}
    return {names[node_id]: {names[parent["id"]] for parent in node["parents"]} for node_id, node in graph["nodes"]}


def run_counts(db_path: Path) -> dict:
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        requests, completed, output_tokens = con.execute(
            "select count(*), count(*) filter (where error is null), sum(output_tokens) from results").fetchone()
        finished_at = con.execute("select finished_at from runs").fetchone()[0]
    finally:
        con.close()
    return {"requests": requests, "completed": completed, "output_tokens": output_tokens, "finished_at": finished_at}


def submit_run_form(tab, stack):
    """Click Submit as a person does, and again if the server answers 503, at most SUBMIT_TRIES
    times: a Prefect server on SQLite answers 503 when a write meets its lock ("database is
    locked", while the worker's poll and the scheduler write too; the UI shows an error toast and
    keeps the form, and nothing was created). The response of the run's creation."""
    for attempt in range(1, SUBMIT_TRIES + 1):
        try:
            with tab.expect_response(lambda answer: answer.url.endswith("/create_flow_run")) as created:
                tab.get_by_role("button", name="Submit", exact=True).click()
        except PlaywrightTimeout:
            said = tab.locator(".p-toast, [class*='error'], [class*='invalid']").all_inner_texts()
            pytest.fail(f"the form started no run: Submit sent no request to create one in {UI_TIMEOUT_MS // 1000} s; "
                        f"the page says: {[text for text in said if text.strip()]}")
        if created.value.status != 503 or attempt == SUBMIT_TRIES:
            break
        print(f"Submit {attempt}: the server answered 503 (its SQLite was locked); submitting again")
        tab.wait_for_timeout(2000)
    assert created.value.ok, (f"the form did not start a run: {created.value.status} {created.value.text()[:2000]}\n"
                              f"server log:\n{stack['logs']['server'].read_text()[-5000:]}")
    return created.value


def wait_completed_in_ui(tab, stack, flow_run_id) -> None:
    """Until the run's page shows a final state (reloaded every 10 s); Completed, or fail with the worker's log."""
    badge = tab.locator(".page-heading-flow-run__meta .state-badge").first
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        shown = badge.inner_text().strip() if badge.count() else ""
        if shown in ("Completed", "Failed", "Crashed", "Cancelled"):
            break
        tab.wait_for_timeout(10_000)
        tab.reload()
        badge.wait_for()
    else:
        pytest.fail(f"the UI did not show run {flow_run_id} finished in {RUN_TIMEOUT_S} s; worker log:\n"
                    f"{stack['logs']['worker'].read_text()[-5000:]}")
    if shown != "Completed":
        with client(stack) as api:
            pytest.fail(f"the UI shows the run {shown}: " + state_of(api.read_flow_run(flow_run_id), stack["logs"]["worker"]))


def test_a_person_starts_a_run_from_the_form_and_reads_its_report_and_charts(stack, page):
    ui, home = stack["ui"], stack["home"]
    prompts_file(home / "ui" / "prompts.jsonl")
    with client(stack) as api:
        schema = api.read_deployment_by_name(ADHOC).parameter_openapi_schema

    with shot_on_failure(page, "1-run-form"):
        page.goto(f"{ui}/deployments")
        page.get_by_role("link", name="batch-adhoc", exact=True).first.click()
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("Custom run", exact=True).click()
        fields = [(model, name, spec.get("title", name.replace("_", " ").title()))  # a sub-form ($ref) has none
                  for model in ("JobConfig", "EngineOptions")
                  for name, spec in schema["definitions"][model]["properties"].items()]
        for model, name, title in fields:  # the form renders in parts: each field's label, when it is there
            page.locator(form_label(title)).first.wait_for()
        form = plain(page.locator("form").first.inner_text())
        for model, name, title in fields:
            description = plain(schema["definitions"][model]["properties"][name]["description"])
            assert description in form, f"the run form shows no description of {model}.{name} ({description!r})"
        form_field(page, "Db Path").fill("ui/batchbin.duckdb")
        form_field(page, "Input Path").fill("ui/prompts.jsonl")
        page.locator(form_label("Input Path")).first.evaluate("label => label.scrollIntoView({block: 'start'})")
        docs_shot(page, "run-form")
        created = submit_run_form(page, stack)
        flow_run_id = created.json()["id"]
        assert created.json()["parameters"]["config"]["input_path"] == "ui/prompts.jsonl"

    with shot_on_failure(page, "2-finished-run"):
        page.locator('li.p-tab:text-is("Runs")').click()  # the deployment's runs, the new one first
        page.locator(f"a[href$='/runs/flow-run/{flow_run_id}']").first.click()
        page.wait_for_url(re.compile(f"/runs/flow-run/{flow_run_id}"))
        wait_completed_in_ui(page, stack, flow_run_id)
        page.get_by_text(f"{len(TASK_RUNS)} Task runs", exact=True).first.wait_for()
        page.wait_for_timeout(2000)  # the graph's canvas draws after the page
        docs_shot(page, "finished-run")

    parents = graph_parents(ui, flow_run_id)
    assert set(parents) == set(TASK_RUNS), parents
    assert parents["load"] == set()
    for before, stage in zip(STAGES, STAGES[1:]):  # each stage hangs below the one before it in the graph
        if stage == "report":  # it reads the schedule's rows too
            assert before in parents[stage], f"Prefect records no edge {before} -> {stage}: {parents}"
        else:
            assert parents[stage] == {before}, f"Prefect records {parents[stage]} -> {stage}, not {before}: {parents}"

    counts = run_counts(home / "ui" / "batchbin.duckdb")
    assert counts["requests"] == counts["completed"] == len(PROMPTS), counts
    with shot_on_failure(page, "3-artifacts"):
        page.locator('li.p-tab:text-is("Artifacts")').click()
        cards = page.locator("a[href*='/artifacts/artifact/']")
        scroller = page.locator(".p-virtual-scroller").last  # draws its cards once it is in view, as a person scrolls
        deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
        while cards.count() < len(ARTIFACT_KEYS) and time.monotonic() < deadline:
            scroller.scroll_into_view_if_needed()
            page.mouse.wheel(0, 400)
            page.wait_for_timeout(500)
        cards.first.scroll_into_view_if_needed()
        docs_shot(page, "artifacts")
        links = {}
        for index in range(cards.count()):
            card = cards.nth(index)
            key = next((line.strip() for line in card.inner_text().splitlines() if line.strip() in ARTIFACT_KEYS), None)
            links.setdefault(key, card.get_attribute("href"))
        assert set(links) == set(ARTIFACT_KEYS), f"the run's artifacts in the UI: {sorted(map(str, links))}"

    for key in ARTIFACT_KEYS:
        with shot_on_failure(page, f"4-{key}"):
            page.goto(ui + links[key])
            page.get_by_text(key).first.wait_for()
            if key in CHART_KEYS:
                image = page.locator("img[src^='data:image/png']").first
                image.wait_for()
                page.wait_for_function("image => image.complete", arg=image.element_handle())
                width = image.evaluate("image => image.naturalWidth")
                assert width > 0, f"{key}: the chart's image does not load in the browser"
                drawn = image.evaluate(DRAWN_SHARE)  # a broken PNG keeps its size and draws in part
                assert drawn > 0.99, f"{key}: the chart's image draws only {drawn:.0%} of itself: its PNG is broken"
            elif key == "batchbin-generation-progress":
                page.get_by_text(f"{len(PROMPTS)}/{len(PROMPTS)} requests").first.wait_for()
            else:
                page.get_by_text("finished_at", exact=True).first.wait_for()
            text = page.locator("main, body").first.inner_text()
            if key == "batchbin-run-report":
                shown = dict(re.findall(r"^(\w+)\t(.*)$", text, re.M))
                assert shown.get("status") == "finished", shown
                assert shown.get("finished_at") not in (None, "None"), f"the report does not say when the run finished: {shown}"
                reported = datetime.fromisoformat(shown["finished_at"])
                assert abs((reported - counts["finished_at"]).total_seconds()) < 5, (shown["finished_at"], counts)
                assert int(shown["requests"]) == int(shown["completed"]) == counts["requests"], shown
                assert int(shown["output_tokens"]) == counts["output_tokens"], (shown, counts)
                docs_shot(page, "report")
            elif key == "batchbin-run-throughput-chart":
                docs_shot(page, "throughput-chart")


def test_a_schedule_fires_and_its_run_completes_with_its_artifacts(stack):
    """batch-nightly with a schedule half a minute ahead (its own cron stays as it is): the
    server's scheduler creates the run, the worker runs it over the night's file."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, DeploymentFilter,
                                                DeploymentFilterId, FlowRunFilter, FlowRunFilterExpectedStartTime)
    from prefect.client.schemas.schedules import IntervalSchedule

    home = stack["home"]
    prompts_file(home / "inbox" / "nightly.jsonl")  # what an upstream job drops in place
    due = (datetime.now(timezone.utc) + timedelta(seconds=SCHEDULE_AHEAD_S)).replace(microsecond=0)
    with client(stack) as api:
        deployment = api.read_deployment_by_name(NIGHTLY)
        api.create_deployment_schedules(deployment.id, [DeploymentScheduleCreate(
            schedule=IntervalSchedule(interval=timedelta(days=1), anchor_date=due), active=True)])
        deadline = time.monotonic() + SCHEDULE_AHEAD_S + SCHEDULER_LOOP_S * 6
        while time.monotonic() < deadline:
            runs = api.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(
                    after_=due - timedelta(seconds=1), before_=due + timedelta(seconds=1))))
            if runs:
                break
            time.sleep(2)
        else:
            pytest.fail(f"the scheduler created no run of {NIGHTLY} for {due.isoformat()} within "
                        f"{SCHEDULE_AHEAD_S + SCHEDULER_LOOP_S * 6} s; server log:\n"
                        f"{stack['logs']['server'].read_text()[-5000:]}")
    assert runs[0].auto_scheduled, "the run was not created by the scheduler"
    flow_run = wait_final(stack, runs[0].id)
    assert flow_run.state.is_completed(), state_of(flow_run, stack["logs"]["worker"])
    assert flow_run.start_time >= due - timedelta(seconds=1), (flow_run.start_time, due)
    with client(stack) as api:
        artifacts = api.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
    assert sorted({artifact.key for artifact in artifacts}) == sorted(ARTIFACT_KEYS)
    counts = run_counts(home / "out" / "batchbin.duckdb")
    assert counts["requests"] == counts["completed"] == len(PROMPTS), counts
    assert len((home / "out" / "nightly_results.jsonl").read_text().splitlines()) == len(PROMPTS)
