"""End-to-end runs: convergence, resume, NaN recovery, run folder and TensorBoard contents."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import diffrecon
from diffrecon.data import cxi
from diffrecon.data.results import read_results
from diffrecon.errors import DivergenceError
from diffrecon.recon.reconstructor import Reconstructor
from diffrecon.runconfig import load_config

QUIET = ["log.progress=false"]


def test_reconstruction_approaches_truth(small_ptycho):
    result = diffrecon.reconstruct(small_ptycho, "ptycho", overrides=[
        "recon.epochs=25", "log.metric_every=5", *QUIET])
    nrmse = [v for v in result.history["metric/nrmse"] if np.isfinite(v)]
    assert nrmse[-1] < 0.5 * nrmse[0]
    assert result.metrics["nrmse"] < 0.15
    assert result.metrics["phase_rmse"] < 0.15


@pytest.mark.parametrize("algorithm", ["epie", "rpie"])
def test_pie_engines_reconstruct(small_ptycho, algorithm):
    result = diffrecon.reconstruct(small_ptycho, "ptycho", overrides=[
        "recon.epochs=15", f"algorithm.name={algorithm}", "log.metric_every=5", *QUIET])
    nrmse = [v for v in result.history["metric/nrmse"] if np.isfinite(v)]
    assert nrmse[-1] < 0.7 * nrmse[0]


def test_resume_equals_uninterrupted_run(small_ptycho, tmp_path):
    settings = ["recon.checkpoint_every=3", "log.tensorboard=false", "log.report=false", *QUIET]
    whole = diffrecon.reconstruct(small_ptycho, "ptycho", out=tmp_path / "a",
                                  overrides=["recon.epochs=6", *settings])
    diffrecon.reconstruct(small_ptycho, "ptycho", out=tmp_path / "b",
                          overrides=["recon.epochs=3", *settings])
    resumed = diffrecon.reconstruct(small_ptycho, resume=tmp_path / "b",
                                    overrides=["recon.epochs=6"])
    for key in ("object", "probe"):
        np.testing.assert_allclose(resumed.results[key], whole.results[key], atol=1e-5)
    assert len(resumed.history["loss/total"]) == 6
    np.testing.assert_allclose(resumed.history["loss/total"], whole.history["loss/total"],
                               rtol=1e-5)


def test_injected_nan_is_recovered(small_ptycho, monkeypatch):
    original = Reconstructor.run_epoch
    injected = []

    def faulty(self, epoch):
        logs = original(self, epoch)
        if epoch == 2 and not injected and self.config.epochs == 5:  # not in probe trials
            injected.append(epoch)
            with torch.no_grad():
                self.model.object[0, 5, 5] = float("nan")
        return logs

    monkeypatch.setattr(Reconstructor, "run_epoch", faulty)
    result = diffrecon.reconstruct(small_ptycho, "ptycho", overrides=["recon.epochs=5", *QUIET])
    assert injected and result.history["recoveries"] == [2.0]
    assert np.all(np.isfinite(result.results["object"]))
    rates = result.history["lr/object"]
    assert rates[2] == pytest.approx(rates[1] / 2)


def test_persistent_nan_raises(small_ptycho, monkeypatch):
    def broken(self, epoch):
        return {"loss/total": float("nan")}

    monkeypatch.setattr(Reconstructor, "run_epoch", broken)
    with pytest.raises(DivergenceError, match="NaN"):
        diffrecon.reconstruct(small_ptycho, "ptycho",
                              overrides=["recon.epochs=3", "recon.max_recoveries=2", *QUIET])


def test_run_folder_and_tensorboard_tags(small_ptycho, tmp_path):
    out = tmp_path / "run"
    diffrecon.reconstruct(small_ptycho, "ptycho", out=out, overrides=[
        "recon.epochs=4", "log.image_every=2", "log.metric_every=2", *QUIET])
    arrays, attrs = read_results(out / "reconstruction.h5")
    assert arrays["object"].dtype == np.complex64 and arrays["object"].ndim == 3
    assert arrays["probe"].ndim == 3 and arrays["positions_m"].shape == (80, 2)
    assert len(attrs["pixel_size_m"]) == 2 and len(attrs["origin_m"]) == 2
    assert "history/loss/total" in arrays
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_config(out / "config.toml").modality == "ptycho"
    assert (out / "checkpoint.pt").exists()
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars, images = set(events.Tags()["scalars"]), set(events.Tags()["images"])
    assert {"loss/total", "loss/amplitude", "lr/object", "metric/nrmse",
            "metric/phase_rmse"} <= scalars
    assert {"object/amplitude", "object/phase", "probe/mode0/amplitude"} <= images


def test_lazy_reading_matches_memory(small_ptycho, tmp_path):
    path = tmp_path / "scan.cxi"
    cxi.save(small_ptycho, path)
    overrides = ["recon.epochs=3", "log.metrics=false", *QUIET]
    eager = diffrecon.reconstruct(path, "ptycho", overrides=overrides)
    lazy = diffrecon.reconstruct(path, "ptycho", overrides=overrides, lazy=True)
    np.testing.assert_allclose(lazy.results["object"], eager.results["object"], atol=1e-5)


def test_position_refinement_reduces_error():
    from diffrecon.data.simulate import simulate_ptycho
    from tests.conftest import small_ptycho_settings

    data = simulate_ptycho(small_ptycho_settings(position_error_px=1.0, scan_points=100))
    result = diffrecon.reconstruct(data, "ptycho", overrides=[
        "recon.epochs=40", "params.positions.enabled=true", "params.positions.start=5",
        "log.metric_every=40", *QUIET])
    assert result.metrics["position_error_px"] < 0.6


def test_masked_beamstop_is_honoured():
    from diffrecon.data.simulate import simulate_ptycho
    from tests.conftest import small_ptycho_settings

    data = simulate_ptycho(small_ptycho_settings(mask_beamstop_px=4))
    assert (~data.valid).sum() == 16 and np.all(data.patterns[:, ~data.valid] == 0)
    result = diffrecon.reconstruct(data, "ptycho", overrides=[
        "recon.epochs=20", "log.metric_every=20", *QUIET])
    assert result.metrics["nrmse"] < 0.2


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    from diffrecon.recon.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1})

    def torn(obj, stream):
        stream.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(OSError):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_slow_truth_metrics_are_reported_once_with_a_spacing(caplog):
    """A comparison with the truth slower than the epochs before it gets one log line with a
    metric_every that keeps it to about a fifth of the run; a fast one gets none."""
    import logging
    import time
    from types import SimpleNamespace

    from diffrecon.recon.callbacks import Metrics

    def slow(_model):
        time.sleep(0.2)
        return {"nrmse": 0.5}

    from collections import defaultdict

    run = SimpleNamespace(model=None, config=SimpleNamespace(epochs=20),
                          history=defaultdict(list))  # as Reconstructor.history
    metrics = Metrics(slow, every=2)
    with caplog.at_level(logging.INFO, logger="diffrecon"):
        for epoch in range(6):
            run.history["loss/total"].append(1.0)
            run.history["time/epoch_s"].append(0.01)
            metrics.on_epoch_end(run, epoch, {})
    lines = [r.getMessage() for r in caplog.records if "ground truth took" in r.getMessage()]
    assert len(lines) == 1  # once, not at every evaluation
    spacing = int(lines[0].split("log.metric_every=")[1].split()[0])
    assert 80 <= spacing <= 200  # 4 x 0.2 s x 2 epochs / 0.02 s = 80, sleep may overrun
    assert run.history["metric/nrmse"][1] == 0.5 and np.isnan(run.history["metric/nrmse"][0])

    caplog.clear()
    fast = Metrics(lambda _model: {"nrmse": 0.5}, every=2)
    with caplog.at_level(logging.INFO, logger="diffrecon"):
        for epoch in range(6, 10):
            run.history["loss/total"].append(1.0)
            run.history["time/epoch_s"].append(0.5)
            fast.on_epoch_end(run, epoch, {})
    assert not [r for r in caplog.records if "ground truth took" in r.getMessage()]
