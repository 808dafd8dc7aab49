"""The preload of tcmalloc / Intel OpenMP: finding what this process has, and restarting the
`batchbin` command once with it."""

from __future__ import annotations

import os
import sys

import pytest

from batchbin.engine import preload


def test_libraries_in_this_process_are_read_from_the_memory_map(tmp_path):
    maps = tmp_path / "maps"
    lib = tmp_path / "libtcmalloc_minimal.so.4"
    lib.write_bytes(b"")
    maps.write_text(
        f"7f0000000000-7f0000001000 r-xp 00000000 08:01 1234   {lib}\n"
        "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0      [stack]\n"
        "7f0000002000-7f0000003000 rw-p 00000000 00:00 0\n"
    )
    loaded = preload.libraries_in_this_process(str(maps))
    assert loaded == frozenset({str(lib.resolve())})
    assert preload.all_loaded((str(lib),), loaded)
    assert not preload.all_loaded((str(lib), "/venv/lib/libiomp5.so"), loaded)
    assert not preload.all_loaded((), loaded)  # nothing to preload is not "preloaded"
    assert preload.libraries_in_this_process(str(tmp_path / "none")) == frozenset()


def test_this_process_shows_its_own_libraries():
    loaded = preload.libraries_in_this_process()
    assert any("python" in os.path.basename(path) or "libc" in os.path.basename(path) for path in loaded)


@pytest.fixture
def exec_calls(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(preload.os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    monkeypatch.setattr(preload, "find_preload_libs", lambda: ("/venv/lib/libtcmalloc_minimal.so.4",))
    monkeypatch.setattr(preload, "gpu_present", lambda: False)
    monkeypatch.delenv(preload.RESTARTED_FLAG, raising=False)
    monkeypatch.setenv("LD_PRELOAD", "/users/own.so")
    return calls


def test_the_command_restarts_once_with_the_preload_and_its_arguments(exec_calls, monkeypatch):
    preload.restart_with_preload(["/venv/bin/batchbin", "run", "prompts.jsonl", "--max-tokens", "8"])
    (path, argv, env), = exec_calls
    assert path == sys.executable
    assert argv == [sys.executable, "-m", "batchbin.cli.main", "run", "prompts.jsonl", "--max-tokens", "8"]
    assert env["LD_PRELOAD"] == "/venv/lib/libtcmalloc_minimal.so.4:/users/own.so"
    assert env[preload.RESTARTED_FLAG] == "1"
    monkeypatch.setenv(preload.RESTARTED_FLAG, "1")  # the restarted process does not restart again
    preload.restart_with_preload(["batchbin", "run", "prompts.jsonl"])
    assert len(exec_calls) == 1


def test_no_restart_when_preload_is_off_or_on_a_gpu(exec_calls, monkeypatch):
    preload.restart_with_preload(["batchbin", "run", "prompts.jsonl", "--no-preload"])
    monkeypatch.setattr(preload, "gpu_present", lambda: True)
    preload.restart_with_preload(["batchbin", "run", "prompts.jsonl"])
    monkeypatch.setattr(preload, "gpu_present", lambda: False)
    monkeypatch.setattr(preload, "find_preload_libs", lambda: ())
    preload.restart_with_preload(["batchbin", "run", "prompts.jsonl"])
    assert exec_calls == []
