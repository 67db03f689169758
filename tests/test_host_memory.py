"""Host memory during a run: glibc's freed blocks reused, one-off work handing its memory
back, and jemalloc as the allocator of a process (``diffrecon.recon.host_memory``)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import diffrecon
from diffrecon.recon import host_memory
from diffrecon.recon.host_memory import (
    JEMALLOC_CONF,
    allocator_hint,
    jemalloc_environment,
    system_environment,
)

QUIET = ["log.progress=false"]
FOLDER_OFF = ["log.tensorboard=false", "log.report=false"]


FAULTS_PROBE = """
import resource, torch
from diffrecon.recon.host_memory import return_large_blocks, reuse_freed_blocks

def faults(count=24, mib=48):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(count):
        block = torch.ones(mib * 2**18)  # touched: every page faulted in when freshly mapped
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def resident_mib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20

outside = faults()
with reuse_freed_blocks() as applied:
    inside = faults()
    base = resident_mib()
    block = torch.ones(200 * 2**18)
    del block
    kept = resident_mib() - base  # a freed block stays resident for reuse
    with return_large_blocks():
        block = torch.ones(300 * 2**18)
        del block
    returned = resident_mib() - base  # mapped, unmapped on free; the heap trimmed on exit
    again = faults()
print(outside, inside, applied, round(kept), round(returned), again)
"""


def test_freed_host_blocks_are_reused_during_a_run(small_ptycho):
    """Inside ``reuse_freed_blocks`` freed 48 MiB blocks are reused instead of unmapped and
    faulted in afresh (glibc maps allocations above 32 MiB anew each time), except within
    ``return_large_blocks``; measured in a
    fresh process (a long-lived one's arenas depend on its history). The results of a
    reconstruction do not depend on it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", FAULTS_PROBE], capture_output=True,
                          text=True, env=env, check=True)
    outside, inside, applied, kept, returned, again = done.stdout.split()
    if applied != "True":
        pytest.skip("not glibc: the allocator is left alone")
    # 12288 pages a block: outside every one of the 24 is fresh; inside only the first one to
    # five (the heap growing to its working size; 1-5 over 40 fresh processes), then reused
    assert int(outside) > 24 * 10_000 and int(inside) < int(outside) / 3
    # a freed 200 MiB block stays resident; one-off work within return_large_blocks (the
    # truth comparison) leaves nothing resident, and the reuse resumes after it
    assert int(kept) > 100 and int(returned) < 20 and int(again) < int(outside) / 3
    runs = [diffrecon.reconstruct(small_ptycho, "ptycho", overrides=[
        "recon.epochs=2", f"recon.reuse_host_memory={flag}", *QUIET]) for flag in ("true", "false")]
    np.testing.assert_array_equal(runs[0].results["object"], runs[1].results["object"])


def test_truth_comparison_runs_with_large_blocks_returned(small_ptycho, monkeypatch):
    """During a run (freed blocks kept for reuse) each comparison with the truth runs within
    ``return_large_blocks``, so that its temporaries do not stay resident afterwards."""
    import contextlib

    import diffrecon.api as api

    entered = []

    @contextlib.contextmanager
    def record(enabled=True):
        entered.append(True)
        yield True

    monkeypatch.setattr(api, "return_large_blocks", record)
    result = diffrecon.reconstruct(small_ptycho, "ptycho", overrides=[
        "recon.epochs=4", "log.metric_every=2", *QUIET, *FOLDER_OFF])
    assert len(entered) == 2  # epochs 2 and 4; the final metrics come after the run
    assert np.isfinite(result.metrics["nrmse"])


def test_jemalloc_environment_preloads_the_library_once_and_keeps_user_settings():
    env = jemalloc_environment({"PATH": "/bin", "LD_PRELOAD": "libother.so"},
                               library="libjemalloc.so.2")
    assert env["LD_PRELOAD"] == "libjemalloc.so.2 libother.so"
    assert env["MALLOC_CONF"] == JEMALLOC_CONF and env["PATH"] == "/bin"
    again = jemalloc_environment(env, library="libjemalloc.so.2")
    assert again["LD_PRELOAD"] == env["LD_PRELOAD"]  # not preloaded twice
    mine = jemalloc_environment({"MALLOC_CONF": "narenas:1"}, library="libjemalloc.so.2")
    assert mine["MALLOC_CONF"] == "narenas:1"  # the user's configuration wins


def test_no_jemalloc_environment_without_the_library(monkeypatch):
    monkeypatch.setattr(host_memory, "jemalloc_library", lambda: None)
    assert jemalloc_environment({}) is None


def test_allocator_hint_only_for_large_scans_under_the_system_allocator(monkeypatch):
    monkeypatch.setattr(host_memory, "allocator_in_use", lambda: "system")
    monkeypatch.setattr(host_memory, "jemalloc_library", lambda: "libjemalloc.so.2")
    assert allocator_hint(255 * 2**20) is None
    assert allocator_hint(2**30, device="cuda") is None
    hint = allocator_hint(2**30)
    assert "LD_PRELOAD=libjemalloc.so.2" in hint and JEMALLOC_CONF in hint
    monkeypatch.setattr(host_memory, "jemalloc_library", lambda: None)
    assert "libjemalloc2" in allocator_hint(2**30)
    monkeypatch.setattr(host_memory, "allocator_in_use", lambda: "jemalloc")
    assert allocator_hint(2**30) is None


JEMALLOC_PROBE = """
import sys
import numpy as np
import diffrecon
from diffrecon.recon.host_memory import allocator_in_use, reuse_freed_blocks
data = diffrecon.data.cxi.load(sys.argv[1])
with reuse_freed_blocks() as applied:  # MALLOC_CONF set: glibc's settings are left alone
    pass
result = diffrecon.reconstruct(data, "ptycho", overrides=[
    "recon.epochs=2", "log.progress=false", "log.tensorboard=false", "log.report=false"])
np.save(sys.argv[2], result.results["object"])
print(allocator_in_use(), applied)
"""


@pytest.fixture
def scan_file(small_ptycho, tmp_path):
    """The small scan as a CXI file, for tests that start processes with jemalloc (skipped
    where it is not installed, as on CI)."""
    if jemalloc_environment() is None:
        pytest.skip("jemalloc is not installed (Debian/Ubuntu: libjemalloc2)")
    path = tmp_path / "scan.cxi"
    diffrecon.data.cxi.save(small_ptycho, path)
    return path


def test_a_process_started_with_jemalloc_reconstructs_the_same(scan_file, tmp_path):
    """Under ``jemalloc_environment`` a fresh process maps jemalloc, leaves glibc's settings
    alone and reconstructs what the system allocator does, bit for bit."""
    path = scan_file
    system = system_environment()
    outputs = []
    for name, environment in (("system", system), ("jemalloc", jemalloc_environment(system))):
        out = tmp_path / f"{name}.npy"
        done = subprocess.run([sys.executable, "-c", JEMALLOC_PROBE, str(path), str(out)],
                              capture_output=True, text=True, env=environment, check=True)
        outputs.append(np.load(out))
        allocator, applied = done.stdout.split()[-2:]
        assert allocator == name
        if name == "jemalloc":
            assert applied == "False"
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_a_run_held_in_memory_logs_the_allocator_hint(small_ptycho, monkeypatch, caplog):
    import logging

    import diffrecon.api as api

    sizes = []
    monkeypatch.setattr(api, "allocator_hint",
                        lambda nbytes, device="cpu": sizes.append(nbytes) or "HINT")
    with caplog.at_level(logging.INFO, logger="diffrecon"):
        diffrecon.reconstruct(small_ptycho, "ptycho",
                              overrides=["recon.epochs=1", *QUIET, *FOLDER_OFF])
    assert "HINT" in caplog.text
    assert sizes == [small_ptycho.patterns.size * 4]  # float counts: held as float32 at most


@pytest.fixture
def restart_calls(monkeypatch):
    """``os.execve`` recorded instead of run; jemalloc installed, this process under glibc."""
    calls = []
    monkeypatch.setattr(host_memory.os, "execve", lambda *args: calls.append(args))
    monkeypatch.setattr(host_memory, "jemalloc_library", lambda: "libjemalloc.so.2")
    monkeypatch.setattr(host_memory, "allocator_in_use", lambda: "system")
    monkeypatch.setattr(host_memory.sys, "platform", "linux")
    for name in ("DIFFRECON_ALLOCATOR", host_memory.RESTARTED, "LD_PRELOAD", "MALLOC_CONF"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_a_large_scan_restarts_the_command_under_jemalloc(restart_calls, monkeypatch):
    restart = host_memory.restart_under_jemalloc
    restart(host_memory.LARGE_SCAN_BYTES - 1)
    restart(host_memory.LARGE_SCAN_BYTES, device="cuda")
    assert restart_calls == []  # small, or not in host memory
    restart(host_memory.LARGE_SCAN_BYTES)
    (executable, argv, env), = restart_calls
    assert executable == sys.executable and argv == [sys.executable, *sys.orig_argv[1:]]
    assert env["LD_PRELOAD"].startswith("libjemalloc.so.2")
    assert env["MALLOC_CONF"] == JEMALLOC_CONF and env[host_memory.RESTARTED] == "1"


@pytest.mark.parametrize("why", ["restarted", "system", "jemalloc", "no library", "macos"])
def test_no_restart_when_it_does_not_apply(restart_calls, monkeypatch, why):
    if why == "restarted":
        monkeypatch.setenv(host_memory.RESTARTED, "1")  # never twice: no loop
    elif why == "system":
        monkeypatch.setenv("DIFFRECON_ALLOCATOR", "system")
    elif why == "jemalloc":
        monkeypatch.setattr(host_memory, "allocator_in_use", lambda: "jemalloc")
    elif why == "no library":
        monkeypatch.setattr(host_memory, "jemalloc_library", lambda: None)
    else:
        monkeypatch.setattr(host_memory.sys, "platform", "darwin")
    host_memory.restart_under_jemalloc(2**30)
    assert restart_calls == []


def test_diffrecon_allocator_jemalloc_restarts_whatever_the_size(restart_calls, monkeypatch):
    monkeypatch.setenv("DIFFRECON_ALLOCATOR", "jemalloc")
    host_memory.restart_under_jemalloc(1)
    assert len(restart_calls) == 1


def test_an_unknown_diffrecon_allocator_is_reported_and_taken_as_auto(
        restart_calls, monkeypatch, caplog):
    monkeypatch.setenv("DIFFRECON_ALLOCATOR", "jemaloc")
    host_memory.restart_under_jemalloc(1)
    assert restart_calls == [] and "expected auto, system or jemalloc" in caplog.text
    host_memory.restart_under_jemalloc(2**30)
    assert len(restart_calls) == 1


def test_only_the_command_line_itself_may_restart(small_ptycho, tmp_path, monkeypatch):
    """``diffrecon reconstruct`` run as a command checks for a restart; ``cli.main([...])``
    called from Python (a notebook, these tests) never replaces its process."""
    import diffrecon.api as api
    from diffrecon import cli

    path = tmp_path / "scan.cxi"
    diffrecon.data.cxi.save(small_ptycho, path)
    checked = []
    monkeypatch.setattr(api, "prefer_jemalloc", lambda *args: checked.append(args))
    command = ["reconstruct", str(path), "--out", str(tmp_path / "run"), "--set",
               "recon.epochs=1", *(f"--set={o}" for o in [*QUIET, *FOLDER_OFF])]
    assert cli.main(command) == 0 and checked == []
    monkeypatch.setattr(sys, "argv", ["diffrecon", *command])
    assert cli.main() == 0 and checked == [(str(path), None)]


def test_the_command_restarts_under_jemalloc_and_completes(scan_file, tmp_path):
    """End to end, where jemalloc is installed: the restarted process says it runs jemalloc
    and writes its run folder."""
    path = scan_file
    env = {**system_environment(), "DIFFRECON_ALLOCATOR": "jemalloc"}
    done = subprocess.run(
        [sys.executable, "-m", "diffrecon", "reconstruct", str(path), "--out",
         str(tmp_path / "run"), "--set", "recon.epochs=1", "--set", "log.progress=false"],
        capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "restarting under jemalloc" in done.stderr
    assert "host memory: jemalloc allocator" in done.stderr
    assert (tmp_path / "run" / "reconstruction.h5").exists()
