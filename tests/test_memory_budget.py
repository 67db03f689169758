"""Memory budget: the available memory (kernel, cgroup, torchrun share), the choice between
holding patterns in memory and reading them batch by batch, and batch sizes that fit."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import diffrecon
import diffrecon.api as api
from diffrecon.cli import main
from diffrecon.data import cxi
from diffrecon.recon import memory_budget as mb

QUIET = ["log.progress=false", "log.tensorboard=false", "log.report=false",
         "log.metrics=false"]
GIB = 2**30


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_meminfo_available_is_read_in_bytes(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683584 kB\nMemFree:        23494812 kB\n"
                       "MemAvailable:   24206428 kB\nBuffers: 1 kB\n")
    assert mb._meminfo_available(meminfo) == 24206428 * 1024
    meminfo.write_text("MemTotal: 1 kB\n")  # a kernel without the field
    assert mb._meminfo_available(meminfo) is None
    assert mb._meminfo_available(tmp_path / "absent") is None


def _proc_cgroup(tmp_path: Path, text: str) -> Path:
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(text)
    return proc


def test_cgroup_v2_headroom_of_the_own_group_counts_reclaimable_cache(tmp_path):
    root = tmp_path / "cgroup"
    job = root / "user.slice" / "job"
    job.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory\n")  # a pure v2 mount
    (job / "memory.max").write_text(f"{8 * GIB}\n")
    (job / "memory.current").write_text(f"{3 * GIB}\n")
    (job / "memory.stat").write_text(f"anon {2 * GIB}\ninactive_file {GIB}\n")
    proc = _proc_cgroup(tmp_path, "0::/user.slice/job\n")
    assert mb._cgroup_available(root, proc) == 6 * GIB
    (job / "memory.max").write_text("max\n")  # no limit
    assert mb._cgroup_available(root, proc) is None
    assert mb._cgroup_available(root, tmp_path / "absent") is None  # not Linux


def test_cgroup_v1_takes_the_tightest_level_of_the_own_hierarchy(tmp_path):
    root = tmp_path / "cgroup"
    job = root / "memory" / "slurm" / "job_7"
    step = job / "step_0"
    step.mkdir(parents=True)
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (root / "memory" / "memory.usage_in_bytes").write_text(f"{20 * GIB}\n")
    (job / "memory.limit_in_bytes").write_text(f"{4 * GIB}\n")  # the job's limit
    (job / "memory.usage_in_bytes").write_text(f"{GIB}\n")
    (job / "memory.stat").write_text(f"total_inactive_file {GIB // 2}\n")
    (step / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "unlimited"
    (step / "memory.usage_in_bytes").write_text(f"{GIB}\n")
    proc = _proc_cgroup(tmp_path, "5:cpu,cpuacct:/slurm\n4:memory:/slurm/job_7/step_0\n0::/\n")
    assert mb._cgroup_available(root, proc) == 3 * GIB + GIB // 2
    (job / "memory.limit_in_bytes").write_text(f"{GIB}\n")  # usage (with cache) over it
    (job / "memory.usage_in_bytes").write_text(f"{3 * GIB}\n")
    (job / "memory.stat").write_text("total_inactive_file 0\n")
    assert mb._cgroup_available(root, proc) == 0  # never negative


def test_available_host_memory_is_the_tightest_bound_shared_by_local_processes(monkeypatch):
    monkeypatch.setattr(mb, "_meminfo_available", lambda: 20 * GIB)
    monkeypatch.setattr(mb, "_cgroup_available", lambda: 6 * GIB)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert mb.available_bytes("cpu") == 6 * GIB
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: four processes on this node
    assert mb.available_bytes("cpu") == 6 * GIB // 4
    monkeypatch.setattr(mb, "_cgroup_available", lambda: None)
    assert mb.available_bytes("cpu") == 20 * GIB // 4
    monkeypatch.setattr(mb, "_meminfo_available", lambda: None)  # no /proc: free pages
    monkeypatch.setattr(mb, "_sysconf_available", lambda: 2 * GIB)
    assert mb.available_bytes("cpu") == GIB // 2
    monkeypatch.setattr(mb, "_sysconf_available", lambda: None)
    assert mb.available_bytes("cpu") is None
    assert mb.available_bytes("meta") is None


def test_available_memory_of_this_machine_is_plausible():
    available = mb.available_bytes("cpu")
    pages = mb._sysconf_available()
    assert available is not None and available > 2**20  # this test process runs in it
    total = __import__("os").sysconf("SC_PHYS_PAGES") * __import__("os").sysconf("SC_PAGE_SIZE")
    assert available <= total and (pages is None or pages <= total)


def test_held_size_follows_the_stored_counts():
    shape = (100, 64, 64)
    assert mb.held_pattern_bytes(shape, np.dtype(np.uint16)) == 100 * 64 * 64 * 2
    assert mb.held_pattern_bytes(shape, np.dtype(np.uint8)) == 100 * 64 * 64 * 2
    assert mb.held_pattern_bytes(shape, np.dtype(np.uint32)) == 100 * 64 * 64 * 4
    assert mb.held_pattern_bytes(shape, np.dtype(np.float32)) == 100 * 64 * 64 * 4
    assert mb.held_pattern_bytes(shape, np.dtype(np.uint16), compact=False) == 100 * 64 * 64 * 4


def test_patterns_are_read_lazily_only_beyond_half_the_available_memory():
    shape, dtype = (10, 32, 32), np.dtype(np.float32)
    held = 10 * 32 * 32 * 4
    lazy, why = mb.choose_lazy(shape, dtype, available=2 * held)
    assert not lazy and "held in memory" in why
    lazy, why = mb.choose_lazy(shape, dtype, available=2 * held - 1)
    assert lazy and "batch by batch" in why and "--in-memory" in why
    # uint16 counts are held at half the size
    assert not mb.choose_lazy(shape, np.dtype(np.uint16), available=held)[0]
    assert not mb.choose_lazy(shape, dtype, available=None)[0]  # unknown: as before


def test_batch_limit_keeps_an_update_within_its_share():
    frame = 128 * 128
    limit = mb.batch_limit(frame, available=GIB)
    assert mb.update_bytes(limit, frame) <= mb.BATCH_SHARE * GIB
    assert mb.update_bytes(limit + 1, frame) > mb.BATCH_SHARE * GIB
    assert mb.batch_limit(frame, available=1) == 1
    assert mb.batch_limit(frame, available=None) is None


def test_stored_dtype_of_a_lazy_file(small_ptycho, tmp_path):
    path = tmp_path / "counts.cxi"
    cxi.save(small_ptycho, path)
    lazy = cxi.load(path, lazy=True)
    assert lazy.patterns.dtype == np.float32  # what reading returns
    assert mb.stored_dtype(lazy.patterns) == np.dtype(np.float32)  # what save wrote
    assert mb.stored_dtype(np.zeros(3, np.uint16)) == np.dtype(np.uint16)


class _Recorded(list):
    """PatternBatches built during a call, with their ``lazy`` flag."""


def _record_batches(monkeypatch: pytest.MonkeyPatch) -> _Recorded:
    made = _Recorded()
    original = api.PatternBatches

    def record(*args, **kwargs):
        batches = original(*args, **kwargs)
        made.append(batches.lazy)
        return batches

    monkeypatch.setattr(api, "PatternBatches", record)
    return made


def test_a_file_larger_than_the_memory_share_is_read_batch_by_batch(
        small_ptycho, tmp_path, monkeypatch, caplog):
    path = tmp_path / "scan.cxi"
    cxi.save(small_ptycho, path)
    held = mb.held_pattern_bytes(small_ptycho.patterns.shape, np.dtype(np.float32))
    overrides = ["recon.epochs=2", *QUIET]
    made = _record_batches(monkeypatch)
    monkeypatch.setattr(mb, "batch_limit", lambda *_: None)  # same batches in both runs

    monkeypatch.setattr(mb, "available_bytes", lambda device="cpu": 100 * held)
    roomy = diffrecon.reconstruct(path, "ptycho", overrides=overrides)
    assert made == [False] * len(made) and made

    made.clear()
    monkeypatch.setattr(mb, "available_bytes", lambda device="cpu": int(1.5 * held))
    with caplog.at_level(logging.INFO, logger="diffrecon"):
        tight = diffrecon.reconstruct(path, "ptycho", overrides=overrides)
    assert made and all(made)
    assert any("batch by batch" in r.getMessage() and str(path) in r.getMessage()
               for r in caplog.records)
    for key in ("object", "probe"):  # the same reconstruction either way
        np.testing.assert_allclose(tight.results[key], roomy.results[key], rtol=0, atol=1e-6)

    made.clear()  # an explicit choice wins
    diffrecon.reconstruct(path, "ptycho", overrides=overrides, lazy=False)
    assert made and not any(made)

    made.clear()  # patterns already in an array: served from it, not copied
    from_array = diffrecon.reconstruct(small_ptycho, "ptycho", overrides=overrides)
    assert made and all(made)
    np.testing.assert_allclose(from_array.results["object"], roomy.results["object"],
                               rtol=0, atol=1e-6)


def test_default_batch_is_capped_by_memory_and_a_set_one_warned(small_ptycho, monkeypatch,
                                                                caplog):
    frame = 32 * 32
    fits = 5  # patterns whose update intermediates fit the batch share
    available = int(mb.update_bytes(fits, frame) / mb.BATCH_SHARE) + 1
    monkeypatch.setattr(mb, "available_bytes", lambda device="cpu": available)
    captured = {}
    original = api.Reconstructor.run

    def run(self):
        captured["batch"] = self.batch_size
        return original(self)

    monkeypatch.setattr(api.Reconstructor, "run", run)
    overrides = ["recon.epochs=1", *QUIET]
    diffrecon.reconstruct(small_ptycho, "ptycho", overrides=overrides)
    assert captured["batch"] == fits  # the default (16 here) did not fit
    with caplog.at_level(logging.WARNING, logger="diffrecon"):
        diffrecon.reconstruct(small_ptycho, "ptycho", overrides=[*overrides,
                                                                 "recon.batch_size=40"])
    assert captured["batch"] == 40  # the user's choice stands, with a warning
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("recon.batch_size=40" in w and f"recon.batch_size={fits} or less" in w
               for w in warnings)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("flags, expected", [([], None), (["--lazy"], True),
                                              (["--in-memory"], False)])
def test_cli_lazy_choice(flags, expected, monkeypatch, tmp_path: Path):
    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(api, "reconstruct", fake)
    with pytest.raises(_Stop):
        main(["-q", "reconstruct", str(tmp_path / "x.cxi"), *flags])
    assert seen["lazy"] is expected


def test_cli_lazy_and_in_memory_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["reconstruct", str(tmp_path / "x.cxi"), "--lazy", "--in-memory"])
    assert "not allowed with" in capsys.readouterr().err
