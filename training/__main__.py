"""CLI: `python -m training STAGE --config NAME --data DIR --out RUN_DIR`.

tokenize: fastai-tokenize train + unsup once and write a pre-tokenized corpus to --out (for a
GPU machine). lm / classifier / all: train; --data may be IMDB text or such a corpus.
soft-labels: a teacher classifier bundle's probabilities on every review of a corpus (--data),
written to the file --out (training/soft_labels.py). distill: a smaller classifier fitted to
them from the corpus (training/distill.py), fp16 weights only, like --weights-only.
rebuild: turn a --weights-only or distill run's fp16 weights into lm.pkl / classifier.pkl or
student.pkl (needs the corpus); it first checks that every file it needs is there and names any
that is not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from .config import CONFIGS, get_config

# fastai scripts its activation functions with torch.jit.script when it is imported, which torch
# now deprecates: a note for fastai's authors that no user of this command can act on.
warnings.filterwarnings(
    "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "stage",
        choices=["tokenize", "lm", "classifier", "all", "rebuild", "soft-labels", "distill"],
    )
    p.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    p.add_argument(
        "--data",
        help="IMDB dir (CSV or fastai folder layout) or a pre-tokenized corpus dir; "
        "default $IMDB_DIR or ../shared/data/imdb",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="fetch fastai's IMDB with untar_data (needs internet)",
    )
    p.add_argument(
        "--out", required=True, type=Path, help="run directory (tokenize: the corpus directory)"
    )
    p.add_argument("--lm-docs", type=int, help="override: documents of train+unsup for the LM")
    p.add_argument("--clf-docs", type=int, help="override: train documents for the classifier")
    p.add_argument("--lm-epochs", type=int)
    p.add_argument(
        "--clf-epochs",
        type=lambda v: tuple(int(x) for x in v.split(",")),
        help="override: epochs per unfreezing stage, e.g. 1,1,0,2 (head, -2, -3, all)",
    )
    p.add_argument(
        "--pretrained",
        action="store_true",
        default=None,
        help="start the LM from fastai's WikiText-103 weights (downloads; online only)",
    )
    teach = p.add_argument_group("soft-labels and distill")
    teach.add_argument("--teacher", type=Path, help="soft-labels: the teacher classifier bundle")
    teach.add_argument("--soft-labels", type=Path, help="distill: the soft-labels stage's file")
    teach.add_argument("--student-emb", type=int, help="student embedding (default: half)")
    teach.add_argument("--student-hid", type=int, help="student LSTM width (default: half)")
    teach.add_argument("--student-layers", type=int, help="student layers (default: config's)")
    teach.add_argument("--epochs", type=int, help="student epochs, at most (default 12)")
    teach.add_argument("--unsup-docs", type=int, help="unlabelled reviews taught (default all)")
    p.add_argument(
        "--backwards",
        action="store_true",
        help="LM and classifier read tokens in reverse order (fastai backwards=True); give it "
        "to both stages; the exported bundles record direction 'backward'",
    )
    p.add_argument("--clf-lr", type=float, help="override: classifier base learning rate")
    p.add_argument("--lm-lr", type=float, help="override: language model peak learning rate")
    p.add_argument(
        "--clf-init",
        choices=["lm", "scratch"],
        help="classifier start: the LM encoder (ULMFiT) or random",
    )
    p.add_argument(
        "--resume-after-stage",
        type=int,
        help="classifier: continue from checkpoint classifier-stageN",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    p.add_argument(
        "--lm-seconds",
        type=float,
        help="fit the LM schedule (up to --lm-epochs) to this many seconds",
    )
    p.add_argument(
        "--clf-seconds",
        type=float,
        help="fit the classifier (its last stage gets what is left) to this many seconds",
    )
    p.add_argument(
        "--finish-by",
        type=float,
        help="all, distill: a wall-clock deadline (Unix seconds) for the whole run, saving "
        "included; the LM and classifier (or student) seconds are derived from what is left "
        "(training/budget.py)",
    )
    p.add_argument(
        "--init-lm",
        type=Path,
        help="start the LM from the fp16 weight chunks (lm-*.pt) in this directory",
    )
    p.add_argument(
        "--weights-only",
        action="store_true",
        help="write fp16 weight chunks to RUN/weights instead of learners (no spaCy needed); "
        "then `rebuild` where spaCy is",
    )
    args = p.parse_args(argv)
    if args.finish_by is not None and (args.lm_seconds, args.clf_seconds) != (None, None):
        p.error("--finish-by derives the LM and classifier seconds: give it or them, not both")

    from .data import resolve_data_dir
    from .run_files import STUDENT_STEM, missing_for_rebuild, weight_stems

    data_dir = resolve_data_dir(args.data, args.download)
    if args.stage == "rebuild":  # before anything slow: one message naming every missing file
        missing = missing_for_rebuild(args.out, data_dir)
        if missing:
            print(
                "python -m training rebuild: these files are missing, nothing was done:\n  "
                + "\n  ".join(missing)
                + "\n--out is the RESULTS folder a GPU run brought back (scripts/train-gpu.sh), "
                "copied here whole; --data is the pre-tokenized corpus it trained on.",
                file=sys.stderr,
            )
            return 2

    if args.stage == "soft-labels":  # onnxruntime and numpy: no torch, no fastai
        return _soft_labels(p, args, data_dir)

    import torch

    from .budget import TimeBudget, split_time_left
    from .corpus import TokenizedCorpus, build_corpus, is_corpus_dir
    from .data import load_imdb
    from .ulmfit import rebuild_learners, train_classifier, train_lm

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_config(
        args.config,
        lm_docs=args.lm_docs,
        clf_docs=args.clf_docs,
        lm_epochs=args.lm_epochs,
        clf_epochs=args.clf_epochs,
        clf_lr=args.clf_lr,
        lm_lr=args.lm_lr,
        clf_init=args.clf_init,
        pretrained=args.pretrained,
        backwards=args.backwards or None,
    )
    if args.stage == "tokenize":
        corpus = build_corpus(load_imdb(data_dir), cfg, args.out / "cache")
        corpus.save(args.out)
        print(
            json.dumps(
                {
                    "corpus": str(args.out),
                    "docs": len(corpus.offsets) - 1,
                    "tokens": int(corpus.offsets[-1]),
                    "vocab": len(corpus.vocab),
                }
            ),
            flush=True,
        )
        return 0
    if args.stage == "distill":
        return _distill(p, args, cfg, data_dir)
    data = TokenizedCorpus.load(data_dir) if is_corpus_dir(data_dir) else load_imdb(data_dir)
    if args.stage == "rebuild":
        if not isinstance(data, TokenizedCorpus):
            p.error("rebuild needs --data to be the pre-tokenized corpus the run trained on")
        if weight_stems(args.out) == (STUDENT_STEM,):
            from .distill import rebuild_student

            print(json.dumps({"rebuilt": rebuild_student(data, args.out)}), flush=True)
        else:
            print(json.dumps({"rebuilt": rebuild_learners(data, args.out)}), flush=True)
        return 0
    lm_seconds, clf_seconds = args.lm_seconds, args.clf_seconds
    clf_until = None  # with --finish-by the classifier trains until a fixed time: what the LM
    if args.finish_by is not None:  # leaves unused is the classifier's, an LM overrun is not
        left = args.finish_by - time.time()
        lm_seconds, clf_seconds = split_time_left(left)
        clf_until = TimeBudget.seconds(lm_seconds + clf_seconds)
        print(
            f"time limit: {left:.0f} s left after start-up -> LM {lm_seconds:.0f} s, "
            f"classifier {clf_seconds:.0f} s, {left - lm_seconds - clf_seconds:.0f} s kept to finish",
            file=sys.stderr,
            flush=True,
        )
    if args.stage in ("lm", "all"):
        budget = TimeBudget.seconds(lm_seconds) if lm_seconds is not None else None
        print(
            json.dumps(
                {"lm": train_lm(data, cfg, args.out, budget, args.weights_only, args.init_lm)},
                default=str,
            ),
            flush=True,
        )
    if args.stage in ("classifier", "all"):
        budget = clf_until or (TimeBudget.seconds(clf_seconds) if clf_seconds is not None else None)
        metrics = train_classifier(
            data, cfg, args.out, args.resume_after_stage, budget, args.weights_only
        )
        print(json.dumps({"classifier": metrics}, default=str), flush=True)
    return 0


def _soft_labels(p: argparse.ArgumentParser, args: argparse.Namespace, data_dir: Path) -> int:
    from .corpus import is_corpus_dir
    from .soft_labels import SoftLabelError
    from .teacher import compute_soft_labels

    if args.teacher is None or not is_corpus_dir(data_dir):
        p.error("soft-labels needs --teacher BUNDLE_DIR and --data CORPUS_DIR (a tokenized corpus)")
    try:
        soft = compute_soft_labels(args.teacher, data_dir, args.out, threads=args.threads or 1)
    except SoftLabelError as e:
        print(f"python -m training soft-labels: refused, nothing written: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"soft_labels": str(args.out), **soft.meta}), flush=True)
    return 0


def _distill(p: argparse.ArgumentParser, args: argparse.Namespace, cfg: Any, data_dir: Path) -> int:
    """Everything is checked (corpus, soft labels, their match) before the run directory exists."""
    from .budget import TimeBudget, split_time_left
    from .corpus import TokenizedCorpus, is_corpus_dir
    from .distill import MAX_EPOCHS, default_student_sizes, distill, student_config
    from .soft_labels import SoftLabelError, SoftLabels

    if args.soft_labels is None or not is_corpus_dir(data_dir):
        p.error("distill needs --soft-labels FILE and --data CORPUS_DIR (the corpus they score)")
    corpus = TokenizedCorpus.load(data_dir)
    try:
        soft = SoftLabels.load(args.soft_labels)
        soft.check_corpus(corpus, args.soft_labels)
    except SoftLabelError as e:
        print(f"python -m training distill: refused, nothing written: {e}", file=sys.stderr)
        return 2
    emb, hid, layers = default_student_sizes(cfg)
    student = student_config(
        cfg, args.student_emb or emb, args.student_hid or hid, args.student_layers or layers
    )
    budget = None
    if args.finish_by is not None:  # the whole usable time is the student's
        left = args.finish_by - time.time()
        budget = TimeBudget.seconds(sum(split_time_left(left)))
        print(
            f"time limit: {left:.0f} s left after start-up -> student {budget.left():.0f} s",
            file=sys.stderr,
            flush=True,
        )
    metrics = distill(
        corpus, soft, student, args.out, args.epochs or MAX_EPOCHS, budget, args.unsup_docs
    )
    print(json.dumps({"student": metrics}, default=str), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C, or scripts/train-gpu.sh's hard stop at its time limit
        print(
            "python -m training: interrupted; what was written so far stays in the run directory",
            file=sys.stderr,
        )
        sys.exit(130)
