"""Run CDTools (cdtools-py) on the shared CXI file; executed inside its own virtual environment.

    python cdtools_worker.py SCAN.cxi OUT.npz EPOCHS SNAPSHOT_EVERY THREADS BUDGET_S

Stops after EPOCHS epochs or once the timed epochs exceed BUDGET_S seconds.

Recipe (the package's FancyPtycho example): ``FancyPtycho.from_dataset`` (probe built by the
package from the mean pattern), then an ``AdamReconstructor``: 50 epochs at lr 0.02 with
minibatches of 10, the rest at lr 0.005 with minibatches of 50. One probe mode: the simulated
data are coherent. Only the ``optimize`` iterations are timed; object snapshots are copied
outside the timed region.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import handoff  # noqa: E402


def main(path: str, out: str, epochs: int, every: int, threads: int,
         budget_s: float) -> None:
    import cdtools
    import torch

    torch.set_num_threads(threads)
    base = handoff.resident_mb()
    started = time.perf_counter()
    dataset = cdtools.datasets.Ptycho2DDataset.from_cxi(path)
    model = cdtools.models.FancyPtycho.from_dataset(dataset, n_modes=1)
    recon = cdtools.reconstructors.AdamReconstructor(model, dataset)
    setup = time.perf_counter() - started
    def stream():  # type: ignore[no-untyped-def]
        # the recipe's two stages as one stream of epochs; ``optimize`` sets its step size and
        # minibatch when called, so the second stage is only called once the first is done
        yield from recon.optimize(min(50, epochs), lr=0.02, batch_size=10)
        if epochs > 50:
            yield from recon.optimize(epochs - 50, lr=0.005, batch_size=50)

    epochs_stream = stream()
    objects, done, seconds = handoff.run_epochs(
        lambda _: next(epochs_stream), lambda: model.obj.detach().cpu().numpy(), epochs, every,
        budget_s)
    pixel = float(abs(model.probe_basis.detach().cpu().numpy()[:, 1]).max())
    handoff.save_snapshots(out, objects, done, seconds, setup, handoff.peak_mb() - base, pixel,
                           note="FancyPtycho, 1 mode, Adam 0.02/b10 x50 then 0.005/b50")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]),
         float(sys.argv[6]))
