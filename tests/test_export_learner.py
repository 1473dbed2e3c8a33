"""`python -m export PKL`: learners made by plain fastai code (tests/user_learners.py, never
training/) -> bundles -> the real server over HTTP, answering as `learn.predict` does; and the
refusals (exit 2, one line, nothing written).

Learners and bundles are built once and cached under .cache/user-learners/, keyed by the hash
of the code that makes them (learners: user_learners.py; bundles: that plus export/ and bundle/).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from server_harness import RunningServer, start_server
from user_learners import (
    LABEL_COL,
    LM_VOCAB_SIZE,
    TAG_DELIM,
    TAGS_COL,
    TEXT_COL,
    build_all,
    build_refused,
)
from user_learners import corpus as make_corpus

from bundle import ClassifierModel, LanguageModel, load_bundle, load_manifest
from export.__main__ import main as export_main
from export.learner import load_learner_file, text_ids

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "user-learners"
NAMES = {
    "three_class": "odd-labels",
    "multi_label": "tags",
    "lm": "untied-lm",
    "backwards": "backwards-clf",
    "backwards_lm": "backwards-lm",
}
TEXTS = [
    "A wonderful film, the music was superb!",
    "The plot was average and the actor okay.",
    "Dreadful. A terrible, boring script with one explosion and a chase.",
    "THE WEDDING scene had a kiss and a joke... brilliant",
]


def _digest(*sources: str) -> str:
    h = hashlib.sha256()
    for source in sources:
        path = REPO / source
        for f in sorted(path.rglob("*.py") if path.is_dir() else [path]):
            h.update(str(f.relative_to(REPO)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _cached(key: str, build: Any) -> Path:
    target = CACHE / key
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "done").exists():
            shutil.rmtree(target, ignore_errors=True)
            work = CACHE / f".{key}.tmp"
            shutil.rmtree(work, ignore_errors=True)
            build(work)
            (work / "done").write_text("ok")
            work.rename(target)
            kind = key.split("-")[0]  # builds made by older code are never read again
            for stale in CACHE.glob(f"{kind}-*"):
                if stale != target:
                    shutil.rmtree(stale, ignore_errors=True)
    return target


def _export(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "export", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _build_bundles(pkls: Path, work: Path) -> None:
    """The CLI under test, as a user runs it; two of the four with held-out CSVs."""
    held_out = make_corpus(60, seed=1)
    held_out.to_csv(work.parent / f"{work.name}.held-out.csv", index=False)
    csv = work.parent / f"{work.name}.held-out.csv"
    extra: dict[str, list[str | Path]] = {
        "three_class": ["--eval-csv", csv, "--text-col", TEXT_COL, "--label-col", LABEL_COL],
        "multi_label": ["--eval-csv", csv, "--label-col", TAGS_COL, "--label-delim", TAG_DELIM],
    }
    for kind, name in NAMES.items():
        result = _export(
            pkls / f"{kind}.pkl", "--out", work, "--name", name, "--keep-fp32",
            *extra.get(kind, []),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    csv.unlink()


@pytest.fixture(scope="session")
def user_pkls() -> Path:
    return _cached("learners-" + _digest("tests/user_learners.py"), build_all)


@pytest.fixture(scope="session")
def user_bundles(user_pkls: Path) -> Path:
    key = "bundles-" + _digest("tests/user_learners.py", "export", "bundle")
    return _cached(key, lambda work: _build_bundles(user_pkls, work))


@pytest.fixture(scope="session")
def learners(user_pkls: Path) -> dict[str, Any]:
    return {kind: load_learner_file(user_pkls / f"{kind}.pkl") for kind in NAMES}


def _predict(learn: Any, text: str) -> tuple[Any, np.ndarray]:
    with learn.no_bar():
        decoded, _, probs = learn.predict(text)
    return decoded, probs.numpy()


def _bundle(user_bundles: Path, kind: str, fp32: bool = False) -> Any:
    directory = user_bundles / NAMES[kind]
    return load_bundle(directory, model_path=directory / "model.fp32.onnx" if fp32 else None)


# -- what the manifest records comes from the learner -------------------------------------------


def test_manifests_hold_the_learners_facts(user_bundles: Path, learners: dict[str, Any]) -> None:
    three = load_manifest(user_bundles / NAMES["three_class"]).raw
    assert three["labels"] == ["bad / awful", "so-so, ok?", "très bien ✓"]  # fastai's sorted vocab
    assert three["multi_label"] is False and three["direction"] == "forward"
    assert three["architecture"]["emb_size"] == 24 and three["architecture"]["max_len"] == 48
    assert three["architecture"]["bptt"] == 16 and three["architecture"]["layer_sizes"] == [40, 24]
    assert three["source"] == {"kind": "learner", "file": "three_class.pkl"}
    evaluation = three["metrics"]["evaluation"]
    assert evaluation["held_out"] is True and evaluation["documents"] == 60
    assert evaluation["accuracy_fp32"] - evaluation["accuracy_int8"] <= 0.005

    multi = load_manifest(user_bundles / NAMES["multi_label"]).raw
    assert multi["multi_label"] is True and multi["threshold"] == pytest.approx(0.4)
    assert multi["labels"] == ["action", "comédie", "romance"]
    assert multi["metrics"]["evaluation"]["metric"] == "accuracy_multi"

    lm = load_manifest(user_bundles / NAMES["lm"]).raw
    assert lm["task"] == "generate" and lm["architecture"]["tied_decoder"] is False
    assert lm["architecture"]["layer_sizes"] == [44, 44, 20] and lm["architecture"]["bptt"] == 20
    assert lm["architecture"]["vocab_size"] == LM_VOCAB_SIZE == len(learners["lm"].dls.vocab)
    assert lm["metrics"]["evaluation"]["held_out"] is False
    assert "no held-out evaluation" in lm["metrics"]["evaluation"]["data"]
    assert lm["metrics"]["quantization"]["perplexity_ratio_int8_vs_fp32"] <= 1.02

    backwards = load_manifest(user_bundles / NAMES["backwards"]).raw
    backwards_lm = load_manifest(user_bundles / NAMES["backwards_lm"]).raw
    assert backwards["direction"] == backwards_lm["direction"] == "backward"
    assert backwards_lm["architecture"]["tied_decoder"] is True  # fastai's default
    for raw in (three, multi, lm, backwards, backwards_lm):
        assert raw["metrics"]["parity"]["max_abs_diff_vs_torch"] <= 1e-4
        assert raw["metrics"]["tokenizer"]["mismatches"] == 0


# -- bundle/ directly: fp32 to 1e-4, int8 within the measured bound -----------------------------


@pytest.mark.parametrize("kind", ["three_class", "multi_label", "backwards"])
def test_classifier_bundles_agree_with_learn_predict(
    user_bundles: Path, learners: dict[str, Any], kind: str
) -> None:
    fp32, int8 = _bundle(user_bundles, kind, fp32=True), _bundle(user_bundles, kind)
    assert isinstance(fp32, ClassifierModel) and isinstance(int8, ClassifierModel)
    bound = int8.manifest.metrics["quantization"]["max_abs_diff_probabilities_int8_vs_fp32"]
    for text in TEXTS:
        decoded, expected = _predict(learners[kind], text)
        got32, got8 = fp32.predict_texts([text])[0], int8.predict_texts([text])[0]
        assert np.abs(got32 - expected).max() <= 1e-4, text
        assert np.abs(got8 - expected).max() <= bound + 1e-4, text
        labels = [str(x) for x in decoded] if int8.multi_label else [str(decoded)]
        assert int8.chosen_labels(got8) == labels == fp32.chosen_labels(got32), text


def _greedy_torch(learn: Any, ids: list[int], steps: int) -> list[int]:
    """Greedy continuation by the fastai model (xxunk never chosen, as predict's no_unk)."""
    model, unk = learn.model.eval(), learn.dls.vocab.index("xxunk")
    out = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            model.reset()
            logits = model(torch.tensor([out]))[0][0, -1]
            logits[unk] = -float("inf")
            out.append(int(logits.argmax()))
    return out[len(ids) :]


def _greedy_bundle(model: LanguageModel, ids: list[int], steps: int) -> list[int]:
    logits, state = model.step(np.array([ids]), model.initial_state(1))
    out = []
    for _ in range(steps):
        logits[0, model.unk_id] = -np.inf
        out.append(int(logits[0].argmax()))
        logits, state = model.step(np.array([[out[-1]]]), state)
    return out


@pytest.mark.parametrize("kind", ["lm", "backwards_lm"])
def test_lm_bundles_match_the_fastai_model(
    user_bundles: Path, learners: dict[str, Any], kind: str
) -> None:
    """The untied 60k-vocabulary LM, and a backward LM fed reversed ids (its caller's job)."""
    fp32 = _bundle(user_bundles, kind, fp32=True)
    assert isinstance(fp32, LanguageModel) and fp32.backwards == (kind == "backwards_lm")
    learn = learners[kind]
    model = learn.model.eval()
    for text in TEXTS:
        ids = text_ids(learn, [text])[0]  # reversed by the learner's own pipeline when backward
        encoded = fp32.tokenizer.encode(text)
        assert (encoded[::-1] if fp32.backwards else encoded) == ids
        model.reset()
        with torch.no_grad():
            expected = model(torch.tensor([ids]))[0][0, -1].numpy()
        logits, _ = fp32.step(np.array([ids]), fp32.initial_state(1))
        assert np.abs(logits[0] - expected).max() <= 1e-4
        assert _greedy_bundle(fp32, ids, 6) == _greedy_torch(learn, ids, 6)


# -- over HTTP: python -m server (gunicorn) with MODEL_DIR holding the user's bundles ------------


@pytest.fixture(scope="module")
def servers(
    user_bundles: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, RunningServer]]:
    """One server per classifier bundle; the LM shares the three-class one (one per task)."""
    groups = {
        "three_class": ("three_class", "lm"),
        "multi_label": ("multi_label",),
        "backwards": ("backwards",),
    }
    running: dict[str, RunningServer] = {}
    try:
        for key, kinds in groups.items():
            model_dir = tmp_path_factory.mktemp(f"models-{key}")
            for kind in kinds:
                shutil.copytree(user_bundles / NAMES[kind], model_dir / NAMES[kind])
            running[key] = start_server(model_dir, tmp_path_factory.mktemp(f"logs-{key}"))
        yield running
    finally:
        for server in running.values():
            server.stop()


@pytest.mark.parametrize("kind", ["three_class", "backwards"])
def test_http_classify_answers_as_learn_predict(
    servers: dict[str, RunningServer], learners: dict[str, Any], user_bundles: Path, kind: str
) -> None:
    manifest = load_manifest(user_bundles / NAMES[kind])
    bound = manifest.metrics["quantization"]["max_abs_diff_probabilities_int8_vs_fp32"]
    for text in TEXTS:
        response = servers[kind].post("/classify", json={"text": text})
        assert response.status_code == 200, response.text
        body = response.json()
        decoded, expected = _predict(learners[kind], text)
        assert body["label"] == str(decoded)
        got = np.array([body["probabilities"][label] for label in manifest.labels])
        assert np.abs(got - expected).max() <= bound + 1e-4 + 1e-6  # + the answer's rounding
        assert body["model"] == manifest.model_id


def test_http_multi_label_answers_as_learn_predict(
    servers: dict[str, RunningServer], learners: dict[str, Any], user_bundles: Path
) -> None:
    """Contract with the server: {"labels": [...], "probabilities": {...}, "threshold": t}."""
    manifest = load_manifest(user_bundles / NAMES["multi_label"])
    bound = manifest.metrics["quantization"]["max_abs_diff_probabilities_int8_vs_fp32"]
    for text in TEXTS:
        response = servers["multi_label"].post("/classify", json={"text": text})
        assert response.status_code == 200, response.text
        body = response.json()
        decoded, expected = _predict(learners["multi_label"], text)
        assert body["labels"] == [str(x) for x in decoded]
        assert body["threshold"] == pytest.approx(0.4)
        got = np.array([body["probabilities"][label] for label in manifest.labels])
        assert np.abs(got - expected).max() <= bound + 1e-4 + 1e-6


def _letters(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.lower())


def test_http_generate_greedy_continues_as_the_fastai_model(
    servers: dict[str, RunningServer], learners: dict[str, Any], user_bundles: Path
) -> None:
    """temperature 0 is greedy (fastai's predict with no_unk, always the most likely token): the
    words the server adds are those the fastai model picks greedily for the same prompt."""
    int8 = _bundle(user_bundles, "lm")
    assert isinstance(int8, LanguageModel)
    for prompt in ("The wonderful film was", "A joke and a kiss"):
        response = servers["three_class"].post(
            "/generate", json={"prompt": prompt, "n_words": 5, "temperature": 0}
        )
        assert response.status_code == 200, response.text
        sample = response.json()["samples"][0]
        ids = text_ids(learners["lm"], [prompt])[0]
        expected = int8.tokenizer.decode(_greedy_torch(learners["lm"], ids, 5))
        assert _letters(sample).startswith(_letters(prompt))
        assert _letters(sample)[len(_letters(prompt)) :] == _letters(expected), (sample, expected)


# -- refusals: exit 2, one line, nothing written ------------------------------------------------


@pytest.fixture(scope="session")
def refused_pkls() -> Path:
    return _cached("refused-" + _digest("tests/user_learners.py"), build_refused)


def _refusal(tmp_path: Path, pkl: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    out = tmp_path / "models"
    out.mkdir()
    (out / "keep.txt").write_text("the user's own file")
    before = sorted(p.name for p in out.rglob("*"))
    assert export_main([str(pkl), "--out", str(out), *extra]) == 2
    assert sorted(p.name for p in out.rglob("*")) == before
    assert export_main([str(pkl), "--out", str(tmp_path / "new"), *extra]) == 2
    assert not (tmp_path / "new").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0] == err[1], err  # one line per attempt
    assert "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("tabular", "not a text learner"),
        ("custom_model", "unsupported model BagOfWords"),
        ("other_tokenizer", "unsupported tokenizer BaseTokenizer"),
    ],
)
def test_unsupported_learners_are_refused(
    refused_pkls: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, says: str
) -> None:
    assert says in _refusal(tmp_path, refused_pkls / f"{kind}.pkl", capsys)


@pytest.mark.parametrize("damage", ["missing", "not_pickle", "truncated"])
def test_bad_files_are_refused(
    user_pkls: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    pkl = tmp_path / "model.pkl"
    if damage == "not_pickle":
        pkl.write_text("text,label\nnot a learner,pos\n")
    elif damage == "truncated":
        data = (user_pkls / "three_class.pkl").read_bytes()
        pkl.write_bytes(data[: len(data) // 2])
    line = _refusal(tmp_path, pkl, capsys)
    assert str(pkl) in line
    assert ("no such file" in line) if damage == "missing" else ("not a fastai learner" in line)


def test_refusal_from_the_real_command_is_one_line(tmp_path: Path) -> None:
    """The process itself: exit status 2, one stderr line, no traceback, no stdout."""
    pkl = tmp_path / "notes.pkl"
    pkl.write_bytes(b"\x00\x01 not a pickle")
    result = _export(pkl, "--out", tmp_path / "models")
    assert result.returncode == 2
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "not a fastai learner" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "models").exists()


def test_eval_csv_that_does_not_fit_is_refused(
    user_pkls: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "held_out.csv"
    csv.write_text('text,label\n"A superb film",excellent\n')
    line = _refusal(
        tmp_path,
        user_pkls / "three_class.pkl",
        capsys,
        "--eval-csv",
        str(csv),
        "--label-col",
        "label",
    )
    assert "'excellent'" in line and "does not know" in line
    assert json.dumps("bad / awful")[1:-1] in line
