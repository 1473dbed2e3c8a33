"""`python -m export ensemble`: a forward and a backward classifier made by plain fastai code
(tests/user_learners.py: same corpus, same split, so one vocabulary) -> one ensemble bundle that
answers with the mean of its members' probabilities, through bundle/ and over real HTTP; and
the refusals (exit 2, one line, nothing written).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from server_harness import RunningServer, start_server
from test_export_learner import NAMES, TEXTS, learners, user_bundles, user_pkls  # noqa: F401
from user_learners import LABEL_COL, TEXT_COL
from user_learners import corpus as make_corpus

from bundle import BundleError, ClassifierModel, file_digest, load_bundle
from bundle.ensemble import EnsembleClassifier

REPO = Path(__file__).resolve().parent.parent
ENSEMBLE = "fwd-bwd"
FORWARD, BACKWARD = NAMES["three_class"], NAMES["backwards"]


def _export(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "export", "ensemble", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def ensemble_dir(user_bundles: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    work = tmp_path_factory.mktemp("ensemble")
    csv = work / "held-out.csv"
    make_corpus(60, seed=1).to_csv(csv, index=False)
    out = work / "models"
    members = [user_bundles / FORWARD, user_bundles / BACKWARD]
    result = _export(
        *members, "--out", out, "--name", ENSEMBLE, "--eval-csv", csv,
        "--text-col", TEXT_COL, "--label-col", LABEL_COL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["bundle"] == str(out / ENSEMBLE)
    return out / ENSEMBLE


def _members(user_bundles: Path) -> list[ClassifierModel]:  # noqa: F811
    models = [load_bundle(user_bundles / name) for name in (FORWARD, BACKWARD)]
    assert all(isinstance(m, ClassifierModel) for m in models)
    return models  # type: ignore[return-value]


def test_members_share_one_vocabulary(user_bundles: Path) -> None:  # noqa: F811
    forward, backward = _members(user_bundles)
    assert not forward.backwards and backward.backwards
    assert file_digest(forward.manifest.tokenizer_path) == file_digest(
        backward.manifest.tokenizer_path
    )


def test_ensemble_answers_the_mean_of_its_members(
    ensemble_dir: Path,
    user_bundles: Path,  # noqa: F811
    learners: dict[str, Any],  # noqa: F811
) -> None:
    ensemble = load_bundle(ensemble_dir)
    assert isinstance(ensemble, EnsembleClassifier)
    forward, backward = _members(user_bundles)
    assert ensemble.labels == forward.labels and not ensemble.backwards
    texts = [*TEXTS, "wonderful", "A " + "dreadful boring plot " * 30]
    expected = (forward.predict_texts(texts) + backward.predict_texts(texts)) / 2
    got = ensemble.predict_texts(texts)
    assert np.abs(got - expected).max() <= 1e-6
    assert not np.allclose(forward.predict_texts(texts), backward.predict_texts(texts), atol=1e-3)
    # and against fastai itself: the mean of both learners' learn.predict, within int8 bounds
    bound = max(
        m.manifest.metrics["quantization"]["max_abs_diff_probabilities_int8_vs_fp32"]
        for m in (forward, backward)
    )
    for i, text in enumerate(TEXTS):
        with learners["three_class"].no_bar(), learners["backwards"].no_bar():
            fwd = learners["three_class"].predict(text)[2].numpy()
            bwd = learners["backwards"].predict(text)[2].numpy()
        assert np.abs(got[i] - (fwd + bwd) / 2).max() <= bound + 1e-4, text
    ensemble.warm_up()


def test_manifest_records_members_figures_and_latency(ensemble_dir: Path) -> None:
    raw = json.loads((ensemble_dir / "manifest.json").read_text())
    members = raw["ensemble"]["members"]
    assert [(m["name"], m["direction"]) for m in members] == [
        (FORWARD, "forward"),
        (BACKWARD, "backward"),
    ]
    for m in members:
        assert (ensemble_dir / m["dir"] / "manifest.json").is_file()
    ids = [f"{m['name']}@{m['version']}" for m in members]
    evaluation = raw["metrics"]["evaluation"]
    assert evaluation["documents"] == 60 and evaluation["held_out"] is True
    assert list(evaluation["members_accuracy_int8"]) == ids
    assert 0.0 <= evaluation["accuracy_int8"] <= 1.0
    latency = raw["metrics"]["latency"]
    assert latency["first_member"] == ids[0] and latency["threads"] == 1
    assert latency["cost_vs_first_member"] == pytest.approx(
        latency["ms_per_review_median"] / latency["first_member_ms_per_review_median"]
    )
    assert latency["cost_vs_first_member"] > 1.0  # two sessions cost more than one


def test_a_corrupt_member_is_refused_at_load(ensemble_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / ENSEMBLE
    shutil.copytree(ensemble_dir, copy)
    member = copy / "members" / f"1-{BACKWARD}"
    model = member / json.loads((member / "manifest.json").read_text())["model"]["file"]
    model.write_bytes(model.read_bytes()[:-10])
    with pytest.raises(BundleError, match=BACKWARD):
        load_bundle(copy)


def test_the_deploy_gate_verifies_an_ensemble_and_refuses_a_corrupt_member(
    ensemble_dir: Path, tmp_path: Path
) -> None:
    """`python -m bundle.verify` (the image build and Cloud Build gate) reads ensembles too."""
    gate = [sys.executable, "-m", "bundle.verify", str(ensemble_dir)]
    ok = subprocess.run(gate, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith(f"ok    {ENSEMBLE}@")
    copy = tmp_path / ENSEMBLE
    shutil.copytree(ensemble_dir, copy)
    member = copy / "members" / f"1-{BACKWARD}"
    model = member / json.loads((member / "manifest.json").read_text())["model"]["file"]
    model.write_bytes(model.read_bytes()[:-10])
    bad = subprocess.run([*gate[:-1], str(copy)], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and BACKWARD in bad.stdout + bad.stderr


@pytest.fixture(scope="module")
def server(ensemble_dir: Path, user_bundles: Path, tmp_path_factory: Any) -> Iterator[Any]:  # noqa: F811
    model_dir = tmp_path_factory.mktemp("serve")
    shutil.copytree(ensemble_dir, model_dir / ENSEMBLE)
    shutil.copytree(user_bundles / FORWARD, model_dir / FORWARD)
    running = start_server(model_dir, tmp_path_factory.mktemp("logs"), DEFAULT_CLASSIFIER=FORWARD)
    yield running
    running.stop()


def test_http_classify_by_name_answers_the_mean(
    server: RunningServer,
    user_bundles: Path,  # noqa: F811
) -> None:
    forward, backward = _members(user_bundles)
    for text in TEXTS:
        response = server.post("/classify", json={"text": text, "model": ENSEMBLE})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"].startswith(f"{ENSEMBLE}@")
        expected = (forward.predict_texts([text])[0] + backward.predict_texts([text])[0]) / 2
        got = np.array([body["probabilities"][label] for label in forward.labels])
        assert np.abs(got - expected).max() <= 1e-6 + 1e-6  # + the answer's rounding
        assert body["label"] == forward.labels[int(expected.argmax())]
    listed = {m["name"]: m for m in server.get("/models").json()["models"]}
    assert set(listed) == {ENSEMBLE, FORWARD}  # members inside the ensemble are not served
    assert listed[ENSEMBLE]["metrics"]["latency"]["first_member"].startswith(f"{FORWARD}@")


def _tampered_vocab(source: Path, into: Path) -> Path:
    """The backward member with two vocabulary entries swapped, its hash updated: a bundle that
    verifies on its own but reads other ids than the forward member."""
    target = into / "swapped-vocab"
    shutil.copytree(source, target)
    tables = json.loads((target / "tokenizer.json").read_text())
    vocab = tables["vocab"]
    i, j = len(vocab) - 1, len(vocab) - 2
    vocab[i], vocab[j] = vocab[j], vocab[i]
    (target / "tokenizer.json").write_text(json.dumps(tables))
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["name"] = "swapped-vocab"
    manifest["files"]["tokenizer.json"] = {
        "sha256": file_digest(target / "tokenizer.json"),
        "bytes": (target / "tokenizer.json").stat().st_size,
    }
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


@pytest.mark.parametrize("other", ["tags", "untied-lm", "swapped-vocab", "same-twice"])
def test_mismatched_members_are_refused(
    user_bundles: Path,  # noqa: F811
    tmp_path: Path,
    other: str,
) -> None:
    if other == "swapped-vocab":
        second = _tampered_vocab(user_bundles / BACKWARD, tmp_path)
        assert isinstance(load_bundle(second), ClassifierModel)  # fine alone
    elif other == "same-twice":
        second = user_bundles / FORWARD
    else:
        second = user_bundles / other
    out = tmp_path / "models"
    result = _export(user_bundles / FORWARD, second, "--out", out, "--name", ENSEMBLE)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m export ensemble: refused:"), lines
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not out.exists()
