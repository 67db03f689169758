"""The reconstruction loop end to end: convergence against ground truth, resume, NaN recovery,
TensorBoard and run-folder contents, atomic checkpoints, near-field geometry, lazy data."""

from __future__ import annotations

import dataclasses
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import diffrecon
from diffrecon.config import tomllib  # tomli before Python 3.11
from diffrecon.data import cxi, scans
from diffrecon.data.container import DiffractionData, Truth
from diffrecon.data.phantoms import complex_phantom, smooth_noise
from diffrecon.data.results import read_results
from diffrecon.data.simulate import simulate_patterns, simulate_ptycho
from diffrecon.errors import DataFormatError, DivergenceError
from diffrecon.losses.likelihoods import make_likelihood
from diffrecon.models.ptycho import Ptycho, PtychoConfig
from diffrecon.physics import optics
from diffrecon.physics.propagators import AngularSpectrum, SamplingWarning
from diffrecon.recon import initialize
from diffrecon.recon.checkpoint import load_checkpoint, save_checkpoint
from diffrecon.recon.evaluation import truth_evaluator
from diffrecon.recon.initialize import central_patterns
from diffrecon.recon.reconstructor import Reconstructor
from diffrecon.runconfig import RunConfig, build_config, load_config
from tests.conftest import small_ptycho_settings

QUIET = ["log.progress=false"]
FOLDER_OFF = ["log.tensorboard=false", "log.report=false"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """One intra-op thread: these problems are too small to gain from two, and when another
    process on the two cores also runs two OpenMP threads, each run slows down 10-50x."""
    torch.set_num_threads(1)


def evaluated(history: dict[str, list[float]], name: str = "metric/nrmse") -> list[float]:
    """The epochs at which the metric was evaluated (history holds NaN in between)."""
    return [v for v in history[name] if math.isfinite(v)]


def initial_nrmse(data: DiffractionData, **config: object) -> float:
    """Error of the untouched starting object (flat, unit transmission) against the truth."""
    model = Ptycho.from_data(data, PtychoConfig(**config))  # type: ignore[arg-type]
    return truth_evaluator(data.truth, data.positions_m)(model)["nrmse"]


def main_run(run: Reconstructor) -> bool:
    """True for the reconstruction proper, False for the short initial-probe trials (which
    ``reconstruct`` builds without callbacks)."""
    return bool(run.callbacks)


# --- convergence against ground truth -------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["gradient", "epie", "rpie"])
def test_a_few_epochs_approach_the_truth(small_ptycho, algorithm):
    """After 15 epochs the ambiguity-removed object error is well below both the first
    evaluation (epoch 3) and the error of the flat starting object (0.31 on this scan).
    Reached: gradient 0.22 -> 0.14, ePIE 0.21 -> 0.12, rPIE 0.16 -> 0.04."""
    result = diffrecon.reconstruct(small_ptycho, "ptycho", overrides=[
        "recon.epochs=15", f"algorithm.name={algorithm}", "log.metric_every=3", *QUIET])
    nrmse = evaluated(result.history)
    assert len(nrmse) == 5 and len(result.history["metric/nrmse"]) == 15
    start = initial_nrmse(small_ptycho)
    assert nrmse[-1] < 0.75 * nrmse[0]
    assert nrmse[-1] < 0.6 * start and nrmse[-1] < 0.2
    assert result.metrics["nrmse"] == pytest.approx(nrmse[-1])
    phase = evaluated(result.history, "metric/phase_rmse")
    assert phase[-1] < 0.75 * phase[0]
    losses = result.history["loss/total"]
    assert losses[-1] < losses[0]


def test_probe_trials_of_a_large_scan_use_its_central_patterns(monkeypatch):
    """Probe-guess trials on a 300-position scan visit only the 128 positions nearest its
    centre (a quarter of it, at least 128), every trial the same ones; the run proper visits all."""
    settings = dataclasses.replace(small_ptycho_settings(), scan_points=300, frame_px=16,
                                   noise="none")
    data = simulate_ptycho(settings)
    visited: dict[bool, list[set[int]]] = {True: [], False: []}
    original = Reconstructor.run_epoch

    def run_epoch(self: Reconstructor, epoch: int) -> dict[str, float]:
        seen = {int(i) for group in self._epoch_batches(epoch) for i in group}
        visited[main_run(self)].append(seen)
        return original(self, epoch)

    monkeypatch.setattr(Reconstructor, "run_epoch", run_epoch)
    diffrecon.reconstruct(data, "ptycho", overrides=["recon.epochs=2", *QUIET])
    trials, proper = visited[False], visited[True]
    # 7 candidates for 2 epochs, then 3 finalists go on from there to 8
    assert len(trials) == 7 * 2 + 3 * 6 and proper == [set(range(300))] * 2
    assert all(seen == trials[0] for seen in trials) and len(trials[0]) == 128
    positions = np.asarray(data.positions_m)
    distance = np.linalg.norm(positions - positions.mean(0), axis=1)
    inside = distance[sorted(trials[0])]
    outside = np.delete(distance, sorted(trials[0]))
    assert inside.max() <= outside.min() + 1e-12
    assert central_patterns(SimpleNamespace(positions=torch.zeros(80, 2))) is None


def test_probe_finalists_go_on_from_their_first_trials(small_ptycho, monkeypatch):
    """A finalist's trial continues where its first one stopped (model, moments, history):
    its loss equals that of the same candidate run for the full length without a break; the
    others keep their first-trial loss. (The epoch count is checked in the test above.)"""
    results = {}

    def compare(model, candidates, make_run):
        every = len(candidates)
        results["first"] = initialize.select_initial_guess(
            model, candidates, make_run, epochs=2, first_epochs=2, finalists=every)
        results["whole"] = initialize.select_initial_guess(
            model, candidates, make_run, epochs=8, first_epochs=8, finalists=every)
        results["staged"] = initialize.select_initial_guess(model, candidates, make_run)
        return results["staged"]

    monkeypatch.setattr(diffrecon.api, "select_initial_guess", compare)
    diffrecon.reconstruct(small_ptycho, "ptycho", overrides=["recon.epochs=1", *QUIET])
    first, whole, staged = results["first"], results["whole"], results["staged"]
    finalists = sorted(first, key=first.__getitem__)[:3]
    assert len(staged) == 7
    for label in staged:
        expected = whole[label] if label in finalists else first[label]
        assert staged[label] == pytest.approx(expected, rel=1e-12), label


# --- resume ---------------------------------------------------------------------------------


def assert_same_run(first: diffrecon.Result, second: diffrecon.Result) -> None:
    for key in ("object", "probe", "positions_m"):
        np.testing.assert_allclose(second.results[key], first.results[key], rtol=0, atol=1e-6)
    for name in ("loss/total", "lr/object", "lr/probe"):
        assert len(second.history[name]) == len(first.history[name])
        np.testing.assert_allclose(second.history[name], first.history[name], rtol=1e-6)


def test_resume_equals_an_uninterrupted_run(small_ptycho, tmp_path):
    settings = ["recon.checkpoint_every=3", *FOLDER_OFF, *QUIET]
    whole = diffrecon.reconstruct(small_ptycho, "ptycho", out=tmp_path / "a",
                                  overrides=["recon.epochs=6", *settings])
    diffrecon.reconstruct(small_ptycho, "ptycho", out=tmp_path / "b",
                          overrides=["recon.epochs=3", *settings])
    assert load_checkpoint(tmp_path / "b")["epoch"] == 3
    resumed = diffrecon.reconstruct(small_ptycho, resume=tmp_path / "b",
                                    overrides=["recon.epochs=6"])
    assert resumed.out == tmp_path / "b"
    assert_same_run(whole, resumed)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] == 6
    assert load_config(tmp_path / "b" / "config.toml").recon.epochs == 6


def test_resume_after_an_interruption(small_ptycho, tmp_path, monkeypatch):
    """Killed during epoch 4 (Ctrl-C), the run continues from its epoch-3 checkpoint and ends
    where an uninterrupted run ends."""
    settings = ["recon.epochs=6", "recon.checkpoint_every=3", *FOLDER_OFF, *QUIET]
    whole = diffrecon.reconstruct(small_ptycho, "ptycho", overrides=settings)
    original = Reconstructor.run_epoch

    def interrupted(self, epoch):
        if main_run(self) and epoch == 4:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Reconstructor, "run_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        diffrecon.reconstruct(small_ptycho, "ptycho", out=tmp_path / "run", overrides=settings)
    monkeypatch.setattr(Reconstructor, "run_epoch", original)
    assert load_checkpoint(tmp_path / "run")["epoch"] == 3
    resumed = diffrecon.reconstruct(small_ptycho, resume=tmp_path / "run" / "checkpoint.pt")
    assert_same_run(whole, resumed)


def test_resume_from_a_folder_without_checkpoint_is_a_clear_error(small_ptycho, tmp_path):
    with pytest.raises(DataFormatError, match="checkpoint.pt"):
        diffrecon.reconstruct(small_ptycho, resume=tmp_path)


# --- NaN / Inf recovery ---------------------------------------------------------------------


@pytest.mark.parametrize("where", ["object and loss", "object only", "loss only"])
def test_injected_nan_is_recovered(small_ptycho, monkeypatch, where):
    original = Reconstructor.run_epoch
    injected: list[int] = []

    def faulty(self, epoch):
        logs = original(self, epoch)
        if main_run(self) and epoch == 2 and not injected:
            injected.append(epoch)
            if "object" in where:
                with torch.no_grad():
                    self.model.object[0, 40:45, 40:45] = float("nan")
            if "loss" in where:
                logs = {**logs, "loss/total": float("nan")}
        return logs

    monkeypatch.setattr(Reconstructor, "run_epoch", faulty)
    result = diffrecon.reconstruct(small_ptycho, "ptycho", overrides=[
        "recon.epochs=6", "log.metrics=false", *QUIET])
    assert injected == [2]
    assert result.history["recoveries"] == [2.0]
    for key in ("object", "probe", "positions_m"):
        assert np.all(np.isfinite(result.results[key]))
    for parameter in result.model.parameters():
        assert bool(torch.isfinite(parameter).all())
    losses = result.history["loss/total"]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    for name in ("lr/object", "lr/probe"):
        rates = result.history[name]
        assert rates[2] == pytest.approx(rates[1] / 2, rel=1e-12)


def test_persistent_nan_raises_divergence_error(small_ptycho, monkeypatch):
    original = Reconstructor.run_epoch
    calls: list[int] = []

    def broken(self, epoch):
        if not main_run(self):
            return original(self, epoch)
        calls.append(epoch)
        return {"loss/total": float("nan")}

    monkeypatch.setattr(Reconstructor, "run_epoch", broken)
    with pytest.raises(DivergenceError, match=r"epoch 0: NaN/Inf persisted after 2 rollbacks"):
        diffrecon.reconstruct(small_ptycho, "ptycho", overrides=[
            "recon.epochs=3", "recon.max_recoveries=2", *QUIET])
    assert calls == [0, 0, 0]  # the first try and two rollbacks


# --- TensorBoard and the run folder ---------------------------------------------------------


def test_tensorboard_tags_and_run_folder(small_ptycho, tmp_path):
    out = tmp_path / "run"
    overrides = ["recon.epochs=4", "log.image_every=2", "log.metric_every=2", *QUIET]
    result = diffrecon.reconstruct(small_ptycho, "ptycho", out=out, overrides=overrides)
    assert result.out == out

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars, images = set(events.Tags()["scalars"]), set(events.Tags()["images"])
    assert {"loss/total", "loss/amplitude", "lr/object", "lr/probe", "metric/nrmse",
            "metric/phase_rmse"} <= scalars
    assert {"object/amplitude", "object/phase", "probe/mode0/amplitude",
            "probe/mode0/phase"} <= images
    assert [e.step for e in events.Scalars("loss/total")] == [1, 2, 3, 4]
    np.testing.assert_allclose([e.value for e in events.Scalars("loss/total")],
                               result.history["loss/total"], rtol=1e-6)
    assert [e.step for e in events.Scalars("metric/nrmse")] == [2, 4]
    assert [e.step for e in events.Images("object/phase")] == [2, 4]

    arrays, attrs = read_results(out / "reconstruction.h5")
    assert arrays["object"].dtype == np.complex64 and arrays["object"].ndim == 3
    np.testing.assert_array_equal(arrays["object"], result.results["object"])
    np.testing.assert_array_equal(arrays["probe"], result.results["probe"])
    assert arrays["positions_m"].shape == (small_ptycho.num_patterns, 2)
    np.testing.assert_allclose(arrays["positions_m"], result.results["positions_m"])
    np.testing.assert_allclose(attrs["pixel_size_m"], result.model.pixel_size_m)
    np.testing.assert_allclose(attrs["origin_m"], result.model.origin_m)
    assert attrs["modality"] == "ptycho"
    assert attrs["metric_nrmse"] == pytest.approx(result.metrics["nrmse"])
    np.testing.assert_allclose(arrays["history/loss/total"], result.history["loss/total"])

    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "config.toml").read_text()
    tomllib.loads(text)
    written = load_config(out / "config.toml")
    assert isinstance(written, RunConfig)
    assert written == build_config(modality="ptycho", overrides=overrides)

    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 4
    torch.testing.assert_close(state["model"]["object"], result.model.object.detach())


# --- atomic checkpoints ---------------------------------------------------------------------


def torn_save(state, stream, *args, **kwargs):
    stream.write(b"half a checkpoint")
    raise OSError("disk full")


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1, "weights": torch.arange(4.0)})
    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2, "weights": torch.zeros(4)})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["weights"], torch.arange(4.0))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_interrupted_checkpoint_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def interrupted(state, stream, *args, **kwargs):
        stream.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "checkpoint.pt", {"epoch": 1})
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_failing_during_a_run(small_ptycho, tmp_path, monkeypatch):
    """The epoch-2 checkpoint is written; the epoch-4 write fails mid-way: the run stops with
    that error and the epoch-2 checkpoint is intact and resumable."""
    out = tmp_path / "run"
    original = torch.save
    writes: list[int] = []

    def fail_second(state, stream, *args, **kwargs):
        writes.append(state["epoch"])
        if len(writes) == 2:
            torn_save(state, stream)
        original(state, stream, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fail_second)
    with pytest.raises(OSError, match="disk full"):
        diffrecon.reconstruct(small_ptycho, "ptycho", out=out, overrides=[
            "recon.epochs=6", "recon.checkpoint_every=2", *FOLDER_OFF, *QUIET])
    monkeypatch.undo()
    assert writes == [2, 4]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]
    assert load_checkpoint(out)["epoch"] == 2


def test_torn_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(DataFormatError, match="checkpoint.pt"):
        load_checkpoint(tmp_path)


# --- near-field geometry --------------------------------------------------------------------


@pytest.fixture(scope="module")
def near_field_scan() -> DiffractionData:
    """A plane-wave near-field scan: 80 patterns of 32x32, 1 um pixels, 8 keV, 0.15 m
    (Fresnel number 0.04 over a pixel; the transfer function is sampled well up to 0.21 m),
    a Gaussian beam through a random phase screen (diffuser), Poisson noise."""
    n, pixel, distance = 32, 1e-6, 0.15
    wavelength = optics.xray_wavelength_m(8000.0)
    screen = torch.as_tensor(1.5 * smooth_noise((n, n), 2.0, np.random.default_rng(1)))
    beam = optics.gaussian_probe((n, n), 16.0, 1e6, dtype=torch.complex128)
    probe = (beam * torch.exp(1j * screen)).to(torch.complex64)
    positions = scans.fermat_spiral(80, 2 * pixel)
    geometry = DiffractionData(
        patterns=np.zeros((len(positions), n, n), np.float32), wavelength_m=wavelength,
        distance_m=distance, detector_pixel_size_m=(pixel, pixel), positions_m=positions,
        probe_guess=probe.numpy(),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", SamplingWarning)
        model = Ptycho.from_data(geometry, PtychoConfig(geometry="near_field"))
    assert isinstance(model.propagator, AngularSpectrum)
    truth = complex_phantom(tuple(model.object.shape[-2:]), np.random.default_rng(0))
    with torch.no_grad():
        model.object.copy_(torch.as_tensor(truth, dtype=torch.complex64)[None])
    patterns = simulate_patterns(model, make_likelihood("poisson"), len(positions),
                                 generator=torch.Generator().manual_seed(0))
    return dataclasses.replace(geometry, patterns=patterns, truth=Truth(
        object=truth[None].astype(np.complex64), probe=probe.numpy()[None],
        positions_m=positions, pixel_size_m=model.pixel_size_m, origin_m=model.origin_m))


def test_near_field_with_known_illumination_recovers_the_object(near_field_scan):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SamplingWarning)
        result = diffrecon.reconstruct(near_field_scan, "ptycho", overrides=[
            "model.geometry=near_field", "recon.epochs=10", "log.metric_every=5", *QUIET])
    assert isinstance(result.model.propagator, AngularSpectrum)
    start = initial_nrmse(near_field_scan, geometry="near_field")  # about 0.24
    assert result.metrics["nrmse"] < 0.3 * start  # about 0.03
    losses = result.history["loss/total"]
    assert losses[-1] < 0.05 * losses[0]


def test_near_field_blind_reconstruction_improves(near_field_scan):
    """Probe started from the mean pattern: slower, but both loss and error go down."""
    data = dataclasses.replace(near_field_scan, probe_guess=None)
    result = diffrecon.reconstruct(data, "ptycho", overrides=[
        "model.geometry=near_field", "recon.epochs=10", "algorithm.name=rpie",
        "log.metric_every=5", *QUIET])
    start = initial_nrmse(data, geometry="near_field")
    nrmse = evaluated(result.history)
    assert nrmse[-1] < nrmse[0] and nrmse[-1] < 0.8 * start
    losses = result.history["loss/total"]
    assert losses[-1] < 0.5 * losses[0]


# --- lazy data ------------------------------------------------------------------------------


def test_lazy_file_reading_matches_in_memory_data(small_ptycho, tmp_path):
    path = tmp_path / "scan.cxi"
    cxi.save(small_ptycho, path)
    overrides = ["recon.epochs=2", "log.metrics=false", *QUIET]
    memory = diffrecon.reconstruct(small_ptycho, "ptycho", overrides=overrides)
    lazy = diffrecon.reconstruct(path, "ptycho", overrides=overrides, lazy=True)
    assert lazy.model is not memory.model
    for key in ("object", "probe"):
        np.testing.assert_allclose(lazy.results[key], memory.results[key], rtol=0, atol=1e-6)
    np.testing.assert_allclose(lazy.history["loss/total"], memory.history["loss/total"],
                               rtol=1e-6)


def test_accumulated_minibatches_equal_one_batch_of_their_union(small_ptycho):
    """Two half-batches with accumulate_batches=2 take the update of the whole batch: the
    objective is a sum over patterns, so their summed gradients are the full gradient."""
    data = dataclasses.replace(small_ptycho, probe_guess=0.8 * small_ptycho.truth.probe)
    n = data.num_patterns
    settings = ["recon.epochs=3", *FOLDER_OFF, *QUIET, "log.metrics=false"]
    whole = diffrecon.reconstruct(data, "ptycho", overrides=[f"recon.batch_size={n}", *settings])
    halves = diffrecon.reconstruct(data, "ptycho", overrides=[
        f"recon.batch_size={n // 2}", "algorithm.accumulate_batches=2", *settings])
    single = diffrecon.reconstruct(data, "ptycho", overrides=[
        f"recon.batch_size={n // 2}", *settings])
    scale = np.abs(whole.results["object"]).max()
    np.testing.assert_allclose(halves.results["object"], whole.results["object"], rtol=0,
                               atol=1e-4 * scale)
    np.testing.assert_allclose(halves.results["probe"], whole.results["probe"], rtol=0,
                               atol=1e-4 * np.abs(whole.results["probe"]).max())
    # ... and not the two updates per epoch of plain half batches
    assert np.abs(single.results["object"] - whole.results["object"]).max() > 1e-2 * scale
    with pytest.raises(diffrecon.errors.ConfigError, match="accumulate_batches"):
        diffrecon.reconstruct(data, "ptycho", overrides=[
            "algorithm.name=epie", "algorithm.accumulate_batches=2", *settings])
