"""CLI: `python -m training {lm,classifier,all} --config NAME --data DIR --out RUN_DIR`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import CONFIGS, get_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    p.add_argument("stage", choices=["lm", "classifier", "all"])
    p.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    p.add_argument("--data", help="IMDB dir (CSV or fastai folder layout); default $IMDB_DIR or ../shared/data/imdb")
    p.add_argument("--download", action="store_true", help="fetch fastai's IMDB with untar_data (needs internet)")
    p.add_argument("--out", required=True, type=Path, help="run directory for learners and metrics")
    p.add_argument("--lm-docs", type=int, help="override: documents of train+unsup for the LM")
    p.add_argument("--clf-docs", type=int, help="override: train documents for the classifier")
    p.add_argument("--lm-epochs", type=int)
    p.add_argument("--clf-epochs", type=lambda v: tuple(int(x) for x in v.split(",")),
                   help="override: epochs per unfreezing stage, e.g. 1,1,0,2 (head, -2, -3, all)")
    p.add_argument("--pretrained", action="store_true", default=None,
                   help="start the LM from fastai's WikiText-103 weights (downloads; online only)")
    p.add_argument("--clf-lr", type=float, help="override: classifier base learning rate")
    p.add_argument("--clf-init", choices=["lm", "scratch"], help="classifier start: the LM encoder (ULMFiT) or random")
    p.add_argument("--resume-after-stage", type=int, help="classifier: continue from checkpoint classifier-stageN")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    args = p.parse_args(argv)

    import torch

    from .data import load_imdb, resolve_data_dir
    from .ulmfit import train_classifier, train_lm

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_config(args.config, lm_docs=args.lm_docs, clf_docs=args.clf_docs,
                     lm_epochs=args.lm_epochs, clf_epochs=args.clf_epochs, clf_lr=args.clf_lr, clf_init=args.clf_init, pretrained=args.pretrained)
    data = load_imdb(resolve_data_dir(args.data, args.download))
    if args.stage in ("lm", "all"):
        print(json.dumps({"lm": train_lm(data, cfg, args.out)}, default=str), flush=True)
    if args.stage in ("classifier", "all"):
        print(json.dumps({"classifier": train_classifier(data, cfg, args.out, args.resume_after_stage)}, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
