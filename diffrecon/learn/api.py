"""Python API of the learning tools; ``diffrecon train`` and ``diffrecon infer`` call these.

    >>> import diffrecon
    >>> run = diffrecon.train("experiments/configs/learn_ptycho.toml", out="net1")
    >>> result = diffrecon.infer("net1/model.pt", "scan.cxi", out="scan-net", refine=20)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from diffrecon import api
from diffrecon.data.container import DiffractionData
from diffrecon.data.results import write_results
from diffrecon.learn.finetune import finetune_scan
from diffrecon.learn.infer import infer_scan
from diffrecon.learn.train import TrainConfig, TrainedNet, TrainResult, load_network
from diffrecon.learn.train import train as _train
from diffrecon.recon.evaluation import truth_evaluator


def train(config: str | Path | dict[str, Any] | TrainConfig | None = None, *,
          out: str | Path | None = None, resume: bool = False,
          overrides: list[str] | tuple[str, ...] = ()) -> TrainResult:
    """Train an inversion network on simulated data (see ``diffrecon.learn.train``)."""
    return _train(config, out=out, resume=resume, overrides=overrides)


def infer(network: str | Path | TrainedNet, data: DiffractionData | str | Path, *,
          out: str | Path | None = None, refine: int = 0, finetune: int = 0,
          finetune_lr: float = 3e-6, config: str | Path | dict[str, Any] | None = None,
          overrides: list[str] | tuple[str, ...] = ()) -> api.Result:
    """Predict every pattern of a ptychographic scan, stitch, optionally refine iteratively.

    Args:
        network: a ``model.pt`` from ``train`` or a loaded TrainedNet.
        data: a DiffractionData or a data file.
        out: run folder: ``reconstruction.h5`` (object, probe, positions, per-pattern
            ``patches``; with ``refine`` the iterative run's full folder).
        refine: continue with this many epochs of the iterative solver (``reconstruct``) from
            the network's object and probe.
        finetune: first fine-tune (a copy of) the network on these patterns for this many
            steps, self-supervised (``learn.finetune``; no truth used), at ``finetune_lr``.
        config, overrides: run configuration of the refinement (as for ``reconstruct``).

    Returns:
        A Result; ``metrics`` hold the ambiguity-removed errors when the data carry truth.
    """
    trained = network if isinstance(network, TrainedNet) else load_network(network)
    if not isinstance(data, DiffractionData):
        data = api.load(data)
    if finetune > 0:
        trained = finetune_scan(trained, data, steps=finetune, lr=finetune_lr).trained
    inference = infer_scan(data, trained)
    if refine > 0:
        return api.reconstruct(data, "ptycho", config, out=out,
                               overrides=[f"recon.epochs={refine}", *overrides],
                               initial={"object": inference.object, "probe": inference.probe})
    model = inference.model
    results = model.results()
    metrics = (truth_evaluator(data.truth, data.positions_m)(model)
               if data.truth is not None else {})
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        arrays = {k: np.asarray(v) for k, v in results.items()
                  if np.ndim(v) > 0 and k not in ("pixel_size_m", "origin_m")}
        arrays["patches"] = inference.patches.numpy()
        attrs: dict[str, Any] = {"modality": "ptycho", "source": "network",
                                 "pixel_size_m": tuple(model.pixel_size_m),
                                 "origin_m": tuple(model.origin_m),
                                 "network_seconds": inference.seconds}
        attrs.update({f"metric_{k}": float(v) for k, v in metrics.items()})
        write_results(out_dir / "reconstruction.h5", arrays, attrs)
    return api.Result(model, results, {}, metrics, out_dir)
