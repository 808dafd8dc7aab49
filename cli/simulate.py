"""`batchbin simulate`: jobs simulated without a model, on this machine's fitted step costs."""

from __future__ import annotations

import json
from pathlib import Path

import click

from batchbin.cli.plugins import fail
from batchbin.errors import BatchBinError


@click.group("simulate")
def simulate_group() -> None:
    """Simulate jobs without a model: continuous batching with this machine's fitted step
    costs or a GPU's roofline, and the Multi-Bin paper's model (docs/simulator.md).

    \b
    Examples:
      batchbin simulate run --db batchbin.duckdb --order all --gpu h100 --model-size 8b
      batchbin simulate multibin --requests 4096 --batch-size 32
      batchbin simulate fit --db batchbin.duckdb
    """


@simulate_group.command("run")
@click.option("--db", "db_path", default="batchbin.duckdb", show_default=True, help="BatchBin database file.")
@click.option("--run-id", default=None, help="The run to simulate (default: the newest with results).")
@click.option("--order", "orders", default="as-run", show_default=True,
              help="Orders to simulate, comma-separated: as-run (the run's own schedule), auto, hybrid, group, bin, "
                   "sorted, input; or all.")
@click.option("--lengths", type=click.Choice(["real", "predicted", "max-tokens"]), default="real", show_default=True,
              help="Output lengths: the run's real ones (it has generated), its predicted ones, or each request's "
                   "max_tokens (exact where requests fix their length: ignore_eos, min_tokens = max_tokens).")
@click.option("--k-bins", type=click.IntRange(min=1, max=64), default=None, help="Bins for the orders that bin "
                                                                                 "(default: the run's).")
@click.option("--gpu", default=None, help="Also simulate on this GPU: h100, h200, a100 or l4.")
@click.option("--model-size", default=None, help="The model size for --gpu: 135m, 1b, 3b, 8b or 70b.")
@click.option("--kv-admission/--no-kv-admission", default=None,
              help="Hand requests to the engine by their predicted memory, or as vLLM admits them "
                   "(default: as the run did).")
def simulate_run_command(db_path: str, run_id: str | None, orders: str, lengths: str, k_bins: int | None,
                         gpu: str | None, model_size: str | None, kv_admission: bool | None) -> None:
    """Simulate a stored run in any order BatchBin implements, beside what it measured. The CPU
    estimate uses this machine's own step costs (fitted after every run, or by `batchbin doctor
    --calibrate`) and says which fit it used.

    Example: batchbin simulate run --db batchbin.duckdb --order all --gpu h100 --model-size 8b
    """
    from batchbin.sim.stored_runs import (AS_RUN, SIM_ORDERS, cpu_cost, format_simulation, measured, open_run,
                                          simulate_run)

    if (gpu is None) != (model_size is None):
        fail("--gpu and --model-size go together (e.g. --gpu h100 --model-size 8b)")
    names = [AS_RUN, *SIM_ORDERS] if orders == "all" else [name.strip() for name in orders.split(",") if name.strip()]
    unknown = [name for name in names if name not in (AS_RUN, "auto", *SIM_ORDERS)]
    if unknown:
        fail(f"unknown order {', '.join(unknown)}; choose from {AS_RUN}, auto, {', '.join(SIM_ORDERS)} or all")
    try:
        stored = open_run(db_path, run_id)
        simulation = simulate_run(stored, names, lengths, gpu=(gpu, model_size) if gpu else None, k_bins=k_bins,
                                  kv_admission=kv_admission, step_cost=cpu_cost(stored.engine, stored.model, db_path))
        simulation.measured = measured(db_path, stored.run_id)
    except (BatchBinError, FileNotFoundError) as error:
        fail(str(error))
    click.echo(format_simulation(simulation))


@simulate_group.command("multibin")
@click.option("--requests", type=click.IntRange(min=1), default=4096, show_default=True, help="Requests in the job.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Requests per batch.")
@click.option("--lengths", "length_range", default="1,1000", show_default=True,
              help="Output lengths drawn uniformly from MIN,MAX tokens.")
@click.option("--bins", default="1,2,4,8,16,32,64", show_default=True, help="The k values, comma-separated.")
@click.option("--noise", default="0,0.5,1", show_default=True,
              help="Prediction noise levels (sigma of a log-normal error; 0 = exact lengths), comma-separated.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option("--plot", default=None, help="Also draw the curves into this PNG file (needs matplotlib).")
def simulate_multibin_command(requests: int, batch_size: int, length_range: str, bins: str, noise: str, seed: int,
                              plot: str | None) -> None:
    """The Multi-Bin Batching paper's model: throughput against the number of bins k, with
    exact and with noisy predicted lengths.

    Example: batchbin simulate multibin --requests 4096 --batch-size 32 --noise 0,0.5,1
    """
    from batchbin.sim import multibin as model

    try:
        low, high = (int(value) for value in length_range.split(","))
        ks = [int(value) for value in bins.split(",")]
        sigmas = [float(value) for value in noise.split(",")]
    except ValueError:
        fail("--lengths takes MIN,MAX; --bins whole numbers; --noise numbers (all comma-separated)")
    try:
        lengths = model.uniform_lengths(requests, low, high, seed)
        points = model.sweep(lengths, ks, sigmas, batch_size, seed)
        best = model.optimum(lengths, batch_size)
        if plot:
            model.plot(points, best, plot)
    except BatchBinError as error:
        fail(str(error))
    click.echo(f"{requests} requests, lengths uniform in [{low}, {high}], batches of {batch_size}; "
               f"optimum utilisation {best:.3f}")
    click.echo(f"  {'k':>4}  " + "  ".join(f"{'sigma ' + format(s, 'g'):>16}" for s in sigmas))
    for k in ks:
        cells = [point for point in points if point.bins == k]
        click.echo(f"  {k:>4}  " + "  ".join(f"{p.utilisation:8.3f} ({p.speedup:4.2f}x)" for p in cells))
    if plot:
        click.echo(f"plot: {plot}")


@simulate_group.command("fit")
@click.option("--db", "db_paths", multiple=True, default=["batchbin.duckdb"], show_default=True,
              help="BatchBin database with measured runs (their engine_steps); repeat the flag for several.")
@click.option("--run-id", "run_ids", multiple=True, help="Fit on these runs only (repeat the flag; default: all).")
@click.option("--out", default=None,
              help="Write a fit in the format shipped with BatchBin to this file instead (for developers who "
                   "refresh batchbin/sim/data/cpu_step_costs.json). Default: this machine's fits in the cache folder.")
def simulate_fit_command(db_paths: tuple[str, ...], run_ids: tuple[str, ...], out: str | None) -> None:
    """Refit this machine's step costs on the measured engine steps of stored runs, one fit per
    machine and engine kind (dtype, eager or torch.compile, model) from its newest runs, and keep
    them in the cache folder, where `batchbin plan` and `simulate run` find them (every finished
    run refits them too). Nothing inside the installed package is written.

    With --out FILE: the fit shipped with BatchBin (least squares, four terms; runs that the
    typical step misses by more than 15%, slowed by another process, left out and named) is
    written to FILE.

    \b
    Examples:
      batchbin simulate fit --db batchbin.duckdb
      batchbin simulate fit --db runs.duckdb --out batchbin/sim/data/cpu_step_costs.json
    """
    from batchbin.sim.machine_fits import cost_terms, fit_stored_runs, step_costs_path

    try:
        if out:
            from batchbin.sim.stored_runs import fit_from_db

            cost = fit_from_db(list(db_paths), list(run_ids) or None)
            path = cost.save(Path(out))
            click.echo(json.dumps({"path": str(path), **cost.__dict__}, indent=2, default=str))
            return
        fits = fit_stored_runs(list(db_paths), list(run_ids) or None)
    except (BatchBinError, FileNotFoundError) as error:
        fail(str(error))
    for fit in fits:
        click.echo(f"step costs: {fit.describe()}, {fit.key.model}\n  {cost_terms(fit.cost)}")
    click.echo(f"kept in {step_costs_path()}: `batchbin plan` and `batchbin simulate run` use them")
