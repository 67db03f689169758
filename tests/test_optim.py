"""Optimiser and rollback state: the fused Adam on real views is torch's complex Adam; SGD is
torch's SGD; a run does not import torch._dynamo; the per-epoch rollback snapshot reuses its
host buffers."""

from __future__ import annotations

import io
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from diffrecon.models.base import ParamSpec
from diffrecon.recon.optim import ParameterPlan
from diffrecon.recon.reconstructor import Reconstructor


def gradients(steps: int, shape: tuple[int, ...], dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(shape, generator=g, dtype=dtype) for _ in range(steps)]


@pytest.mark.parametrize("dtype", [torch.complex64, torch.float32])
def test_plan_adam_matches_torch_adam(dtype: torch.dtype) -> None:
    start = torch.randn((1, 12, 10), generator=torch.Generator().manual_seed(0), dtype=dtype)
    ours = nn.Parameter(start.clone())
    reference = nn.Parameter(start.clone())
    plan = ParameterPlan({"object": ours}, {"object": ParamSpec(lr=0.05)})
    torch_adam = torch.optim.Adam([reference], lr=0.05, foreach=False)
    for grad in gradients(6, start.shape, dtype):
        ours.grad, reference.grad = grad.clone(), grad.clone()
        plan.step(["object"])
        torch_adam.step()
    assert ours.dtype == dtype  # updated in place, through the view
    torch.testing.assert_close(ours.detach(), reference.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.equal(ours.detach(), start)


def test_plan_state_round_trip_and_restart() -> None:
    """A checkpointed plan resumes exactly; restarting the moments changes the next step."""
    start = torch.randn((1, 8, 8), generator=torch.Generator().manual_seed(1),
                        dtype=torch.complex64)
    grads = gradients(5, start.shape, torch.complex64)

    def plan_for(field: nn.Parameter) -> ParameterPlan:
        return ParameterPlan({"object": field}, {"object": ParamSpec(lr=0.02)})

    first = nn.Parameter(start.clone())
    plan = plan_for(first)
    for grad in grads[:3]:
        first.grad = grad.clone()
        plan.step(["object"])
    second = nn.Parameter(first.detach().clone())
    resumed = plan_for(second)
    saved = io.BytesIO()  # as a checkpoint does: the state written out and read back
    torch.save(plan.state_dict(), saved)
    saved.seek(0)
    resumed.load_state_dict(torch.load(saved))
    for grad in grads[3:]:
        first.grad, second.grad = grad.clone(), grad.clone()
        plan.step(["object"])
        resumed.step(["object"])
    torch.testing.assert_close(second.detach(), first.detach(), rtol=0, atol=0)

    before = first.detach().clone()
    plan.restart_moments()
    plan.scale_learning_rates(0.5)
    first.grad = grads[0].clone()
    plan.step(["object"])
    # a fresh Adam's first step moves every element by lr (0.01) along the gradient's sign
    step = torch.view_as_real(first.detach() - before)
    torch.testing.assert_close(step.abs(), torch.full_like(step, 0.01), rtol=1e-3, atol=1e-6)
    assert plan.learning_rates() == {"object": pytest.approx(0.01)}


def test_plan_skips_parameter_without_gradient() -> None:
    field = nn.Parameter(torch.ones((1, 4, 4), dtype=torch.complex64))
    plan = ParameterPlan({"object": field}, {"object": ParamSpec(lr=0.1)})
    plan.step(["object"])  # no gradient this step: nothing moves
    assert torch.equal(field.detach(), torch.ones((1, 4, 4), dtype=torch.complex64))


def test_snapshot_reuses_its_buffers_and_restores_the_values() -> None:
    model = nn.Module()
    model.object = nn.Parameter(torch.ones((1, 6, 6), dtype=torch.complex64))
    run = SimpleNamespace(model=model, state={"steps": torch.zeros(3)},
                          plan=SimpleNamespace(restart_moments=lambda: None),
                          batches=SimpleNamespace(device=torch.device("cpu")))
    first = Reconstructor.snapshot(run)
    assert first["model"]["object"].data_ptr() != model.object.data_ptr()  # a copy
    with torch.no_grad():
        model.object.mul_(2j)
    run.state["steps"] += 1
    second = Reconstructor.snapshot(run, into=first)
    assert second["model"]["object"] is first["model"]["object"]  # overwritten, not new
    assert torch.equal(second["model"]["object"], model.object.detach())
    assert torch.equal(second["state"]["steps"], torch.ones(3))
    with torch.no_grad():
        model.object.fill_(float("nan"))
    Reconstructor.restore(run, second)
    assert torch.equal(model.object.detach(), torch.full((1, 6, 6), 2j, dtype=torch.complex64))
    run.state = {"steps": torch.zeros(5)}  # a shape change gets a fresh buffer
    third = Reconstructor.snapshot(run, into=second)
    assert third["state"]["steps"].shape == (5,)


def test_plan_resumes_a_checkpoint_of_torch_complex_adam() -> None:
    """Checkpoints written before Adam ran fused hold complex moments; they resume exactly."""
    start = torch.randn((1, 6, 5), generator=torch.Generator().manual_seed(2),
                        dtype=torch.complex64)
    grads = gradients(4, start.shape, torch.complex64)
    reference = nn.Parameter(start.clone())
    torch_adam = torch.optim.Adam([reference], lr=0.03)
    for grad in grads[:2]:
        reference.grad = grad.clone()
        torch_adam.step()
    ours = nn.Parameter(reference.detach().clone())
    plan = ParameterPlan({"object": ours}, {"object": ParamSpec(lr=0.03)})
    saved = io.BytesIO()  # written out and read back, as the checkpoint did
    torch.save({"object": torch_adam.state_dict()}, saved)
    saved.seek(0)
    plan.load_state_dict(torch.load(saved))
    for grad in grads[2:]:
        ours.grad, reference.grad = grad.clone(), grad.clone()
        plan.step(["object"])
        torch_adam.step()
    torch.testing.assert_close(ours.detach(), reference.detach(), rtol=1e-5, atol=1e-6)


def test_plan_sgd_matches_torch_sgd() -> None:
    start = torch.randn((5, 2), generator=torch.Generator().manual_seed(4))
    ours, reference = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    plan = ParameterPlan({"positions": ours}, {"positions": ParamSpec(lr=0.3, optimizer="sgd")})
    torch_sgd = torch.optim.SGD([reference], lr=0.3)
    for grad in gradients(3, start.shape, torch.float32):
        ours.grad, reference.grad = grad.clone(), grad.clone()
        plan.step(["positions"])
        torch_sgd.step()
    torch.testing.assert_close(ours.detach(), reference.detach(), rtol=0, atol=1e-7)
    assert plan.adaptive() == []
    assert plan.state_dict()["positions"]["param_groups"][0]["lr"] == pytest.approx(0.3)


NO_DYNAMO_PROBE = """
import sys
import diffrecon
data = diffrecon.simulate({"modality": "ptycho", "frame_px": 32, "scan_points": 16,
                           "seed": 0, "photons_per_pattern": 1e5})
diffrecon.reconstruct(data, "ptycho", overrides=["recon.epochs=2", "log.progress=false",
                                                 "log.tensorboard=false"])
print("torch._dynamo" in sys.modules, "matplotlib" in sys.modules)
"""


def test_a_reconstruction_imports_neither_dynamo_nor_unused_matplotlib() -> None:
    """Any ``torch.optim`` optimiser imports torch._dynamo when built or stepped (0.86 s and
    60 MiB of every run); the plan's optimisers call torch's functional Adam instead. Without
    TensorBoard no images are drawn, so matplotlib (about 25 MiB) is not imported either."""
    done = subprocess.run([sys.executable, "-c", NO_DYNAMO_PROBE], capture_output=True,
                          text=True, check=True)
    assert done.stdout.split()[-2:] == ["False", "False"]
