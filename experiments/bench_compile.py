"""Does ``torch.compile`` pay on the far-field hot path? Eager against compiled, one run.

Issue 9 asks to "consider torch.compile where it pays". This script times the update that
every far-field epoch repeats (model forward, likelihood, backward, Adam step) on the DESIGN
scene (``experiments/configs/ptycho_design.toml``, 420 x 128^2; ``--scene`` for another),
once as written and once with the forward and the likelihood compiled by ``torch.compile``
(inductor; backward through AOTAutograd). Both use ``torch.optim.Adam``, so the ratio, not the
absolute time, is the figure (a reconstruction steps a fused Adam instead). It prints the
compile time, the seconds per epoch of each and the loss after the same updates (they agree):

    python experiments/bench_compile.py                 # 2 threads, 8 epochs each
    python experiments/bench_compile.py --dynamic       # shapes marked dynamic

Batches all have the default size (the remainder is dropped), so the static graph compiles
once. Results go to experiments/out/bench_compile.json. CI does not run it (it needs a C++
compiler, and the first compile takes tens of seconds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import diffrecon
from diffrecon.data.container import DiffractionData
from diffrecon.data.dataset import PatternBatches
from diffrecon.losses.likelihoods import make_likelihood
from diffrecon.models.ptycho import Ptycho, PtychoConfig
from diffrecon.recon.host_memory import reuse_freed_blocks
from diffrecon.recon.reconstructor import default_batch_size

HERE = Path(__file__).resolve().parent
SCENE = HERE / "configs" / "ptycho_design.toml"


def epochs_of(step: Callable[[torch.Tensor], torch.Tensor], batches: list[torch.Tensor],
              epochs: int) -> tuple[list[float], float]:
    """Seconds of each epoch of ``step`` over ``batches``, and the last epoch's summed loss."""
    seconds, total = [], 0.0
    for _ in range(epochs):
        start, total = time.perf_counter(), 0.0
        for index in batches:
            total += float(step(index))
        seconds.append(time.perf_counter() - start)
    return seconds, total


def measure(data: DiffractionData, compiled: bool, dynamic: bool,
            epochs: int) -> dict[str, float | list[float]]:
    model = Ptycho.from_data(data, PtychoConfig())
    likelihood = make_likelihood("amplitude")
    served = PatternBatches(data, model.propagator, lazy=False, prepare=likelihood.prepare_)
    params = [model.object, model.probe]
    optimizer = torch.optim.Adam(params, lr=0.02)
    n = data.num_patterns
    size = default_batch_size(n, model.probe.shape[-1] * model.probe.shape[-2])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    batches = list(order[: n - n % size].split(size))

    def loss_of(index: torch.Tensor, measured: torch.Tensor, valid: torch.Tensor
                ) -> torch.Tensor:
        return model.nll(index, measured, valid, likelihood)  # the objective's own call

    forward = torch.compile(loss_of, dynamic=dynamic) if compiled else loss_of

    def step(index: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad()
        measured = served(index)
        loss = forward(index, measured, served.valid)
        loss.backward()
        optimizer.step()
        return loss.detach()

    start = time.perf_counter()
    step(batches[0])  # the first call compiles (and warms the eager FFT plans)
    first = time.perf_counter() - start
    seconds, loss = epochs_of(step, batches, epochs)
    return {"first_call_s": first, "epoch_s": seconds,
            "seconds_per_epoch": statistics.median(seconds), "final_loss": loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", type=Path, default=SCENE)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dynamic", action="store_true", help="torch.compile(dynamic=True)")
    parser.add_argument("--out", default=str(HERE / "out" / "bench_compile.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = diffrecon.simulate(args.scene)
    report: dict = {"threads": args.threads, "torch": torch.__version__,
                    "dynamic": args.dynamic}
    with reuse_freed_blocks():  # as during a reconstruction (recon.host_memory)
        for label, compiled in (("eager", False), ("compiled", True)):
            torch.manual_seed(0)
            row = measure(data, compiled, args.dynamic, args.epochs)
            report[label] = row
            print(f"[{label}] first update {row['first_call_s']:.2f} s, "
                  f"{row['seconds_per_epoch']:.4f} s/epoch, loss {row['final_loss']:.6g}",
                  flush=True)
    ratio = report["compiled"]["seconds_per_epoch"] / report["eager"]["seconds_per_epoch"]
    report["compiled_over_eager"] = ratio
    spent = report["compiled"]["first_call_s"] - report["eager"]["first_call_s"]
    saved = report["eager"]["seconds_per_epoch"] - report["compiled"]["seconds_per_epoch"]
    report["break_even_epochs"] = spent / saved if saved > 0 else None
    print(f"compiled / eager per epoch: {ratio:.2f}; compile overhead {spent:.1f} s; "
          + (f"pays after {spent / saved:.0f} epochs" if saved > 0 else "never pays"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
