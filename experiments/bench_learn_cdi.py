"""CDI case of the learning benchmark (``python experiments/bench_learn.py --cases cdi``).

1. Train the 2D U-Net of ``experiments/configs/learn_cdi.toml`` (whole objects of the smooth,
   Voronoi and 1/f classes through the ``cdi`` model; time-limited) and record the time.
2. Held-out objects of another class (``blobs``: polygons and ellipses), same geometry and
   flux. For each: complex NRMSE against the truth (shift, global phase and twin removed by
   the project's metrics, over the whole array) of
   - the network alone (``diffrecon.infer``),
   - ``--refine 100``: 100 epochs of the default CDI recipe, scaled to 100 epochs
     (``learn.api.refine_overrides``), from the network's object,
   - the same 100 epochs from the default random start,
   - and, for reference, the full default recipe (1100 epochs) from a random start.
Results are printed and written to experiments/out/bench_learn_cdi.json.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffrecon
from diffrecon.learn.api import infer, refine_overrides
from diffrecon.learn.samples import sources
from diffrecon.learn.train import TrainedNet, load_network, load_train_config, train

HERE = Path(__file__).parent
CONFIG = HERE / "configs" / "learn_cdi.toml"
QUIET = ["log.progress=false", "log.report=false", "log.tensorboard=false"]
HELD_OUT_SEED = 900_000


def _timed(run: Any) -> tuple[float, float]:
    start = time.perf_counter()
    result = run()
    return float(result.metrics["nrmse"]), time.perf_counter() - start


def _runs(trained: TrainedNet, data: Any, epochs: int, recipe: list[str]
          ) -> dict[str, Callable[[], Any]]:
    return {
        "network": lambda: infer(trained, data),
        f"refine_{epochs}": lambda: infer(trained, data, refine=epochs, overrides=QUIET),
        f"random_{epochs}": lambda: diffrecon.reconstruct(data, "cdi",
                                                          overrides=[*recipe, *QUIET]),
        "random_default_1100": lambda: diffrecon.reconstruct(data, "cdi", overrides=QUIET),
    }


def run_cdi(out: Path, model: str | None, objects: int, epochs: int,
            overrides: list[str]) -> dict[str, Any]:
    """Train (or load) the CDI network (config ``overrides``) and compare it with the
    iterative solver on ``objects`` held-out objects, ``epochs`` solver epochs."""
    report: dict[str, Any] = {"config": str(CONFIG.relative_to(HERE.parent)),
                              "overrides": overrides}
    trained: TrainedNet
    if model is None:
        run = train(CONFIG, out=out / "learn_cdi_net", overrides=overrides)
        trained = run.trained
        report["training"] = {"seconds": run.seconds, "epochs": len(run.history["loss/train"]),
                              "final_train_loss": run.history["loss/train"][-1],
                              "final_validation_loss": run.history["loss/validation"][-1]}
    else:
        trained = load_network(model)
        report["training"] = {"model": model}
    print("training:", report["training"])
    config = load_train_config(CONFIG, ['objects.kinds=["blobs"]'])
    held_out = sources.get("cdi")(config)
    rows: dict[str, list[float]] = {"network": [], f"refine_{epochs}": [],
                                    f"random_{epochs}": [], "random_default_1100": []}
    seconds: dict[str, float] = dict.fromkeys(rows, 0.0)
    recipe = refine_overrides("cdi", epochs)
    for k in range(objects):
        data = held_out.data(HELD_OUT_SEED + k)
        runs = _runs(trained, data, epochs, recipe)
        for name, go in runs.items():
            error, took = _timed(go)
            rows[name].append(error)
            seconds[name] += took
        print(f"object {k}: " + ", ".join(f"{n} {v[-1]:.3f}" for n, v in rows.items()))
    report["held_out"] = {"class": "blobs", "objects": objects, "recipe_100": recipe[0]}
    report["nrmse"] = {name: {"per_object": [round(v, 4) for v in values],
                              "median": statistics.median(values),
                              "mean": statistics.fmean(values),
                              "seconds_per_object": seconds[name] / objects}
                       for name, values in rows.items()}
    for name, entry in report["nrmse"].items():
        print(f"{name}: median NRMSE {entry['median']:.4f}, mean {entry['mean']:.4f}, "
              f"{entry['seconds_per_object']:.2f} s per object")
    return report
