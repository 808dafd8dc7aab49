"""Table jobs end to end: `batchbin plan` of a query with --field-order auto (no engine), the
batch flow on a query job with --check-agreement (the real default model), and a query problem
stopping a run before anything is written."""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from batchbin.cli.main import main
from batchbin.config import EngineOptions, JobConfig
from tests.conftest import TEST_ENGINE

GUIDE = "You sort shop orders for the warehouse team. " * 12  # a long shared instruction (~130 tokens)
TEMPLATE = GUIDE + "\nOrder:\n{fields}\nAnswer with one word, the department:"


@pytest.fixture(scope="module")
def orders(tmp_path_factory):
    """12 orders: a distinct order note first, then a store and its long description."""
    stores = {"north": "North Street store, open late, with a large garden centre and a cafe " * 2,
              "south": "South Square store, small, next to the station, mostly groceries " * 2}
    rows = [{"id": f"o{i}", "note": f"order {i}: {i * 7 % 5} items", "store": store, "store_info": stores[store]}
            for i, store in zip(range(12), ["north", "south"] * 6)]
    path = tmp_path_factory.mktemp("orders") / "orders.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_plan_shows_the_prefix_reuse_of_the_users_order_and_the_chosen_one(orders, prefect_api, default_model_path):
    result = CliRunner().invoke(main, ["plan", "--query", f"from '{orders}'", "--template", TEMPLATE,
                                       "--field-order", "auto", "--max-tokens", "4"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.strip().startswith("field order     chosen: store_info") for line in lines), result.output
    user = next(line for line in lines if "in the query's column order" in line)
    chosen = next(line for line in lines if "in the chosen order" in line)

    def computed(line: str) -> int:
        return int(line.split("), ")[1].split(" to compute")[0].replace(",", ""))

    assert computed(chosen) < computed(user)


@pytest.mark.engine
def test_a_query_job_runs_with_the_chosen_order_and_reports_agreement(orders, tmp_path, prefect_api):
    from batchbin.flows.batch import batch_inference
    from batchbin.store.frames import results

    config = JobConfig(query=f"select * from '{orders}'", template=TEMPLATE, field_order="auto", check_agreement=4,
                       db_path=str(tmp_path / "bb.duckdb"), output_path=str(tmp_path / "out.parquet"), max_tokens=4,
                       engine=EngineOptions(**TEST_ENGINE))
    report = batch_inference(config)
    assert report["completed"] == 12 and report["errors"] == 0
    assert report["answer_agreement_rows"] == 4 and 0 <= report["answer_agreement"] <= 1
    assert report["stage_seconds"]["agreement"] > 0
    # joinable to the source by id: the output file, batchbin.results()
    con = duckdb.connect()
    joined = con.execute(f"select count(*) from '{tmp_path / 'out.parquet'}' r join '{orders}' o using (id)").fetchone()
    assert joined == (12,)
    assert sorted(results(config.db_path)["id"].to_list()) == sorted(f"o{i}" for i in range(12))
    con = duckdb.connect(config.db_path, read_only=True)
    content = con.execute("select messages->>'$[0].content' from prompts where request_id = 'o1'").fetchone()[0]
    con.close()
    assert content.index("store_info:") < content.index("store:") < content.index("note:")  # shared fields first
    # the same query on changed rows is a new run
    assert JobConfig(query=f"select * from '{orders}' where id <> 'o1'", template=TEMPLATE, field_order="auto") \
        .run_id(JobConfig(query=f"select * from '{orders}' where id <> 'o1'", template=TEMPLATE,
                          field_order="auto").input_fingerprint()) != report["run_id"]


def test_a_missing_column_stops_the_run_before_anything_is_written(orders, tmp_path, prefect_api):
    db_file = tmp_path / "x.duckdb"
    result = CliRunner().invoke(main, ["run", "--query", f"from '{orders}'", "--template", "Store {shop}: {fields}",
                                       "--db", str(db_file)])
    assert result.exit_code == 1
    assert "the template names the column 'shop', which the query does not return" in result.output
    assert not db_file.exists()


def test_run_takes_a_file_or_a_query_not_both(orders, tmp_path):
    result = CliRunner().invoke(main, ["run", str(orders), "--query", "select 1", "--db", str(tmp_path / "x.duckdb")])
    assert result.exit_code == 1 and "not both" in result.output
