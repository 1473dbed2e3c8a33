"""Shadow mode: a candidate bundle sees /classify traffic after the answer is sent; its agreement
and latency are metrics; the primary's answers do not change and slow down by a bounded amount."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from server_harness import (
    REPO_ROOT,
    RunningServer,
    free_port,
    parse,
    server_env,
    start_server,
    value,
)

from server.observability.metrics import ServerMetrics
from server.observability.shadow import ShadowRunner, load_candidate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import review

CANDIDATE = "imdb-sentiment@candidate"


def make_candidate(
    tiny_bundles: Path, target: Path, version: str, swap_labels: bool = False
) -> Path:
    """A copy of the tiny classifier under another version (the manifest is not hashed)."""
    shutil.copytree(tiny_bundles / "imdb-sentiment", target)
    manifest_path = target / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["version"] = version
    if swap_labels:  # same weights, columns named the other way round: it always disagrees
        manifest["labels"] = list(reversed(manifest["labels"]))
    manifest_path.write_text(json.dumps(manifest))
    return target


def wait_for_jobs(server: RunningServer, candidate: str, count: int) -> dict:
    deadline = time.monotonic() + 60
    while True:
        _, samples = parse(server.get("/metrics").text)
        done = sum(
            value(samples, "shadow_jobs_total", candidate=candidate, outcome=o)
            for o in ("compared", "dropped", "failed")
        )
        if done >= count:
            return samples
        assert time.monotonic() < deadline, f"{done} of {count} shadow jobs done"
        time.sleep(0.05)


def test_identical_candidate_agrees_and_primary_answers_do_not_change(
    tiny_bundles: Path, tmp_path: Path
) -> None:
    candidate = make_candidate(tiny_bundles, tmp_path / "candidate", "candidate")
    texts = [review(__import__("random").Random(i), positive=i % 2 == 0) for i in range(30)]
    plain = start_server(tiny_bundles, tmp_path / "plain")
    shadowed = start_server(
        tiny_bundles,
        tmp_path / "shadowed",
        SHADOW_MODEL_DIR=str(candidate),
        SHADOW_FRACTION="1",
        SHADOW_QUEUE="1000",
    )
    try:
        for text in texts:
            a = plain.post("/classify", json={"text": text}).json()
            b = shadowed.post("/classify", json={"text": text}).json()
            assert a == b  # same label, probabilities and model id: the candidate is invisible
        batch = shadowed.post("/classify", json={"texts": texts[:5]})
        assert batch.status_code == 200
        samples = wait_for_jobs(shadowed, CANDIDATE, len(texts) + 1)
        assert (
            value(samples, "shadow_jobs_total", candidate=CANDIDATE, outcome="compared")
            == len(texts) + 1
        )
        assert (
            value(samples, "shadow_texts_total", candidate=CANDIDATE, agreement="agree")
            == len(texts) + 5
        )
        assert value(samples, "shadow_texts_total", candidate=CANDIDATE, agreement="disagree") == 0
        assert value(samples, "shadow_agreement_ratio", candidate=CANDIDATE) == 1.0
        # Same int8 graph, same batches: probabilities equal to float precision.
        assert (
            value(samples, "shadow_probability_diff_bucket", candidate=CANDIDATE, le="0.001")
            == len(texts) + 5
        )
        assert (
            value(samples, "shadow_inference_seconds_count", candidate=CANDIDATE) == len(texts) + 1
        )
        entry = next(m for m in shadowed.get("/models").json()["models"] if m["task"] == "classify")
        assert entry["shadow"]["candidate"] == CANDIDATE
        assert entry["shadow"]["agreement"] == 1.0
        assert entry["shadow"]["jobs"]["compared"] == len(texts) + 1
        # The primary's own metrics count only primary calls, not the candidate's.
        assert (
            value(samples, "model_batch_size_count", model="imdb-sentiment@tiny-test")
            == len(texts) + 1
        )
    finally:
        assert plain.stop() == 0
        assert shadowed.stop() == 0


def test_candidate_is_compared_as_it_would_be_served_with_its_short_input_calibration(
    tiny_bundles: Path, tmp_path: Path
) -> None:
    """Primary and candidate: the same weights and the same calibration (every input counts as
    short), so they agree to float precision only if the candidate's calibration is applied too."""
    calibration = {"max_tokens": 100_000, "scale": 0.4, "log_bias": [0.9, -0.9]}
    primary = tmp_path / "primary"
    shutil.copytree(tiny_bundles, primary)
    manifest_path = primary / "imdb-sentiment" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["short_input"] = calibration
    manifest_path.write_text(json.dumps(manifest))
    candidate = make_candidate(primary, tmp_path / "candidate", "candidate")
    texts = [review(__import__("random").Random(i), positive=i % 2 == 0) for i in range(8)]
    server = start_server(
        primary, tmp_path / "logs", SHADOW_MODEL_DIR=str(candidate), SHADOW_FRACTION="1"
    )
    try:
        for text in texts:
            assert server.post("/classify", json={"text": text}).status_code == 200
        samples = wait_for_jobs(server, CANDIDATE, len(texts))
        assert value(
            samples, "shadow_probability_diff_bucket", candidate=CANDIDATE, le="0.001"
        ) == len(texts)
    finally:
        assert server.stop() == 0


def test_disagreement_is_measured_by_label_name(tiny_bundles: Path, tmp_path: Path) -> None:
    candidate = make_candidate(tiny_bundles, tmp_path / "swapped", "swapped", swap_labels=True)
    server = start_server(
        tiny_bundles, tmp_path, SHADOW_MODEL_DIR=str(candidate.parent), SHADOW_FRACTION="1"
    )
    try:
        for text in ("The plot was wonderful.", "The acting was dreadful.", "It was fine."):
            assert server.post("/classify", json={"text": text}).status_code == 200
        v2 = server.post(
            "/v2/models/imdb-sentiment/infer",
            json={
                "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["Superb."]}]
            },
        )
        assert v2.status_code == 200  # the v2 endpoint feeds the shadow too
        samples = wait_for_jobs(server, "imdb-sentiment@swapped", 4)
        assert (
            value(
                samples,
                "shadow_texts_total",
                candidate="imdb-sentiment@swapped",
                agreement="disagree",
            )
            == 4
        )
        assert value(samples, "shadow_agreement_ratio", candidate="imdb-sentiment@swapped") == 0
    finally:
        assert server.stop() == 0


def test_fraction_samples_requests(tiny_bundles: Path, tmp_path: Path) -> None:
    candidate = make_candidate(tiny_bundles, tmp_path / "candidate", "candidate")
    server = start_server(
        tiny_bundles,
        tmp_path,
        SHADOW_MODEL_DIR=str(candidate),
        SHADOW_FRACTION="0.25",
        SHADOW_QUEUE="1000",
    )
    try:
        for _ in range(120):
            assert server.post("/classify", json={"text": "The plot was fine."}).status_code == 200
        _, samples = parse(server.get("/metrics").text)
        sampled = value(samples, "shadow_sampled_total", candidate=CANDIDATE)
        assert 10 <= sampled <= 50, sampled  # binomial(120, 0.25): mean 30, sd 4.7
        samples = wait_for_jobs(server, CANDIDATE, int(sampled))
        assert (
            value(samples, "shadow_jobs_total", candidate=CANDIDATE, outcome="compared") == sampled
        )
        assert value(samples, "shadow_fraction", candidate=CANDIDATE) == 0.25
    finally:
        assert server.stop() == 0


def test_full_queue_drops_jobs_instead_of_growing(tiny_bundles: Path, tmp_path: Path) -> None:
    """Real candidate, in process: 50 jobs offered at once to a queue of one."""
    candidate = load_candidate(make_candidate(tiny_bundles, tmp_path / "c", "candidate"), 1, 1)
    runner = ShadowRunner(candidate, fraction=1.0, queue_size=1, metrics=ServerMetrics())
    probabilities = np.array([[0.3, 0.7]], dtype=np.float32)
    accepted = sum(
        runner.submit(["A fine film."], ["neg", "pos"], probabilities) for _ in range(50)
    )
    assert runner.wait_idle(30)
    summary = runner.summary()
    assert summary["jobs"]["compared"] == accepted
    assert summary["jobs"]["dropped"] == 50 - accepted > 0
    assert summary["queued"] == 0


def p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def test_primary_slowdown_is_bounded(tiny_bundles: Path, tmp_path: Path) -> None:
    """Interleaved requests to a server without and one with a shadow on every request (the
    worst case, SHADOW_FRACTION=1): the primary's latency may grow only within the bound."""
    candidate = make_candidate(tiny_bundles, tmp_path / "candidate", "candidate")
    plain = start_server(tiny_bundles, tmp_path / "plain")
    shadowed = start_server(
        tiny_bundles,
        tmp_path / "shadowed",
        SHADOW_MODEL_DIR=str(candidate),
        SHADOW_FRACTION="1",
        SHADOW_QUEUE="1000",
    )
    rng = __import__("random").Random(7)
    texts = [" ".join(review(rng, positive=i % 2 == 0) for _ in range(3)) for i in range(40)]
    times: dict[str, list[float]] = {"plain": [], "shadow": []}
    try:
        for server in (plain, shadowed):  # warm both paths
            for text in texts[:5]:
                server.post("/classify", json={"text": text})
        for _ in range(3):
            for text in texts:
                for name, server in (("plain", plain), ("shadow", shadowed)):
                    started = time.perf_counter()
                    assert server.post("/classify", json={"text": text}).status_code == 200
                    times[name].append(time.perf_counter() - started)
        wait_for_jobs(shadowed, CANDIDATE, 5 + 3 * len(texts))
    finally:
        assert plain.stop() == 0
        assert shadowed.stop() == 0
    figures = {
        name: {
            "p50_ms": round(1000 * p(t, 50), 2),
            "p95_ms": round(1000 * p(t, 95), 2),
            "mean_ms": round(1000 * statistics.fmean(t), 2),
        }
        for name, t in times.items()
    }
    print(f"\nshadow slowdown ({len(times['plain'])} interleaved requests each): {figures}")
    # The bound (docs/monitoring.md): median at most 25% + 2 ms above the plain server's.
    assert p(times["shadow"], 50) <= 1.25 * p(times["plain"], 50) + 0.002, figures


# ------------------------------------------------------------------------ refusing to start
def run_to_exit(model_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=server_env(model_dir, free_port(), **env),
    )


@pytest.mark.parametrize("case", ["language model", "empty folder", "tampered"])
def test_bad_candidate_refuses_to_start(tiny_bundles: Path, tmp_path: Path, case: str) -> None:
    if case == "language model":
        shadow, expected = tiny_bundles / "imdb-lm", "must be a classify bundle"
    elif case == "empty folder":
        shadow, expected = tmp_path / "empty", "exactly one"
        shadow.mkdir()
    else:
        shadow = make_candidate(tiny_bundles, tmp_path / "tampered", "tampered")
        model = shadow / json.loads((shadow / "manifest.json").read_text())["model"]["file"]
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0xFF
        model.write_bytes(bytes(data))
        expected = "sha256"
    result = run_to_exit(tiny_bundles, SHADOW_MODEL_DIR=str(shadow))
    assert result.returncode == 3, result.stderr[-2000:]
    assert expected in result.stderr and "Traceback" not in result.stderr
