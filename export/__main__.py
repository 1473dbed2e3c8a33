"""CLI: a fastai learner (`learn.export()`) -> a verified bundle the server loads.

  python -m export model.pkl --out models/ [--name NAME] [--eval-csv held_out.csv --text-col text
      --label-col label [--label-delim ';']]
  python -m export --run RUN_DIR --out models/     this project's training run: imdb-lm/ and
                                                   imdb-sentiment/, checked on the IMDB test split
      [--only student]                             a distill run's student.pkl instead:
                                                   imdb-sentiment-fast/ (training/distill.py)
  python -m export ensemble BUNDLE BUNDLE ... --out models/ --name NAME [--eval-csv ...]
                                                   classifier bundles -> one averaging ensemble
                                                   (export/ensemble.py)
  python -m export calibrate BUNDLE --out models/ --version V [--data IMDB_DIR]
                                                   a classify bundle -> a new version with a
                                                   short-input calibration (export/short_inputs.py)
  --calibrate-short [TRAIN_CSV] on the first two forms: the classifier bundle gets that
      calibration before it is published (--run: fitted on the IMDB train split)

Both go through the same exporter (export.pipeline.export_learner). Exit status: 0 on success,
2 when the learner or the input is refused (one line says why; nothing is written), 1 when a
check failed (parity or int8 bound; nothing is written).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REFUSED, CHECK_FAILED = 2, 1
DATA_ENV = "IMDB_DIR"
DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "imdb"
RUN_BUNDLES = {
    "lm": ("lm.pkl", "imdb-lm"),
    "classifier": ("classifier.pkl", "imdb-sentiment"),
    "student": ("student.pkl", "imdb-sentiment-fast"),  # a distill run's (training/distill.py)
}
RUN_DEFAULT = ("lm", "classifier")  # what --run exports without --only
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")  # bundle/manifest.py's rule for names


class Refused(Exception):
    """Bad usage or input that the user must fix (one line)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pkl", nargs="?", type=Path, help="a learner saved with fastai's learn.export()")
    p.add_argument("--run", type=Path, help="this project's training run directory instead")
    p.add_argument("--out", type=Path, default=Path("models"), help="bundles dir (default models/)")
    p.add_argument("--name", help="bundle name (default: the .pkl file's stem)")
    p.add_argument("--version", help="bundle version (default: a UTC timestamp)")
    p.add_argument("--eval-csv", type=Path, help="held-out CSV for accuracy / perplexity")
    p.add_argument("--text-col", default="text", help="--eval-csv text column (default: text)")
    p.add_argument("--label-col", help="--eval-csv label column (classifiers)")
    p.add_argument("--label-delim", help="separator of several labels in --label-col")
    p.add_argument("--keep-fp32", action="store_true", help="keep model.fp32.onnx in the bundle")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument(
        "--calibrate-short",
        nargs="?",
        const="",
        metavar="TRAIN_CSV",
        help="fit a short-input calibration on training texts (a .pkl needs TRAIN_CSV with "
        "--text-col/--label-col; --run uses the IMDB train split)",
    )
    run = p.add_argument_group("--run only")
    run.add_argument("--data", help=f"IMDB dir; default ${DATA_ENV} or ../shared/data/imdb")
    run.add_argument("--eval-docs", type=int, help="test reviews for the classifier (default all)")
    run.add_argument("--lm-eval-docs", type=int, default=200, help="test reviews for the LM")
    run.add_argument("--only", choices=sorted(RUN_BUNDLES), help="export one bundle")
    return p


def _bundle_name(args: argparse.Namespace) -> str:
    if args.name is not None:
        if not _NAME_RE.match(args.name):
            raise Refused(f"--name {args.name!r}: use lower-case letters, digits, '.', '_', '-'")
        return str(args.name)
    name = re.sub(r"[^a-z0-9._-]+", "-", args.pkl.stem.lower()).strip("-._")
    if not name:
        raise Refused(f"cannot make a bundle name from {args.pkl.name!r}; pass --name")
    return name


def _export_pkl(args: argparse.Namespace, version: str) -> list[Path]:
    from .eval_data import read_eval_csv
    from .learner import learner_facts, load_learner_file
    from .pipeline import export_learner

    name = _bundle_name(args)

    learn = load_learner_file(args.pkl)
    facts = learner_facts(learn)  # refuse before anything is written
    eval_data = None
    if args.eval_csv is not None:
        if facts.task == "classify" and args.label_col is None:
            raise Refused("a classifier's --eval-csv needs --label-col")
        label_col = args.label_col if facts.task == "classify" else None
        eval_data = read_eval_csv(args.eval_csv, args.text_col, label_col, args.label_delim)
    source = {"kind": "learner", "file": args.pkl.name}
    train = None
    if args.calibrate_short is not None:
        if facts.task != "classify" or not args.calibrate_short or args.label_col is None:
            raise Refused("--calibrate-short needs a classifier, TRAIN_CSV and --label-col")
        train = read_eval_csv(Path(args.calibrate_short), args.text_col, args.label_col, None)
    out = args.out if train is None else _calibration_staging(args.out, name)
    path = export_learner(
        learn, out, name, version, source=source, eval_data=eval_data, keep_fp32=args.keep_fp32
    )
    if train is None:
        return [path]
    return [_calibrated(path, args.out, version, train, eval_data)]


def _calibration_staging(out: Path, name: str) -> Path:
    """Where an export waits for its calibration: the bundle is published only with it."""
    return out / f".{name}.uncalibrated"


def _calibrated(exported: Path, out: Path, version: str, train: Any, held_out: Any) -> Path:
    """The exported bundle, calibrated for short inputs into out/NAME at the same version."""
    from .short_inputs import calibrate_bundle

    try:
        return calibrate_bundle(exported, out, version, train, held_out)
    finally:
        shutil.rmtree(exported.parent, ignore_errors=True)


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data or os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR)


def _run_eval_data(args: argparse.Namespace) -> dict[str, Any]:
    """The IMDB test split, shuffled once so that any prefix mixes the labels."""
    from .eval_data import EvalData, imdb_held_out

    test = imdb_held_out(_data_dir(args)).sample(frac=1.0, random_state=0).reset_index(drop=True)
    rows = test if args.eval_docs is None else test.iloc[: args.eval_docs]
    return {
        "classifier": EvalData(
            texts=rows["text"].tolist(),
            labels=[[str(label)] for label in rows["label"]],
            description="IMDB test split (never used for training)",
        ),
        "lm": EvalData(
            texts=test["text"].iloc[: args.lm_eval_docs].tolist(),
            labels=None,
            description="IMDB test reviews (held out from LM training)",
        ),
    }


def _export_run(args: argparse.Namespace, version: str | None) -> list[Path]:
    """This project's run: the same exporter, with the run's config and metrics recorded."""
    from .learner import load_learner_file
    from .pipeline import export_learner

    cfg = json.loads((args.run / "config.json").read_text())
    training = {
        "config": cfg,
        "metrics": json.loads((args.run / "metrics.json").read_text()),
        "run_dir": args.run.name,
    }
    version = version or f"{cfg['name']}-{datetime.now(UTC):%Y%m%dT%H%M}"
    data = _run_eval_data(args)
    written = []
    for kind, (file, name) in RUN_BUNDLES.items():
        if kind not in ((args.only,) if args.only else RUN_DEFAULT):
            continue
        learn = load_learner_file(args.run / file)
        source = {"kind": "run", "run_dir": args.run.name, "file": file}
        calibrate = kind != "lm" and args.calibrate_short is not None
        path = export_learner(
            learn,
            _calibration_staging(args.out, name) if calibrate else args.out,
            name,
            version,
            source=source,
            eval_data=data["lm" if kind == "lm" else "classifier"],
            training=training,
            keep_fp32=args.keep_fp32,
        )
        if calibrate:
            from .short_inputs import imdb_split

            train = imdb_split(_data_dir(args), "train")
            path = _calibrated(path, args.out, version, train, data["classifier"])
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ensemble"]:
        from .ensemble import main as ensemble_main

        return ensemble_main(argv[1:])
    if argv[:1] == ["calibrate"]:
        from .short_inputs import main as calibrate_main

        return calibrate_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.pkl is None) == (args.run is None):
        parser.error("give a learner .pkl or --run RUN_DIR (one of them)")

    if args.pkl is not None:  # refuse a wrong name or file before the slow imports below
        from .learner import UnsupportedLearner, check_learner_file

        try:
            _bundle_name(args)
            check_learner_file(args.pkl)
        except (Refused, UnsupportedLearner) as e:
            print(f"python -m export: refused: {e}", file=sys.stderr)
            return REFUSED
    # fastai's modules decorate functions with torch.jit.script at import, which torch now
    # reports as deprecated: a note for fastai's developers, nothing an exporting user can act on
    warnings.filterwarnings(
        "ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning
    )
    import numpy as np
    import torch

    from .eval_data import EvalDataError
    from .learner import UnsupportedLearner
    from .onnx_graphs import ExportError, quiet_quantizer_hints
    from .short_inputs import CalibrationRefused

    torch.set_num_threads(args.threads)
    np.random.seed(0)
    quiet_quantizer_hints()
    try:
        if args.run is not None:
            written = _export_run(args, args.version)
        else:
            written = _export_pkl(args, args.version or f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
    except (Refused, UnsupportedLearner, EvalDataError, CalibrationRefused) as e:
        print(f"python -m export: refused: {e}", file=sys.stderr)
        return REFUSED
    except ExportError as e:
        print(f"python -m export: a check failed, nothing written: {e}", file=sys.stderr)
        return CHECK_FAILED
    for path in written:
        manifest = json.loads((path / "manifest.json").read_text())
        print(json.dumps({"bundle": str(path), "metrics": manifest["metrics"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
