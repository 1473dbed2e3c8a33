"""CLI: `python -m export --run RUN_DIR --out models/` writes `imdb-lm/` and `imdb-sentiment/`."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    p.add_argument(
        "--run",
        required=True,
        type=Path,
        help="training run directory (python -m training ... --out)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("models"), help="where the bundles go (default: models/)"
    )
    p.add_argument(
        "--data", help="IMDB dir for the held-out checks; default $IMDB_DIR or ../shared/data/imdb"
    )
    p.add_argument(
        "--eval-docs", type=int, help="test reviews for the classifier checks (default: all)"
    )
    p.add_argument(
        "--lm-eval-docs", type=int, default=200, help="test reviews for the LM perplexity check"
    )
    p.add_argument("--only", choices=["lm", "classifier"], help="export one bundle")
    p.add_argument("--version", help="bundle version (default: <config>-<UTC timestamp>)")
    p.add_argument(
        "--keep-fp32", action="store_true", help="keep model.fp32.onnx in the bundle for comparison"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from training.data import load_imdb, resolve_data_dir

    from .pipeline import EvalData, export_classifier_bundle, export_language_model

    torch.set_num_threads(args.threads)
    cfg = json.loads((args.run / "config.json").read_text())
    version = args.version or f"{cfg['name']}-{datetime.now(UTC):%Y%m%dT%H%M}"
    data = load_imdb(resolve_data_dir(args.data))
    if data.test is None or not len(data.test):
        raise SystemExit(
            "the held-out checks need the test split (test.csv.gz or sample.csv is_valid rows)"
        )
    test = data.test.sample(frac=1.0, random_state=0).reset_index(
        drop=True
    )  # mix labels for subsets
    clf_rows = test if args.eval_docs is None else test.iloc[: args.eval_docs]
    eval_data = EvalData(
        texts=clf_rows["text"].tolist(),
        labels=clf_rows["label"].astype(str).tolist(),
        lm_texts=test["text"].iloc[: args.lm_eval_docs].tolist(),
    )
    np.random.seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    written = {}
    if args.only in (None, "lm"):
        written["lm"] = export_language_model(
            args.run, args.out, "imdb-lm", version, eval_data, keep_fp32=args.keep_fp32
        )
    if args.only in (None, "classifier"):
        written["classifier"] = export_classifier_bundle(
            args.run, args.out, "imdb-sentiment", version, eval_data, keep_fp32=args.keep_fp32
        )
    for kind, path in written.items():
        metrics = json.loads((path / "manifest.json").read_text())["metrics"]
        print(json.dumps({kind: str(path), "metrics": metrics}, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
