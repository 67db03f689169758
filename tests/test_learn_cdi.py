"""Learning for CDI: training data through the ``cdi`` model, its losses, 2D and 3D training,
whole-object inference (CLI), and mixed precision."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import diffrecon
from diffrecon.algorithms.recipe import scale_recipe
from diffrecon.cli import main
from diffrecon.errors import ConfigError
from diffrecon.learn.api import refine_overrides
from diffrecon.learn.cdi import (
    SCALE_ANCHOR,
    cdi_physics_loss,
    cdi_supervised_loss,
    flux_scale,
    twin,
)
from diffrecon.learn.objects import ObjectGenerator, ObjectSpec
from diffrecon.learn.samples import read_shards, sources, write_shard
from diffrecon.learn.train import load_train_config, train
from diffrecon.losses.likelihoods import make_likelihood
from diffrecon.losses.metrics import nrmse

TINY = {"modality": "cdi", "cdi": {"array_px": 32, "object_px": 16, "photons": 1e5},
        "samples": {"chunks": 4, "validation_chunks": 1},
        "net": {"name": "unet", "width": 8, "depth": 2},
        "train": {"epochs": 3, "batch_size": 4, "lr": 1e-2}}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _source(*overrides: str):  # noqa: ANN202
    return sources.get("cdi")(load_train_config(TINY, list(overrides)))


def test_cdi_samples_are_seeded_split_by_seed_and_the_cdi_model_prediction(tmp_path):
    source = _source('cdi.noise="none"')
    first, again, other = source.chunk(5), source.chunk(5), source.chunk(6)
    torch.testing.assert_close(first.counts, again.counts, rtol=0, atol=0)
    assert not torch.allclose(first.counts, other.counts)
    assert first.counts.shape == first.targets.shape == (1, 32, 32) and first.fractions is None
    # noise-free counts are the registered CDI model's prediction of the (scaled) target,
    # and carry the configured photons
    model = source.model(first.targets[0].numpy())
    np.testing.assert_allclose(first.counts[0].numpy(), model.predicted_pattern(), rtol=1e-5,
                               atol=1e-3)
    assert float(first.counts.sum()) == pytest.approx(1e5, rel=1e-4)
    # an isolated object: inside the central object box, centred on its intensity centroid
    target = first.targets[0].abs()
    assert float(target[:6].sum() + target[-6:].sum()) == 0
    grid = torch.arange(32, dtype=torch.float64)
    weight = target.double() ** 2
    assert abs(float((weight.sum(1) * grid).sum() / weight.sum()) - 16) <= 0.5
    # train/validation by disjoint seeds; shards round-trip without probe offsets
    train_set, validation = source.split(), source.split(validation=True)
    assert not any(torch.equal(validation.counts[0], c) for c in train_set.counts)
    write_shard(train_set, tmp_path / "cdi.h5")
    torch.testing.assert_close(read_shards([str(tmp_path / "cdi.h5")]).targets,
                               train_set.targets)


def test_cdi_supervised_loss_ignores_phase_scale_and_twin():
    target = _source().chunk(2).targets
    twin_target = twin(target, 2)
    # the twin has the same far-field intensity
    torch.testing.assert_close(torch.fft.fftn(twin_target, norm="ortho").abs(),
                               torch.fft.fftn(target, norm="ortho").abs(), atol=1e-4, rtol=1e-4)
    for estimate in (target * 1j, twin_target * np.exp(0.7j)):
        assert float(cdi_supervised_loss(estimate, target, 2)) < 1e-10
    # a scale costs only the weak power anchor (the scale is fitted to the counts later)
    assert float(cdi_supervised_loss(0.3 * twin_target, target, 2)) == pytest.approx(
        SCALE_ANCHOR * np.log(0.09) ** 2, rel=1e-4)
    assert float(cdi_supervised_loss(torch.roll(target, 3, -1), target, 2)) > 0.1


def test_cdi_physics_loss_vanishes_at_the_true_object():
    poisson = make_likelihood("poisson")
    exact = _source('cdi.noise="none"').chunk(1)
    # any scale of the true object: flux_scale fits it to the counts
    assert float(cdi_physics_loss(0.1 * exact.targets, exact.counts, poisson)) < 1e-6
    noisy = _source().chunk(1)
    at_truth = float(cdi_physics_loss(noisy.targets, noisy.counts, poisson))
    wrong = float(cdi_physics_loss(torch.roll(noisy.targets, 2, -1).conj() ** 2, noisy.counts,
                                   poisson))
    # the Poisson deviance at the truth is the noise's, ~1/2 per pixel with counts
    assert at_truth < 1.0 and wrong > 5 * at_truth
    scale = flux_scale(noisy.targets, noisy.counts)
    predicted = torch.fft.fftn(scale * noisy.targets, norm="ortho").abs().square().sum()
    assert float(predicted) == pytest.approx(float(noisy.counts.sum()), rel=1e-5)


def test_tiny_cdi_network_overfits_a_tiny_set():
    run = train(TINY, overrides=["train.epochs=250", "samples.validation_chunks=1"])
    losses = run.history["loss/train"]
    assert losses[-1] < losses[0] / 8 and losses[-1] < 0.12


def test_physics_informed_cdi_training_lowers_the_likelihood():
    run = train(TINY, overrides=["train.epochs=40", "train.supervised_weight=0",
                                 "train.physics_weight=1"])
    physics = run.history["loss/train/physics"]
    assert physics[-1] < physics[0] / 3


def test_unet3d_trains_end_to_end_on_tiny_3d_cdi_volumes():
    # without clipping, lr 3e-3 sent this tiny U-Net's outputs to zero after ~100 steps on
    # some CPUs (supervised loss back to 1.0); clipped, 1 and 2 threads both end near 0.36x
    run = train(TINY, overrides=["train.clip_grad_norm=1.0",
        "cdi.dimensions=3", "cdi.array_px=16", "cdi.object_px=8", 'net.name="unet3d"',
        "net.width=4", "net.depth=2", "samples.chunks=2", "train.epochs=80", "train.lr=3e-3",
        "train.batch_size=2", "train.physics_weight=1e-4"])
    supervised = run.history["loss/train/supervised"]
    assert supervised[-1] < 0.6 * supervised[0]
    physics = run.history["loss/train/physics"]
    assert physics[-1] < physics[0] / 3
    source = _source("cdi.dimensions=3", "cdi.array_px=16", "cdi.object_px=8")
    chunk = source.chunk(0)
    assert run.trained.predict(chunk.counts).shape == (1, 16, 16, 16)


def test_infer_cli_on_a_simulated_cdi_file_writes_the_whole_object(tmp_path, capsys):
    net = tmp_path / "net"
    run = train(TINY, out=net, overrides=["train.epochs=2"])
    assert run.trained.probe is None and (net / "model.pt").exists()
    data_file = tmp_path / "cdi.cxi"
    data = diffrecon.simulate({"array_px": 32, "object_px": 16, "photons": 1e6,
                               "beamstop_px": 0, "seed": 3}, modality="cdi", out=data_file)
    assert main(["infer", str(net / "model.pt"), str(data_file), "--out",
                 str(tmp_path / "inferred")]) == 0
    assert "nrmse" in capsys.readouterr().out
    with h5py.File(tmp_path / "inferred" / "reconstruction.h5", "r") as handle:
        obj = handle["object"][()]
        assert obj.shape == (32, 32) and np.iscomplexobj(obj)
        assert handle.attrs["modality"] == "cdi"
        # scaled to the counts: the predicted pattern carries the measured photons
        assert handle["pattern_predicted"][()].sum() == pytest.approx(
            data.patterns[:].sum(), rel=0.05)
    refined = diffrecon.infer(net / "model.pt", data_file, out=tmp_path / "refined",
                              refine=30, overrides=["log.progress=false"])
    assert (tmp_path / "refined" / "reconstruction.h5").exists()
    assert refined.results["object"].shape == (32, 32)
    # 30 solver epochs from the (barely trained) network fit the truth better than it alone
    alone = nrmse(obj, data.truth.object, allow_twin=True)
    assert refined.metrics["nrmse"] < alone


def test_bf16_training_on_cpu_lowers_the_loss_and_fp16_needs_cuda():
    run = train(TINY, overrides=['train.precision="bf16"', "train.epochs=30"])
    losses = run.history["loss/train"]
    assert losses[-1] < losses[0] / 2
    with pytest.raises(ConfigError, match="fp16"):
        train(TINY, overrides=['train.precision="fp16"', 'train.device="cpu"'])


@pytest.mark.parametrize("kind", ["smooth", "blobs", "voronoi", "texture", "phantom"])
def test_3d_objects_are_a_function_of_the_seed_in_the_shared_value_range(kind):
    make = ObjectGenerator(ObjectSpec(kinds=[kind]))
    first, again, other = make(3, (8, 10, 12)), make(3, (8, 10, 12)), make(4, (8, 10, 12))
    np.testing.assert_array_equal(first, again)
    assert first.shape == (8, 10, 12) and not np.allclose(first, other)
    assert np.abs(first).min() >= 0.6 - 1e-6 and np.abs(first).max() <= 1 + 1e-6
    assert np.abs(np.angle(first)).max() <= 1 + 1e-6


def test_refinement_runs_the_default_cdi_recipe_scaled_to_the_epochs():
    assert scale_recipe("hio:800,er:100,gradient:200", 100) == "hio:73,er:9,gradient:18"
    assert sum(int(stage.split(":")[1]) for stage in scale_recipe("hio:800,er:100", 7).split(
        ",")) == 7
    assert refine_overrides("cdi", 100)[0] == 'algorithm.name="hio:73,er:9,gradient:18"'
    assert refine_overrides("ptycho", 5) == ["recon.epochs=5"]
