"""Gradient buffers handed back between updates and reused (``diffrecon.physics.spares``)."""

from __future__ import annotations

import pytest
import torch

import diffrecon
from diffrecon.models.base import ParamSpec
from diffrecon.physics.overlap import overlap
from diffrecon.physics.shifts import insert_patches
from diffrecon.physics.spares import SpareTensors
from diffrecon.recon.optim import ParameterPlan


def _scene(seed: int = 0) -> tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    obj = torch.nn.Parameter(torch.randn(1, 96, 90, dtype=torch.complex64, generator=g))
    probe = torch.randn(2, 16, 16, dtype=torch.complex64, generator=g)
    corners = torch.randint(0, 70, (6, 2), generator=g)
    return obj, probe, corners, torch.rand(6, 2, generator=g)


@pytest.mark.parametrize("subpixel", [True, False])
def test_overlap_sums_its_gradient_into_the_handed_back_buffer(subpixel):
    obj, probe, corners, shifts = _scene()
    shifts = shifts if subpixel else None
    weights = torch.randn(6, 2, 16, 16, dtype=torch.complex64)

    def backward(spares):
        obj.grad = None
        (overlap(obj, probe, corners, shifts, spares) * weights).real.sum().backward()
        return obj.grad

    expected = backward(None).clone()
    spares = SpareTensors(min_bytes=0)
    addresses = []
    for _ in range(3):
        torch.testing.assert_close(backward(spares), expected, rtol=0, atol=0)
        addresses.append(obj.grad.data_ptr())
        assert len(spares) == 0  # taken by the backward pass
        spares.give(obj.grad)  # what ParameterPlan.zero_grad does (no other reference kept)
    # autograd adopted the buffer as .grad without a copy: one memory for every update
    assert len(set(addresses[1:])) == 1 and addresses[1] == addresses[0]


def test_spares_keep_only_whole_tensors_nobody_else_uses():
    spares = SpareTensors(min_bytes=64)
    whole = torch.ones(4, 8, dtype=torch.complex64)
    spares.give(torch.ones(4, dtype=torch.complex64))  # 32 bytes: too small
    spares.give(torch.ones(8, 16)[:, :8])  # a view into a larger storage
    spares.give(torch.ones(8, 8, requires_grad=True))  # a leaf of a graph
    spares.give(torch.ones(8, 16).t())  # not contiguous
    spares.give(None)
    assert len(spares) == 0
    spares.give(whole)
    assert len(spares) == 1
    again = spares.zeros((4, 8), torch.complex64, "cpu")
    assert again.data_ptr() == whole.data_ptr() and not again.any()
    assert len(spares) == 0
    fresh = spares.zeros((4, 8), torch.complex64, "cpu")  # nothing kept: a new zero tensor
    assert fresh.data_ptr() != whole.data_ptr() and not fresh.any()
    spares.give(torch.ones(2, 16, dtype=torch.complex64))
    assert spares.zeros((4, 8), torch.complex64, "cpu").data_ptr() != whole.data_ptr()
    spares.clear()
    assert len(spares) == 0


def test_zero_grad_hands_the_gradients_to_the_spares():
    fields = {"object": torch.nn.Parameter(torch.zeros(64, 64, dtype=torch.complex64))}
    spares = SpareTensors(min_bytes=0)
    plan = ParameterPlan(fields, {"object": ParamSpec(lr=0.1)}, spares=spares)
    fields["object"].grad = grad = torch.ones(64, 64, dtype=torch.complex64)
    plan.zero_grad()
    assert fields["object"].grad is None
    assert spares.zeros((64, 64), torch.complex64, "cpu").data_ptr() == grad.data_ptr()


def test_insert_patches_into_a_given_buffer_on_either_path(monkeypatch):
    g = torch.Generator().manual_seed(1)
    patches = torch.randn(5, 2, 8, 8, dtype=torch.complex64, generator=g)
    corners = torch.randint(0, 20, (5, 2), generator=g)
    windows = insert_patches(patches, corners, (2, 30, 31))
    out = torch.zeros(2, 30, 31, dtype=torch.complex64)
    assert insert_patches(patches, corners, (2, 30, 31), out) is out
    torch.testing.assert_close(out, windows, rtol=0, atol=0)
    # the flat index_add_ path (CUDA, torch.compile) into the same kind of buffer
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    flat = insert_patches(patches, corners, (2, 30, 31), torch.zeros_like(out))
    torch.testing.assert_close(flat, windows, rtol=1e-6, atol=1e-6)
    manual = torch.zeros(2, 30, 31, dtype=torch.complex64)
    for patch, (y, x) in zip(patches, corners.tolist(), strict=True):
        manual[:, y : y + 8, x : x + 8] += patch
    torch.testing.assert_close(windows, manual, rtol=1e-6, atol=1e-6)


def test_a_reconstruction_reuses_one_object_gradient(small_ptycho, monkeypatch):
    monkeypatch.setattr(SpareTensors, "MIN_BYTES", 0)
    served = {"kept": 0, "new": 0}
    zeros = SpareTensors.zeros

    def counting(self, shape, dtype, device):
        held = [t for t in self._kept.values() if tuple(t.shape) == tuple(shape)]
        served["kept" if held else "new"] += 1
        return zeros(self, shape, dtype, device)

    monkeypatch.setattr(SpareTensors, "zeros", counting)
    diffrecon.reconstruct(small_ptycho, "ptycho", overrides=[
        "recon.epochs=3", "log.progress=false"])
    # every object gradient but the first of the run (and of each trial) reuses memory
    assert served["new"] >= 1 and served["kept"] >= 5 * served["new"]
