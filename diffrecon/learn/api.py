"""Python API of the learning tools; ``diffrecon train`` and ``diffrecon infer`` call these.

    >>> import diffrecon
    >>> run = diffrecon.train("experiments/configs/learn_ptycho.toml", out="net1")
    >>> result = diffrecon.infer("net1/model.pt", "scan.cxi", out="scan-net", refine=20)
    >>> whole = diffrecon.infer("cdinet/model.pt", "pattern.cxi", out="cdi-net", refine=100)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from diffrecon import api
from diffrecon.algorithms.recipe import scale_recipe
from diffrecon.config import Overrides, override_list
from diffrecon.data.container import DiffractionData
from diffrecon.data.results import write_results
from diffrecon.errors import ConfigError
from diffrecon.learn.finetune import finetune_scan
from diffrecon.learn.infer import infer_cdi, infer_scan
from diffrecon.learn.train import TrainConfig, TrainedNet, TrainResult, load_network
from diffrecon.learn.train import train as _train
from diffrecon.models.base import ForwardModel, models
from diffrecon.recon.evaluation import truth_evaluator


def train(config: str | Path | dict[str, Any] | TrainConfig | None = None, *,
          out: str | Path | None = None, resume: bool = False,
          overrides: Overrides = ()) -> TrainResult:
    """Train an inversion network on simulated data (see ``diffrecon.learn.train``)."""
    return _train(config, out=out, resume=resume, overrides=overrides)


def refine_overrides(modality: str, epochs: int) -> list[str]:
    """Run-config overrides for ``epochs`` epochs of the modality's default solver: a default
    recipe with stage counts (CDI: ``hio:800,er:100,gradient:200``) is scaled to ``epochs``
    in total (``scale_recipe``); otherwise ``recon.epochs`` is set. Later ``--set`` overrides
    (e.g. ``algorithm.name``) take precedence."""
    name = str(models.get(modality).run_defaults.get("algorithm", {}).get("name", ""))
    if ":" in name:
        return [f'algorithm.name="{scale_recipe(name, epochs)}"', f"recon.epochs={epochs}"]
    return [f"recon.epochs={epochs}"]


def infer(network: str | Path | TrainedNet, data: DiffractionData | str | Path, *,
          out: str | Path | None = None, refine: int = 0, finetune: int = 0,
          finetune_lr: float = 3e-6, config: str | Path | dict[str, Any] | None = None,
          overrides: Overrides = ()) -> api.Result:
    """Predict the object of ``data`` with a trained network, optionally refine iteratively.

    Ptychography: every pattern of the scan is predicted and the patches are stitched. CDI
    (a network trained with ``modality = "cdi"``): the whole object of the pattern (1, H, W)
    or 3D volume (D, H, W), centred, scaled to the counts.

    Args:
        network: a ``model.pt`` from ``train`` or a loaded TrainedNet.
        data: a DiffractionData or a data file.
        out: run folder: ``reconstruction.h5`` (object, and for ptychography probe,
            positions, per-pattern ``patches``; for CDI support and predicted pattern); with
            ``refine`` the iterative run's full folder.
        refine: continue with this many epochs of the iterative solver (``reconstruct``) from
            the network's object (and probe); see :func:`refine_overrides`.
        finetune: first fine-tune (a copy of) the network on these patterns for this many
            steps, self-supervised (``learn.finetune``; no truth used), at ``finetune_lr``
            (ptychography only).
        config, overrides: run configuration of the refinement (as for ``reconstruct``).

    Returns:
        A Result; ``metrics`` hold the ambiguity-removed errors when the data carry truth.
    """
    trained = network if isinstance(network, TrainedNet) else load_network(network)
    if not isinstance(data, DiffractionData):
        data = api.load(data)
    modality = trained.config.modality
    if finetune > 0:
        if modality != "ptycho":
            raise ConfigError(f"infer --finetune: ptychography networks only (this network "
                              f"was trained on '{modality}' data)")
        trained = finetune_scan(trained, data, steps=finetune, lr=finetune_lr).trained
    model: ForwardModel
    if modality == "cdi":
        cdi = infer_cdi(data, trained)
        initial: dict[str, Any] = {"object": cdi.object}
        model, extra, seconds = cdi.model, {}, cdi.seconds
    else:
        inference = infer_scan(data, trained)
        initial = {"object": inference.object, "probe": inference.probe}
        model, extra = inference.model, {"patches": inference.patches.numpy()}
        seconds = inference.seconds
    if refine > 0:
        return api.reconstruct(data, modality, config, out=out,
                               overrides=[*refine_overrides(modality, refine),
                                          *override_list(overrides)],
                               initial=initial)
    results = model.results()
    metrics = (truth_evaluator(data.truth, data.positions_m)(model)
               if data.truth is not None else {})
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        arrays = {k: np.asarray(v) for k, v in results.items()
                  if np.ndim(v) > 0 and k not in ("pixel_size_m", "origin_m")}
        arrays.update(extra)
        attrs: dict[str, Any] = {"modality": modality, "source": "network",
                                 "pixel_size_m": tuple(np.asarray(
                                     results["pixel_size_m"]).tolist()),
                                 "network_seconds": seconds}
        if "origin_m" in results:
            attrs["origin_m"] = tuple(np.asarray(results["origin_m"]).tolist())
        attrs.update({f"metric_{k}": float(v) for k, v in metrics.items()})
        write_results(out_dir / "reconstruction.h5", arrays, attrs)
    return api.Result(model, results, {}, metrics, out_dir)
