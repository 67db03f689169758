"""Data-parallel reconstruction with ``torch.distributed``: one object/probe, patterns split.

Every process (rank) holds the same model and runs the same loop over the same sequence of
minibatches (the batch order is seeded by ``recon.seed`` and the epoch). Each minibatch is split
into disjoint, contiguous shares, one per rank (:meth:`ProcessGroup.shard`); a rank evaluates
only its share, and everything that is a sum over the patterns of a minibatch is summed over the
ranks before use: parameter gradients (:meth:`reduce_grads`), loss terms
(:meth:`reduce_scalars`) and the batch statistics of preconditioners (:meth:`sum`,
:meth:`mean`). Every rank then takes the same optimiser step from the same summed gradient, so
the parameters, including the per-pattern ones (positions, flux), stay identical on all ranks
and equal those of a single process up to floating-point summation order.

The single-process loop uses :class:`SingleProcess`, whose methods return their input
unchanged. Only the rank with ``is_main`` writes files and shows progress. The process group is
created and destroyed by :func:`session`; nothing here keeps module-level state.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Literal, Protocol

import torch
import torch.distributed as dist
from torch import nn

from diffrecon.errors import ConfigError

Tensor = torch.Tensor
Mode = Literal["auto", "on", "off"]
log = logging.getLogger("diffrecon")

#: environment variables torchrun sets for every worker (the ``env://`` rendezvous)
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class Communicator(Protocol):
    """What the reconstruction loop and algorithms need from a group of processes."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool: ...
    def share(self, index: Tensor) -> Tensor: ...
    def shard(self, index: Tensor) -> Tensor: ...
    def reduce_grads(self, parameters: Iterable[nn.Parameter]) -> None: ...
    def reduce_scalars(self, values: dict[str, float]) -> dict[str, float]: ...
    def sum(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]: ...
    def mean(self, tensor: Tensor) -> Tensor: ...
    def broadcast_module(self, module: nn.Module) -> None: ...


class SingleProcess:
    """The trivial group of one process: every method returns its input unchanged.

    Args:
        device: the torch device this process computes on.
    """

    rank = 0
    world_size = 1

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    @property
    def is_main(self) -> bool:
        return True

    def share(self, index: Tensor) -> Tensor:
        return index

    def shard(self, index: Tensor) -> Tensor:
        return index

    def reduce_grads(self, parameters: Iterable[nn.Parameter]) -> None:
        pass

    def reduce_scalars(self, values: dict[str, float]) -> dict[str, float]:
        return values

    def sum(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        return tensors

    def mean(self, tensor: Tensor) -> Tensor:
        return tensor.mean()

    def broadcast_module(self, module: nn.Module) -> None:
        pass


def shard_index(index: Tensor, rank: int, world_size: int) -> Tensor:
    """Rank ``rank``'s contiguous share of the minibatch ``index`` (B,); shares differ in
    length by at most one, are disjoint and together cover ``index`` in order (some are
    empty when B < ``world_size``)."""
    return index.tensor_split(world_size)[rank]


def _real(tensor: Tensor) -> Tensor:
    """A real view sharing storage (collectives of some backends reject complex tensors)."""
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


class ProcessGroup:
    """The default ``torch.distributed`` process group, seen from one rank.

    The group must be initialised (see :func:`session`). A rank whose share of a minibatch is
    empty (B < world size) cannot run the model on zero patterns; it evaluates the first
    pattern of the minibatch as a stand-in and weighs its contributions (gradients, scalars,
    statistics) by 0 until the next :meth:`shard`.

    Args:
        device: this rank's device; NCCL collectives need CUDA tensors, Gloo takes CPU ones.
    """

    def __init__(self, device: torch.device) -> None:
        if not dist.is_initialized():
            raise RuntimeError("ProcessGroup needs an initialised torch.distributed group")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device = device
        self.weight = 1.0  # this rank's weight in the current minibatch: 1, or 0 (stand-in)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, index: Tensor) -> Tensor:
        """The patterns this process computes of the minibatch ``index`` (no side effect):
        its share, or the first pattern as a zero-weight stand-in when it has none."""
        share = shard_index(index, self.rank, self.world_size)
        return share if share.numel() else index[:1]

    def shard(self, index: Tensor) -> Tensor:
        """``share(index)``, making it the current minibatch (sets this process's weight)."""
        self.weight = 1.0 if shard_index(index, self.rank, self.world_size).numel() else 0.0
        return self.share(index)

    def _all_reduce(self, tensors: list[Tensor]) -> None:
        """Sum ``tensors`` (in place) over the ranks with one collective per dtype."""
        groups: dict[torch.dtype, list[Tensor]] = {}
        for tensor in tensors:
            groups.setdefault(_real(tensor).dtype, []).append(tensor)
        for members in groups.values():
            flat = torch.cat([_real(t).reshape(-1) for t in members]).to(self.device)
            if self.weight != 1.0:
                flat.mul_(self.weight)
            dist.all_reduce(flat)
            offset = 0
            for tensor in members:
                view = _real(tensor)
                view.copy_(flat[offset : offset + view.numel()].view_as(view))
                offset += view.numel()

    def reduce_grads(self, parameters: Iterable[nn.Parameter]) -> None:
        """Replace each gradient by its sum over the ranks.

        Every rank must pass the same parameters in the same order. A parameter without a
        gradient on some rank counts as zero there; one without a gradient on every rank keeps
        ``grad = None`` (so that optimisers skip it, as in a single process).
        """
        parameters = [p for p in parameters if p.requires_grad]
        present = torch.tensor([p.grad is not None for p in parameters], dtype=torch.float32,
                               device=self.device)
        dist.all_reduce(present)
        grads = []
        for parameter, count in zip(parameters, present.tolist(), strict=True):
            if count == 0:
                continue
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            grads.append(parameter.grad)
        if grads:
            self._all_reduce(grads)

    def reduce_scalars(self, values: dict[str, float]) -> dict[str, float]:
        """Sum each value (e.g. a loss term of this rank's share) over the ranks."""
        names = sorted(values)
        summed = torch.tensor([values[name] for name in names], dtype=torch.float64)
        self._all_reduce([summed])
        return dict(zip(names, summed.cpu().tolist(), strict=True))

    def sum(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """Sums over the ranks of per-share partial sums (new tensors, same keys)."""
        summed = {name: tensors[name].detach().clone() for name in sorted(tensors)}
        self._all_reduce(list(summed.values()))
        return summed

    def mean(self, tensor: Tensor) -> Tensor:
        """Mean over all elements on all ranks (a scalar of ``tensor``'s dtype)."""
        stats = torch.stack([tensor.detach().sum().double(),
                             torch.tensor(float(tensor.numel()), dtype=torch.float64,
                                          device=tensor.device)])
        self._all_reduce([stats])
        return (stats[0] / stats[1]).to(tensor.dtype)

    @torch.no_grad()
    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers into ``module`` on every rank."""
        for tensor in module.state_dict().values():
            staged = _real(tensor).to(self.device)
            dist.broadcast(staged, src=0)
            _real(tensor).copy_(staged)


def launched_by_torchrun() -> bool:
    """Whether the ``env://`` variables of a multi-process launch are set."""
    return all(name in os.environ for name in LAUNCH_VARIABLES) and \
        int(os.environ["WORLD_SIZE"]) > 1


def _wanted(mode: Mode) -> bool:
    if mode == "off":
        return False
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if launched_by_torchrun():
        return True
    if mode == "on":
        missing = [name for name in LAUNCH_VARIABLES if name not in os.environ]
        raise ConfigError(
            "recon.distributed='on' needs a multi-process launch: run under torchrun, e.g. "
            "'torchrun --nproc_per_node=2 -m diffrecon reconstruct ...' "
            f"(missing environment: {', '.join(missing) or 'WORLD_SIZE > 1'})")
    return False


def local_device(device: torch.device | str) -> torch.device:
    """This rank's device: a CUDA device without an index becomes ``cuda:LOCAL_RANK``."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


class _QuietFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


@contextlib.contextmanager
def session(mode: Mode, device: torch.device | str) -> Iterator[Communicator]:
    """The communicator of this process for the duration of a reconstruction.

    With ``mode`` "auto" a run is distributed when a process group of more than one rank is
    already initialised (it is used and left alone) or when launched by torchrun with
    WORLD_SIZE > 1 (a group is created from the environment and destroyed on exit). The
    backend is NCCL for CUDA devices and Gloo otherwise. "on" insists on a multi-process
    launch; "off" always runs alone. Non-main ranks log warnings and errors only.

    Args:
        mode: ``recon.distributed``: "auto", "on" or "off".
        device: ``recon.device``; a bare "cuda" becomes ``cuda:LOCAL_RANK``.
    """
    if not _wanted(mode):
        yield SingleProcess(device)
        return
    device = local_device(device)
    created = not dist.is_initialized()
    if created:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                init_method="env://")
    group = ProcessGroup(device)
    quiet = _QuietFilter()
    if not group.is_main:
        log.addFilter(quiet)
    try:
        yield group
    finally:
        log.removeFilter(quiet)
        if created:
            # no rank may tear down its end of the store while another still uses it
            dist.barrier()
            dist.destroy_process_group()
