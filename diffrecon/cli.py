"""Command line: parses arguments and dispatches to ``diffrecon.api``; nothing else."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from diffrecon.errors import ConfigError, DiffreconError

if TYPE_CHECKING:
    from diffrecon.data.container import DiffractionData


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffrecon", description="Reconstruct coherent diffraction and ptychography data."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no progress bar or info messages",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or info")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", parents=[common], help="simulate a ptychography scan and reconstruct it"
    )
    demo.add_argument("--out", default="diffrecon-demo", help="run folder (default: %(default)s)")
    demo.add_argument("--epochs", type=int, default=60,
                      help="epochs of the reconstruction (default: %(default)s)")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V",
                      help="override a run config key of the reconstruction, e.g. --set "
                           "algorithm.name=rpie (repeatable; the keys: diffrecon config ptycho)")

    sim = sub.add_parser(
        "simulate", parents=[common], help="simulate a data set from a TOML description",
        description="Simulate a data set with ground truth and write it as CXI. Its keys, "
                    "with defaults and descriptions: diffrecon config MODALITY --simulate",
    )
    sim.add_argument("config", nargs="?",
                     help="simulation TOML, or a training TOML (its [simulation] table: the "
                          "scan a network is trained for); default: the built-in scene")
    sim.add_argument("--config", dest="config_option", default=None, metavar="CONFIG",
                     help="the simulation TOML given as an option (as for reconstruct)")
    sim.add_argument("--modality", default="ptycho",
                     help="registered modality whose scene is simulated, unless the TOML names "
                          "one (default: %(default)s)")
    sim.add_argument("--out", required=True, help="output .cxi file")
    sim.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V",
                     help="override a simulation key, e.g. --set scan_points=200 (repeatable; "
                          "the keys: diffrecon config MODALITY --simulate)")

    stem = sub.add_parser(
        "import-stem", parents=[common], help="convert 4D-STEM data (.npy, HDF5, EMPAD .raw) to CXI"
    )
    stem.add_argument("data", help="4D-STEM file (scan_y, scan_x, ky, kx)")
    stem.add_argument("--calibration", default=None, help="TOML of STEMCalibration keys")
    stem.add_argument("--out", required=True, help="output .cxi file")
    stem.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="K=V",
        help="calibration key, e.g. --set voltage_v=80e3 --set 'scan_shape=[64, 64]'",
    )

    rec = sub.add_parser("reconstruct", parents=[common], help="reconstruct a data file")
    rec.add_argument("data", help="a CXI or plain HDF5 file; a bare intensity array (.npy, "
                                  ".npz, .tif/.tiff: a CDI pattern or volume); or Fourier-"
                                  "ptychography data: an HDF5 file, a TOML/JSON description, "
                                  "or a folder holding fp.toml or fp.json")
    rec.add_argument("--modality", default=None, help="registered modality (default: ptycho)")
    rec.add_argument("--config", default=None, help="run configuration TOML")
    rec.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="K=V",
        help="override a config key, e.g. --set recon.epochs=200 (repeatable)",
    )
    rec.add_argument("--out", default=None, help="run folder (default: <data stem>-recon)")
    rec.add_argument("--resume", default=None, help="continue the run in this folder")
    rec.add_argument("--device", default=None, help="torch device, e.g. cuda")
    holding = rec.add_mutually_exclusive_group()
    holding.add_argument("--lazy", dest="lazy", action="store_const", const=True, default=None,
                         help="read patterns from the file batch by batch (default: when "
                              "they would take more than half of the available memory)")
    holding.add_argument("--in-memory", dest="lazy", action="store_const", const=False,
                         help="hold all patterns in memory, however large")

    trn = sub.add_parser("train", parents=[common], help="train an inversion network")
    trn.add_argument("config", nargs="?", default=None, help="training TOML (see README)")
    trn.add_argument("--out", required=True, help="run folder (model.pt, tensorboard/, ...)")
    trn.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    trn.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V",
                     help="override a training config key, e.g. --set train.epochs=5 "
                          "(repeatable)")

    inf = sub.add_parser("infer", parents=[common],
                         help="a network's object (ptycho: stitched; cdi: whole)")
    inf.add_argument("model", help="model.pt written by 'diffrecon train'")
    inf.add_argument("data", help="CXI or HDF5 ptychography or CDI data file")
    inf.add_argument("--out", required=True, help="run folder")
    inf.add_argument("--refine", type=int, default=0, metavar="N",
                     help="then N epochs of the iterative solver from the network's result")
    inf.add_argument("--finetune", type=int, default=0, metavar="N",
                     help="first N self-supervised fine-tuning steps on these patterns")
    inf.add_argument("--config", default=None, help="run configuration TOML of the refinement")
    inf.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V",
                     help="override a run config key of the refinement, e.g. --set "
                          "recon.batch_size=32 (repeatable)")

    ins = sub.add_parser("inspect", parents=[common], help="summarise and validate a data file")
    ins.add_argument("data", help="data file (any input reconstruct accepts)")
    ins.add_argument("--modality", default="ptycho",
                     help="validate for this registered modality, with its own checks "
                          "(default: %(default)s)")

    conf = sub.add_parser(
        "config", parents=[common], help="print the default configuration of a modality"
    )
    conf.add_argument("modality", nargs="?", default="ptycho",
                      help="registered modality (default: %(default)s; see --list)")
    conf.add_argument("--list", action="store_true", help="list registered modalities")
    conf.add_argument("--simulate", action="store_true",
                      help="print the settings of 'diffrecon simulate --modality MODALITY' "
                           "instead (its TOML and --set keys)")
    return parser


def _summary(result: object, seconds: float) -> str:
    from diffrecon.api import Result

    assert isinstance(result, Result)
    losses = result.history.get("loss/total") or [float("nan")]  # none: no epoch left to run
    lines = [f"finished in {seconds:.1f} s; final loss {losses[-1]:.5g}"]
    if result.metrics:
        lines.append(
            "vs ground truth: " + ", ".join(f"{k} = {v:.4g}" for k, v in result.metrics.items())
        )
    if result.out is not None:
        lines.append(f"run folder: {result.out}/ (reconstruction.h5, report.png, config.toml)")
        if (result.out / "tensorboard").is_dir():
            lines.append(f"TensorBoard: tensorboard --logdir {result.out / 'tensorboard'}")
    return "\n".join(lines)


def _written(out: str, data: DiffractionData) -> str:
    """What ``simulate``/``import-stem`` wrote: patterns, or one 3D volume (CDI, Bragg)."""
    if data.positions_m is None and data.num_patterns > 1:
        shape = " x ".join(str(n) for n in (data.num_patterns, *data.frame_shape))
        return f"wrote {out}: a {shape} volume"
    return f"wrote {out}: {data.num_patterns} patterns of {data.frame_shape}"


def _run(args: argparse.Namespace) -> int:
    from diffrecon import api
    from diffrecon.learn.api import infer as api_infer
    from diffrecon.learn.api import train as api_train
    from diffrecon.runfolder import check_run_folder

    quiet = ["log.progress=false"] if args.quiet else []
    if args.command == "config":
        print("\n".join(api.list_models()) if args.list
              else api.default_simulation(args.modality) if args.simulate
              else api.default_config(args.modality))
    elif args.command == "inspect":
        print(api.inspect(args.data, args.modality))
    elif args.command == "simulate":
        if args.config and args.config_option:
            raise ConfigError(f"simulate: two simulation TOMLs given ({args.config} and "
                              f"--config {args.config_option}); give one")
        data = api.simulate(args.config or args.config_option, modality=args.modality,
                            out=args.out, overrides=args.overrides)
        print(_written(args.out, data))
    elif args.command == "train":
        run = api_train(args.config, out=args.out, resume=args.resume, overrides=args.overrides)
        if run.out is not None:
            final = {k: v[-1] for k, v in run.history.items() if v}
            print(f"trained in {run.seconds:.1f} s: " + ", ".join(
                f"{k} {v:.4g}" for k, v in final.items()) + f"\nmodel: {run.out / 'model.pt'}")
    elif args.command == "infer":
        start = time.perf_counter()
        result = api_infer(args.model, args.data, out=args.out, refine=args.refine,
                           finetune=args.finetune, config=args.config,
                           overrides=list(args.overrides) + quiet)
        if args.refine:
            print(_summary(result, time.perf_counter() - start))
        else:
            metrics = "".join(f"; {k} = {v:.4g}" for k, v in result.metrics.items())
            print(f"inferred in {time.perf_counter() - start:.1f} s{metrics}"
                  f"\nrun folder: {args.out}")
    elif args.command == "import-stem":
        data = api.import_4dstem(
            args.data, args.calibration, out=args.out, overrides=args.overrides
        )
        print(_written(args.out, data))
    elif args.command == "demo":
        out = check_run_folder(args.out)
        out.mkdir(parents=True, exist_ok=True)
        data = api.simulate(out=out / "data.cxi")
        print(f"simulated {data.num_patterns} far-field patterns -> {out / 'data.cxi'}")
        start = time.perf_counter()
        result = api.reconstruct(
            data,
            "ptycho",
            out=out,
            overrides=[f"recon.epochs={args.epochs}", *args.overrides, *quiet],
        )
        print(_summary(result, time.perf_counter() - start))
    elif args.command == "reconstruct":
        if getattr(args, "console", False) and args.lazy is not True:
            api.prefer_jemalloc(args.data, args.device)  # may restart this process
        overrides = list(args.overrides) + quiet
        if args.device:
            overrides.append(f'recon.device="{args.device}"')
        out = args.out or (None if args.resume else f"{Path(args.data).stem}-recon")
        start = time.perf_counter()
        result = api.reconstruct(
            args.data,
            args.modality,
            args.config,
            out=out,
            resume=args.resume,
            overrides=overrides,
            lazy=args.lazy,
        )
        if result.rank == 0:  # torchrun: one summary, from the rank that wrote the run folder
            print(_summary(result, time.perf_counter() - start))
    return 0


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """``warnings.showwarning`` of the command line: one line on stderr, no source line; the
    category is named unless it is one of ours (``SamplingWarning``, ``ScanWarning``)."""
    ours = category.__module__.split(".")[0] == "diffrecon"
    print(f"diffrecon: warning: {'' if ours else category.__name__ + ': '}{message}",
          file=sys.stderr)


@contextlib.contextmanager
def _clean_warnings() -> Iterator[None]:
    """Within the block warnings print through ``_show_warning``; the filters and
    ``warnings.showwarning`` are restored on exit (the Python API keeps Python's)."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        yield


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.console = argv is None  # the command line itself, not a call from Python
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s: %(message)s"
    )
    try:
        with _clean_warnings():
            return _run(args)
    except DiffreconError as error:
        print(f"diffrecon: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "diffrecon: interrupted (the last checkpoint is kept; --resume continues)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
