"""Parity and speed of bundle.tokenizer against fastai on the IMDB test reviews.

    python -m benchmarks.tokenizer_parity [--limit N] [--split test.csv.gz]

Tokenizes every review with fastai's training pipeline (TokenizeWithRules + SpacyTokenizer, one
process) and with bundle.tokenizer, compares token lists and ids (vocab from fastai's
Numericalize on those same tokens), and times both. Also measures the server's cold-start cost
of the tokenizer in a fresh interpreter: import, `Tokenizer.from_file` on the realistic vocab,
first `encode`. Prints a summary and writes benchmarks/results/tokenizer_parity.json.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import gzip
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMDB = Path(os.environ.get("IMDB_DIR", REPO.parent / "shared" / "data" / "imdb"))
RESULTS = REPO / "benchmarks" / "results"
N_DIFFS = 5

_COLD_START = """
import json, sys, time
t0 = time.perf_counter()
from bundle.tokenizer import Tokenizer
t1 = time.perf_counter()
tok = Tokenizer.from_file(sys.argv[1])
t2 = time.perf_counter()
tok.encode("A first review, as the server's first request would send it. <br /><br />10/10!")
t3 = time.perf_counter()
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"spacy", "fastai", "fastcore", "torch", "thinc"})
print(json.dumps({"import_ms": (t1 - t0) * 1e3, "from_file_ms": (t2 - t1) * 1e3,
                  "first_encode_ms": (t3 - t2) * 1e3, "heavy_modules": heavy}))
"""


def read_reviews(path: Path, limit: int | None) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
        texts = [row["text"] for row in csv.DictReader(fh)]
    return texts[:limit] if limit else texts


def first_difference(ours: list[str], theirs: list[str]) -> dict[str, Any]:
    """Where two token lists first part ways, with a few tokens of context."""
    ops = [
        op
        for op in difflib.SequenceMatcher(a=theirs, b=ours, autojunk=False).get_opcodes()
        if op[0] != "equal"
    ]
    tag, i1, i2, j1, j2 = ops[0]
    return {
        "op": tag,
        "fastai": theirs[max(0, i1 - 3) : i2 + 3],
        "ours": ours[max(0, j1 - 3) : j2 + 3],
        "token_index": i1,
    }


def cold_start(tokenizer_json: Path, runs: int = 5) -> dict[str, Any]:
    """Median of `runs` fresh interpreters: the server pays this once per worker start."""
    samples = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", _COLD_START, str(tokenizer_json)],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        samples.append(json.loads(out.stdout))
    med = {
        k: sorted(s[k] for s in samples)[len(samples) // 2]
        for k in ("import_ms", "from_file_ms", "first_encode_ms")
    }
    return {
        **{k: round(v, 1) for k, v in med.items()},
        "runs": runs,
        "heavy_modules_imported": samples[0]["heavy_modules"],
    }


def run(split_path: Path, limit: int | None) -> dict[str, Any]:
    from fastai.text.all import Numericalize, SpacyTokenizer
    from fastai.text.core import TokenizeWithRules

    from bundle.tokenizer import Tokenizer
    from export.tokenizer_tables import write_tokenizer_json

    texts = read_reviews(split_path, limit)
    print(f"{len(texts)} reviews from {split_path}", flush=True)

    t0 = time.perf_counter()
    pipeline = TokenizeWithRules(SpacyTokenizer(lang="en"))
    reference = [list(doc) for doc in pipeline(texts)]
    fastai_s = time.perf_counter() - t0
    print(f"fastai: {fastai_s:.1f} s", flush=True)

    num = Numericalize(min_freq=3, max_vocab=60000)
    num.setup(reference)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.json"
        write_tokenizer_json(num.vocab, path)
        json_bytes = path.stat().st_size
        cold = cold_start(path)
        t0 = time.perf_counter()
        ours_tok = Tokenizer.from_file(path)
        load_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ours = [ours_tok.tokenize(t) for t in texts]
    ours_s = time.perf_counter() - t0
    print(f"ours:   {ours_s:.1f} s", flush=True)

    token_mismatches = [i for i, (a, b) in enumerate(zip(ours, reference, strict=False)) if a != b]
    id_mismatches = [
        i
        for i, (a, b) in enumerate(zip(ours, reference, strict=False))
        if ours_tok.tokens_to_ids(a) != [int(x) for x in num(b)]
    ]
    diffs = [
        {"doc": i, "text": texts[i][:300], **first_difference(ours[i], reference[i])}
        for i in token_mismatches[:N_DIFFS]
    ]
    n_tokens = sum(len(d) for d in reference)
    unk = sum(ours_tok.tokens_to_ids(d).count(ours_tok.unk_id) for d in ours)
    return {
        "split": split_path.name,
        "docs": len(texts),
        "tokens": n_tokens,
        "mismatched_docs": len(token_mismatches),
        "mismatched_id_docs": len(id_mismatches),
        "first_diffs": diffs,
        "fastai_s": round(fastai_s, 2),
        "ours_s": round(ours_s, 2),
        "fastai_docs_per_s": round(len(texts) / fastai_s, 1),
        "ours_docs_per_s": round(len(texts) / ours_s, 1),
        "speedup": round(fastai_s / ours_s, 2),
        "vocab_size": len(num.vocab),
        "unk_rate": round(unk / max(1, n_tokens), 5),
        "tokenizer_json_bytes": json_bytes,
        "load_in_process_ms": round(load_s * 1e3, 1),
        "cold_start": cold,
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="only the first N reviews")
    parser.add_argument("--split", default="test.csv.gz")
    parser.add_argument("--imdb-dir", type=Path, default=DEFAULT_IMDB)
    parser.add_argument("--out", type=Path, default=RESULTS / "tokenizer_parity.json")
    args = parser.parse_args(argv)
    split_path = args.imdb_dir / args.split
    if not split_path.exists():
        print(f"no IMDB data at {split_path} (set IMDB_DIR or --imdb-dir)", file=sys.stderr)
        return 2
    result = run(split_path, args.limit)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "first_diffs"}, indent=2))
    for diff in result["first_diffs"]:
        print(f"doc {diff['doc']}: fastai {diff['fastai']!r} vs ours {diff['ours']!r}")
    print(f"written to {args.out}")
    return 0 if result["mismatched_docs"] == 0 and result["mismatched_id_docs"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
