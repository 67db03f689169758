"""The forward-model contract every modality implements.

``forward(index) = measurement(propagator(exit_wave(index)), index)`` and is never overridden: a
modality writes ``exit_wave``, picks its propagator and measurement, states how it starts from
data (``from_data``) and how each parameter is optimised by default (``param_defaults``, from
the model config alone, so that ``diffrecon config`` can list it without data).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from diffrecon.config import doc
from diffrecon.losses.likelihoods import Likelihood
from diffrecon.models.measurement import Measurement
from diffrecon.physics.propagators import Propagator
from diffrecon.physics.spares import SpareTensors
from diffrecon.registry import Registry

Tensor = torch.Tensor


@dataclasses.dataclass
class ParamSpec:
    """How one named parameter is optimised (a row of the per-parameter plan).

    Learning rates are in the parameter's own units per step (e.g. pixels for positions); the
    models derive defaults from the data scale.
    """

    enabled: bool = doc(True, "refine this parameter at all")
    lr: float = doc(1e-2, "step size (learning rate), in the parameter's units")
    optimizer: Literal["adam", "sgd", "callback"] = doc(
        "adam", "optimizer for this parameter; callback: no per-minibatch step, a model's "
        "loop callback fits it once per epoch (e.g. the Fourier-ptychography Zernike fit)")
    start: int = doc(0, "first epoch at which it is updated")
    stop: int | None = doc(None, "epoch at which updates stop (exclusive); none = never")
    every: int = doc(1, "update on every n-th epoch only")

    def active(self, epoch: int) -> bool:
        """Whether the parameter is updated during ``epoch`` (0-based)."""
        if not self.enabled or epoch < self.start:
            return False
        if self.stop is not None and epoch >= self.stop:
            return False
        return (epoch - self.start) % self.every == 0


def _override(name: str) -> Any:
    """A ParamOverride field: absent (None) by default, described as ParamSpec's ``name``."""
    return doc(None, ParamSpec.__dataclass_fields__[name].metadata["doc"])


@dataclasses.dataclass
class ParamOverride:
    """Config-file overrides of a ParamSpec: only the keys given replace the model default."""

    enabled: bool | None = _override("enabled")
    lr: float | None = _override("lr")
    optimizer: Literal["adam", "sgd", "callback"] | None = _override("optimizer")
    start: int | None = _override("start")
    stop: int | None = _override("stop")
    every: int | None = _override("every")

    def apply(self, spec: ParamSpec) -> ParamSpec:
        changes = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return dataclasses.replace(spec, **changes)


@dataclasses.dataclass
class Trace:
    """Intermediates of one forward evaluation, for classical algorithms and diagnostics.

    Attributes:
        exit_wave: (B, M, H, W) complex, the field leaving the sample.
        detector_field: (B, M, H, W) complex, in the propagator's native layout.
        intensity: (B, H, W) real, the predicted counts (native layout).
    """

    exit_wave: Tensor
    detector_field: Tensor
    intensity: Tensor


class ForwardModel(nn.Module):
    """Base class of all modalities. Subclasses set ``Config`` and implement the hooks."""

    Config: ClassVar[type]
    needs_positions: ClassVar[bool] = True
    #: ambiguities removed before comparing with ground truth (keywords of ``metrics.align``)
    alignment: ClassVar[dict[str, bool]] = {}
    #: run-config defaults of this modality (nested TOML-like dict), under the user's config
    run_defaults: ClassVar[dict[str, Any]] = {}
    #: parameters whose default learning rate scales with the data: name -> that scale in
    #: words; ``param_defaults`` gives the factor, ``data_scales`` the scale
    lr_scales: ClassVar[dict[str, str]] = {}
    #: the model config (an instance of ``Config``)
    config: Any

    def __init__(self, propagator: Propagator, measurement: Measurement) -> None:
        super().__init__()
        self.propagator = propagator
        self.measurement = measurement
        #: gradient buffers handed back between updates (``ParameterPlan.zero_grad``) for the
        #: backward passes that take them (``physics.overlap``)
        self.spares = SpareTensors()

    # --- the fixed pipeline -------------------------------------------------------------
    def forward(self, index: Tensor) -> Tensor:
        """Predicted intensities (B, H, W), native layout, for pattern indices (B,)."""
        return self.measurement(self.propagator(self.exit_wave(index)), index)

    def nll(self, index: Tensor, measured: Tensor, valid: Tensor | None,
            likelihood: Likelihood) -> Tensor:
        """``likelihood.nll(self(index), measured, valid)``, scalar, through the measurement's
        fused node (one autograd node from detector field to loss)."""
        field = self.propagator(self.exit_wave(index))
        return self.measurement.nll(field, index, measured, valid, likelihood)

    def trace(self, index: Tensor) -> Trace:
        psi = self.exit_wave(index)
        field = self.propagator(psi)
        return Trace(psi, field, self.measurement(field, index))

    # --- what a modality writes ---------------------------------------------------------
    def exit_wave(self, index: Tensor) -> Tensor:
        """Exit waves (B, M, H, W) complex for pattern indices (B,)."""
        raise NotImplementedError

    @classmethod
    def from_data(
        cls, data: Any, config: Any, *, generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> ForwardModel:
        raise NotImplementedError

    @classmethod
    def prepare(cls, data: Any, config: Any) -> Any:
        """The data this modality reconstructs (e.g. cropped around a peak); unchanged here."""
        return data

    @classmethod
    def describe(cls, data: Any) -> str:
        """Modality-specific lines for ``diffrecon inspect`` (e.g. sampling ratios); "" if none."""
        return ""

    def callbacks(self) -> list[Any]:
        """Loop callbacks this modality needs (e.g. a support update); none by default."""
        return []

    def initial_guesses(self, data: Any) -> list[tuple[str, dict[str, Tensor]]]:
        """Alternative starting values ``(label, {name: tensor})`` worth a short trial each.

        Empty by default; a modality whose start is ambiguous from the data alone (e.g. the
        curvature of a far-field probe) lists candidates and the best-fitting one is kept.
        """
        return []

    @contextlib.contextmanager
    def restricted(self, patterns: Tensor) -> Iterator[None]:
        """Within the block the model serves only ``patterns`` (K,) (the trials of initial
        guesses on part of a scan), and may shrink its state to what they touch; on exit
        its parameters are what they were before. Default: nothing changes."""
        yield

    def compact_batches(self, batch_size: int, seed: int) -> list[Tensor] | None:
        """The model's own batches of pattern indices for ``recon.sampler = "compact"`` (e.g.
        one tilt per batch), or None for k-means clusters of ``positions`` (the default)."""
        return None

    @classmethod
    def param_defaults(cls, config: Any) -> dict[str, ParamSpec]:
        """Default optimisation plan of each named parameter from the model ``config`` alone;
        the ``lr`` of a parameter in ``lr_scales`` is a factor of its data scale."""
        raise NotImplementedError

    def data_scales(self) -> dict[str, float]:
        """The scale of each parameter in ``lr_scales``, from the data the model started from."""
        return {}

    def param_specs(self) -> dict[str, ParamSpec]:
        """Default optimisation plan for each named parameter: ``param_defaults`` with the
        learning rates of ``lr_scales`` times their ``data_scales``."""
        specs = self.param_defaults(self.config)
        scales = self.data_scales()
        return {name: dataclasses.replace(spec, lr=spec.lr * scales[name])
                if name in self.lr_scales else spec for name, spec in specs.items()}

    def named_fields(self) -> dict[str, nn.Parameter]:
        """Learnable tensors by canonical name (object, probe, positions, flux, ...)."""
        fields = {name: p for name, p in self.named_parameters() if "." not in name}
        fields.update(self.measurement.named_fields())
        return fields

    def constrain(self) -> None:
        """Hard projections applied after every step (in place, no autograd)."""
        self.measurement.constrain()

    def end_epoch(self, epoch: int) -> None:
        """Housekeeping once per epoch (e.g. re-orthogonalising probe modes); no autograd."""

    def partner_intensities(self, index: Tensor) -> dict[str, Tensor]:
        """For PIE preconditioners: per parameter, the intensity of what multiplies it.

        A modality whose exit wave is a product (object patch x probe) returns, for
        ``object``, the summed |probe|^2 on the object grid and, for ``probe``, the summed
        |object patch|^2 on the probe grid, for the batch ``index``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support PIE updates")

    def curvatures(self, index: Tensor, names: list[str]) -> dict[str, Tensor]:
        """Gauss-Newton diagonal curvature of the loss for those per-pattern parameters among
        ``names`` that have one (rows ``index``), e.g. ``positions`` (B, 2); a step
        -g / curvature is then a damped Newton step. Others are not preconditioned."""
        return {}

    def results(self) -> dict[str, Any]:
        """Outputs in physical units (numpy arrays, floats), DC-centred where on a detector."""
        raise NotImplementedError

    def comparable(self, array: np.ndarray) -> np.ndarray:
        """The part of an object-shaped array compared with ground truth: slice 0 by default."""
        return array.reshape(-1, *array.shape[-2:])[0]

    def truth_mask(self) -> np.ndarray | None:
        """Where comparisons with ground truth count (e.g. the well-illuminated region)."""
        return None


models: Registry[type[ForwardModel]] = Registry("modality")
