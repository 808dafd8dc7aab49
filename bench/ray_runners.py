"""Two ways to show a scaled-out run's engines in Prefect, measured on a real local Ray
cluster (a head and one more node, one CPU each):

- prefect-ray's RayTaskRunner: each task runs in a Ray worker process, which must reach the
  Prefect API itself;
- Ray actors driven from tasks (what BatchBin does): the tasks run on Prefect's thread pool in
  the driver and call into actors, so only the driver talks to Prefect.

    python -m batchbin.bench.ray_runners --tasks 8

For each: wall time of a flow of --tasks tasks that each make one Ray round trip (the task
overhead a share pays), and whether every task run reached the Prefect API as Completed, with
the API URL the task saw. Runs against Prefect's temporary local server, as `batchbin run` does.
"""

from __future__ import annotations

import argparse
import os
import platform
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8)
    args = parser.parse_args()

    import ray
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.context import get_run_context
    from prefect.settings import get_current_settings
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_ray import RayTaskRunner
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        @ray.remote(num_cpus=0)
        class Echo:
            def where(self) -> str:
                return ray.get_runtime_context().get_node_id()[:8]

        @task
        def on_ray_worker(i: int) -> dict:
            return {"pid": os.getpid(), "api_url_env": os.environ.get("PREFECT_API_URL"),
                    "api_url_setting": get_current_settings().api.url}

        @task
        def driving_an_actor(i: int, actor) -> dict:
            return {"pid": os.getpid(), "node": ray.get(actor.where.remote()),
                    "api_url_setting": get_current_settings().api.url}

        def states_of(flow_run_id) -> list[str]:
            import asyncio

            async def read():
                from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

                async with get_client() as client:
                    runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
                    return [run.state.name for run in runs]
            return asyncio.run(read())

        @flow(task_runner=RayTaskRunner(address=cluster.address))
        def with_ray_task_runner(count: int):
            started = time.perf_counter()
            outs = [future.result() for future in on_ray_worker.map(range(count))]
            return time.perf_counter() - started, outs, get_run_context().flow_run.id

        @flow(task_runner=ThreadPoolTaskRunner(max_workers=count_workers(args.tasks)))
        def with_actors(count: int):
            ray.init(address=cluster.address, ignore_reinit_error=True)
            actors = [Echo.remote() for _ in range(2)]
            ray.get([actor.where.remote() for actor in actors])
            started = time.perf_counter()
            outs = [future.result() for future in driving_an_actor.map(range(count), [actors[i % 2] for i in range(count)])]
            return time.perf_counter() - started, outs, get_run_context().flow_run.id

        cpu = platform.processor() or platform.machine()
        for name, runner_flow in (("RayTaskRunner", with_ray_task_runner), ("actors from tasks", with_actors)):
            try:
                seconds, outs, flow_run_id = runner_flow(args.tasks)
                states = states_of(flow_run_id)
                print(f"{name}: {args.tasks} tasks in {seconds:.2f} s ({1000 * seconds / args.tasks:.0f} ms each), "
                      f"task runs in the API: {sorted(set(states))} x{len(states)}, worker pids "
                      f"{sorted({o['pid'] for o in outs})} (driver {os.getpid()}), API URL seen: "
                      f"{sorted({str(o.get('api_url_setting')) for o in outs})}; {cpu}", flush=True)
            except Exception as error:
                print(f"{name}: failed: {type(error).__name__}: {error}", flush=True)
            if ray.is_initialized():
                ray.shutdown()
    finally:
        cluster.shutdown()


def count_workers(tasks: int) -> int:
    return max(1, min(tasks, 8))


if __name__ == "__main__":
    main()
