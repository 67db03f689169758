"""Pure parts of the benchmark harness: per-case summaries, time to accuracy, ratios, table.

A *row* is a plain dict describing one package on one case:

    {"case": str, "package": str, "status": "ok" | "failed", "reason": str,
     "seconds_per_epoch": float, "fft_floor_s": float | None,
     "fft_floor_scan_s": float | None, "peak_mb": float | None,
     "epochs_to_target": int | None, "time_to_target_s": float | None,
     "final_nrmse": float | None, "note": str}

Two FFT floors: ``fft_floor_s``, the epoch's forward + inverse FFTs chunked as its minibatches
(the FFT work itself), and ``fft_floor_scan_s``, the same FFTs as one batched call over the
whole scan, which reproduces the floor of the issue's calibration (CDTools, 420 x 128^2 on 2
cores: 0.91 s per epoch, "about 21x the FFT floor (43 ms)"; that call measures 44 ms on this
machine, the chunked one 15 ms). The one call's extra time is not arithmetic: its fresh
outputs (55 MB there) are page-faulted in; with freed memory reused it also takes 15 ms.

Everything here is deterministic arithmetic on measured numbers (tested in
tests/test_bench_harness.py); measuring them is run.py's job.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

TARGET_NRMSE = 0.1
OURS = "diffrecon"


def time_to_target(
    snapshot_epochs: Sequence[int], errors: Sequence[float], epoch_seconds: Sequence[float],
    setup_s: float = 0.0, target: float = TARGET_NRMSE,
) -> tuple[int | None, float | None]:
    """First evaluated epoch whose error is <= ``target`` and the seconds spent to get there.

    Args:
        snapshot_epochs: epochs (1-based, increasing) after which the error was measured.
        errors: the error after each of those epochs (NaN where it could not be computed).
        epoch_seconds: seconds of every epoch run, in order.
        setup_s: one-off seconds before the first epoch (model set-up, probe start).

    Returns:
        (epoch, setup_s + sum of the first ``epoch`` epoch times), or (None, None) if the
        target was never reached.
    """
    if len(snapshot_epochs) != len(errors):
        raise ValueError(f"{len(snapshot_epochs)} snapshot epochs but {len(errors)} errors")
    for epoch, error in zip(snapshot_epochs, errors, strict=True):
        if math.isfinite(error) and error <= target:
            if epoch > len(epoch_seconds):
                raise ValueError(f"epoch {epoch} measured but only {len(epoch_seconds)} timed")
            return int(epoch), float(setup_s + sum(epoch_seconds[:epoch]))
    return None, None


def summarize(
    case: str, package: str, epoch_seconds: Sequence[float], snapshot_epochs: Sequence[int],
    errors: Sequence[float], *, setup_s: float = 0.0, fft_floor_s: float | None = None,
    fft_floor_scan_s: float | None = None, peak_mb: float | None = None,
    target: float = TARGET_NRMSE, note: str = "",
) -> dict[str, Any]:
    """One row from a package's measurements (median seconds per epoch, so that a few epochs
    slowed by the shared machine do not dominate)."""
    epoch, seconds = time_to_target(snapshot_epochs, errors, epoch_seconds, setup_s, target)
    finite = [e for e in errors if math.isfinite(e)]
    return {
        "case": case, "package": package, "status": "ok", "reason": "",
        "seconds_per_epoch": statistics.median(epoch_seconds), "epochs_run": len(epoch_seconds),
        "fft_floor_s": fft_floor_s, "fft_floor_scan_s": fft_floor_scan_s,
        "peak_mb": peak_mb, "setup_s": setup_s,
        "epochs_to_target": epoch, "time_to_target_s": seconds,
        "final_nrmse": finite[-1] if finite else None, "note": note,
        "curve": {"epochs": [int(e) for e in snapshot_epochs],
                  "errors": [float(e) for e in errors],
                  "epoch_seconds": [float(t) for t in epoch_seconds]},
    }


def time_to(row: dict[str, Any], target: float) -> float | None:
    """Seconds (set-up included) a row's package took to reach NRMSE ``target``, or None."""
    curve = row.get("curve")
    if not curve:
        return None
    return time_to_target(curve["epochs"], curve["errors"], curve["epoch_seconds"],
                          row.get("setup_s") or 0.0, target)[1]


def failed(case: str, package: str, reason: str) -> dict[str, Any]:
    """A row for a package that could not be installed or run, with the reason."""
    return {"case": case, "package": package, "status": "failed", "reason": reason,
            "seconds_per_epoch": None, "fft_floor_s": None, "fft_floor_scan_s": None,
            "peak_mb": None,
            "epochs_to_target": None, "time_to_target_s": None, "final_nrmse": None,
            "note": ""}


def ratio_to_floor(row: dict[str, Any], key: str = "fft_floor_s") -> float | None:
    """Seconds per epoch over the floor ``key`` (``fft_floor_s`` or ``fft_floor_scan_s``)."""
    floor, seconds = row.get(key), row.get("seconds_per_epoch")
    return seconds / floor if floor and seconds else None


def peer_ratios(rows: Sequence[dict[str, Any]], ours: str = OURS) -> list[dict[str, Any]]:
    """Our time to the target divided by each peer's, per case (< 1: we are faster).

    A peer that failed or never reached the target gets ``ratio`` None and a reason; so does
    every peer when we did not reach it ourselves. A peer that ran but stopped short of the
    target is also compared at the best NRMSE it did reach: ``at_best`` holds that NRMSE, the
    seconds each package took to get there and their ratio (None where we never got there).
    """
    out = []
    for case in dict.fromkeys(row["case"] for row in rows):
        mine = next((r for r in rows if r["case"] == case and r["package"] == ours), None)
        for peer in (r for r in rows if r["case"] == case and r["package"] != ours):
            reason = ""
            if peer["status"] != "ok":
                reason = f"{peer['package']} failed: {peer['reason']}"
            elif peer["time_to_target_s"] is None:
                reason = (f"{peer['package']} did not reach the target in "
                          f"{peer.get('epochs_run')} epochs (final NRMSE {peer['final_nrmse']})")
            elif mine is None or mine["time_to_target_s"] is None:
                reason = f"{ours} did not reach the target"
            ratio = None if reason else mine["time_to_target_s"] / peer["time_to_target_s"]
            item = {"case": case, "peer": peer["package"], "ratio": ratio, "reason": reason}
            if ratio is None and peer["status"] == "ok" and mine is not None:
                item["at_best"] = _at_best(mine, peer)
            out.append(item)
    return out


def _at_best(mine: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any] | None:
    """Both packages' time to the best NRMSE the peer reached (our time / theirs)."""
    errors = [e for e in (peer.get("curve") or {}).get("errors", []) if math.isfinite(e)]
    if not errors:
        return None
    best = min(errors)
    theirs, ours = time_to(peer, best), time_to(mine, best)
    return {"nrmse": best, "peer_s": theirs, "ours_s": ours,
            "ratio": ours / theirs if ours is not None and theirs else None}


def _cell(value: Any, form: str) -> str:
    width = int("".join(c for c in form.split(".")[0] if c.isdigit()) or 0)
    return f"{'-':>{width}}" if value is None else format(value, form)


def format_table(rows: Sequence[dict[str, Any]], target: float = TARGET_NRMSE) -> str:
    """A fixed-width text table of the rows, failures with their reasons below it."""
    head = (f"{'case':<28} {'package':<10} {'s/epoch':>8} {'floor s':>8} {'x floor':>7} "
            f"{'x scan':>6} "
            f"{'peak MiB':>8} {f'ep->{target:g}':>8} {f's->{target:g}':>8} {'final':>6}")
    lines = [head, "-" * len(head)]
    notes = []
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"{row['case']:<28} {row['package']:<10} FAILED (see below)")
            notes.append(f"{row['package']} on {row['case']}: {row['reason']}")
            continue
        lines.append(
            f"{row['case']:<28} {row['package']:<10} {_cell(row['seconds_per_epoch'], '8.3f')} "
            f"{_cell(row['fft_floor_s'], '8.4f')} {_cell(ratio_to_floor(row), '7.1f')} "
            f"{_cell(ratio_to_floor(row, 'fft_floor_scan_s'), '6.1f')} "
            f"{_cell(row['peak_mb'], '8.0f')} {_cell(row['epochs_to_target'], '8d')} "
            f"{_cell(row['time_to_target_s'], '8.1f')} {_cell(row['final_nrmse'], '6.3f')}")
    return "\n".join(lines + notes)


def format_ratios(ratios: Sequence[dict[str, Any]], ours: str = OURS) -> str:
    lines = []
    for item in ratios:
        if item["ratio"] is None:
            lines.append(f"{item['case']}: {ours} / {item['peer']} time to target: n/a "
                         f"({item['reason']})")
            best = item.get("at_best")
            if best and best["ratio"] is not None:
                lines.append(
                    f"  at {item['peer']}'s best NRMSE {best['nrmse']:.3f}: {ours} "
                    f"{best['ours_s']:.1f} s, {item['peer']} {best['peer_s']:.1f} s "
                    f"(ratio {best['ratio']:.3f}, {1 / best['ratio']:.1f}x "
                    f"{'faster' if best['ratio'] < 1 else 'slower'})")
            elif best:
                lines.append(f"  {ours} did not reach {item['peer']}'s best NRMSE "
                             f"{best['nrmse']:.3f}")
        else:
            lines.append(f"{item['case']}: {ours} / {item['peer']} time to target = "
                         f"{item['ratio']:.3f} ({1 / item['ratio']:.1f}x "
                         f"{'faster' if item['ratio'] < 1 else 'slower'})")
    return "\n".join(lines)
