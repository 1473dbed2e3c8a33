"""Build the real Dockerfile with podman and run the image as Cloud Run would (slow).

The machine has no Docker engine and no registry, so `FROM python:3.11-slim` resolves to a
local stand-in made by scripts/make-base-image.sh (cached between runs). The container gets no
network; it is probed from inside with the image's own Python. What must hold:
  - the build context and the image carry only the runtime (no training/export/tests, no torch),
    the server runs as a non-root user, no compiler or pip cache is left;
  - with a non-default PORT the server becomes ready (/readyz) and answers /classify and
    /generate with the bundles baked in;
  - SIGTERM (`podman stop -t 10`) ends it gracefully: exit code 0, before the 10 s kill, with
    no worker crash in the logs.
Build time, image size, time to ready and memory are printed and recorded as junit properties.

Skips (with the reason) when podman is missing (scripts/install-container-tools.sh installs it)
or when not root (the stand-in base needs debootstrap/chroot).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from server_harness import bundle_copy

from benchmarks.image import podman_environment

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
IMAGE = "localhost/fastai-onnx-serve:test"
PORT = 9090  # not the default: proves the image honours PORT
SECOND_CLASSIFIER = "sentiment-copy"
# Copied into the build context beside the runtime files, so .dockerignore has something to keep out.
CONTEXT_ITEMS = (
    "Dockerfile",
    ".dockerignore",
    "pyproject.toml",
    "serve-constraints.txt",
    "scripts",
    "bundle",
    "server",
    "training",
    "export",
    "tests",
)
RUNTIME_TOP_LEVEL = {"bundle", "models", "server"}
HEAVY_PACKAGES = ("torch", "torchvision", "fastai", "fastcore", "spacy", "pandas", "onnx", "sympy")

# Runs inside the container: one HTTP request to the server's loopback, result as JSON.
PROBE = """
import json, sys, urllib.error, urllib.request
url, body = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
request = urllib.request.Request(url, data=body.encode() if body else None,
                                 headers={"Content-Type": "application/json"} if body else {})
try:
    with urllib.request.urlopen(request, timeout=30) as response:
        status, data = response.status, response.read()
except urllib.error.HTTPError as error:
    status, data = error.code, error.read()
except OSError as error:
    status, data = 0, str(error).encode()
print(json.dumps({"status": status, "body": data.decode("utf-8", "replace")}))
"""
# Runs inside the container: proportional set size of all processes (master + worker share pages).
PSS = """
import glob
total = 0
for path in glob.glob("/proc/[0-9]*/smaps_rollup"):
    try:
        total += sum(int(line.split()[1]) for line in open(path) if line.startswith("Pss:"))
    except OSError:
        pass
print(total)
"""
INSPECT = f"""
import importlib.util, json, os, shutil
print(json.dumps({{
    "uid": os.getuid(),
    "app": sorted(os.listdir("/app")),
    "heavy": [m for m in {HEAVY_PACKAGES!r} if importlib.util.find_spec(m)],
    "compilers": [c for c in ("gcc", "cc", "g++", "make") if shutil.which(c)],
    "pip_cache": [p for p in ("/root/.cache/pip", "/tmp/requirements-serve.txt") if os.path.exists(p)],
    "app_writable": os.access("/app/models", os.W_OK),
    "pyc": sum(f.endswith(".pyc") for _, _, fs in os.walk("/app/server") for f in fs),
}}))
"""


_METRICS = pytest.StashKey[dict]()


class Podman:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman", *args], capture_output=True, text=True, env=self.env, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args[:3])} ... failed ({result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result


def _holds_both_bundles(path: Path) -> bool:
    return all((path / name / "manifest.json").is_file() for name in ("imdb-lm", "imdb-sentiment"))


def bundle_source(request: pytest.FixtureRequest) -> Path:
    """$DEPLOY_TEST_BUNDLES if set (e.g. real exported bundles), else tiny_bundles from
    conftest.py, else the repo's models/ when it holds both bundles."""
    named = os.environ.get("DEPLOY_TEST_BUNDLES")
    if named:
        assert _holds_both_bundles(Path(named)), (
            f"DEPLOY_TEST_BUNDLES={named} lacks imdb-lm/ + imdb-sentiment/"
        )
        return Path(named)
    try:
        return Path(request.getfixturevalue("tiny_bundles"))
    except pytest.FixtureLookupError:
        pass
    if _holds_both_bundles(REPO / "models"):
        return REPO / "models"
    pytest.skip(
        "no bundles to bake in: no tiny_bundles fixture and models/ holds no imdb-lm + imdb-sentiment"
    )


@pytest.fixture(scope="module")
def podman() -> Podman:
    if shutil.which("podman") is None:
        pytest.skip("podman not installed (run scripts/install-container-tools.sh)")
    if os.geteuid() != 0:
        pytest.skip("needs root: the stand-in base is made with debootstrap + chroot")
    env = podman_environment()
    base = subprocess.run(
        [str(SCRIPTS / "make-base-image.sh")], env=env, timeout=900, capture_output=True, text=True
    )
    if base.returncode != 0:
        raise AssertionError(
            f"scripts/make-base-image.sh failed (debootstrap needs the Debian mirror):\n"
            f"{base.stdout[-2000:]}\n{base.stderr[-2000:]}"
        )
    return Podman(env)


@pytest.fixture(scope="module")
def image(
    podman: Podman, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The image built from a context holding the repo's files plus the test bundles."""
    context = tmp_path_factory.mktemp("context")
    for item in CONTEXT_ITEMS:
        source = REPO / item
        if source.is_dir():
            shutil.copytree(source, context / item, ignore=shutil.ignore_patterns(".pytest_cache"))
        else:
            shutil.copy2(source, context / item)
    (context / "runs").mkdir()
    (context / "runs" / "decoy.txt").write_text("training output must not reach the image")
    bundles = bundle_source(request)
    for name in ("imdb-lm", "imdb-sentiment"):
        shutil.copytree(bundles / name, context / "models" / name)
    # Any number of bundles per task: a second classifier, picked by name (DEFAULT_CLASSIFIER
    # names the one answering requests that name none).
    bundle_copy(bundles / "imdb-sentiment", context / "models", name=SECOND_CLASSIFIER)

    start = time.perf_counter()
    podman(
        "build",
        "--isolation=chroot",
        "--network=host",
        "--pull=never",
        "-t",
        IMAGE,
        str(context),
        timeout=900,
    )
    build_s = time.perf_counter() - start
    size = int(podman("image", "inspect", "-f", "{{.Size}}", IMAGE).stdout.strip())
    request.config.stash.setdefault(_METRICS, {}).update(
        build_s=round(build_s, 1), image_bytes=size
    )
    print(
        f"\nimage {IMAGE}: built in {build_s:.1f} s, {size / 1e6:.0f} MB "
        f"(storage driver {podman.env.get('STORAGE_DRIVER')})"
    )
    yield IMAGE
    podman("rmi", "-f", IMAGE, check=False)
    podman("image", "prune", "-f", check=False)


@pytest.fixture(scope="module", autouse=True)
def _report_metrics(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    metrics = request.config.stash.get(_METRICS, {})
    if metrics:
        print(f"\ncontainer metrics: {json.dumps(metrics)}")
        state = Path(os.environ.get("CONTAINER_STATE", "/var/tmp/fastai-onnx-serve-podman"))
        if state.is_dir():
            (state / "last-container-test.json").write_text(json.dumps(metrics, indent=2) + "\n")


def exec_json(podman: Podman, container: str, script: str, *args: str) -> object:
    result = podman("exec", container, "python", "-c", script, *args, timeout=60)
    return json.loads(result.stdout)


def wait_until(probe: Callable[[], bool], timeout_s: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        if probe():
            return time.perf_counter() - start
        time.sleep(0.2)
    raise AssertionError(f"not ready within {timeout_s} s")


def test_image_holds_only_the_runtime(
    podman: Podman, image: str, record_property: Callable
) -> None:
    facts = json.loads(
        podman(
            "run",
            "--rm",
            "--network=none",
            "--entrypoint",
            "python",
            image,
            "-c",
            INSPECT,
            timeout=120,
        ).stdout
    )
    assert facts["uid"] != 0, "the server must not run as root"
    assert set(facts["app"]) == RUNTIME_TOP_LEVEL, f"/app holds {facts['app']}"
    assert facts["heavy"] == [], f"training-side packages in the runtime image: {facts['heavy']}"
    assert facts["compilers"] == [] and facts["pip_cache"] == []
    assert not facts["app_writable"], "the bundles must be read-only to the server"
    assert facts["pyc"] > 0, "server/ is byte-compiled at build time"
    size = int(podman("image", "inspect", "-f", "{{.Size}}", image).stdout)
    record_property("image_bytes", size)
    assert size < 600e6, f"image is {size / 1e6:.0f} MB; something heavy got in"


def test_container_serves_offline_and_stops_cleanly_on_sigterm(
    podman: Podman, image: str, request: pytest.FixtureRequest, record_property: Callable
) -> None:
    started = time.perf_counter()
    container = podman(
        "run",
        "-d",
        "--network=none",
        "-e",
        f"PORT={PORT}",
        "-e",
        "DEFAULT_CLASSIFIER=imdb-sentiment",
        image,
    ).stdout.strip()
    try:
        base = f"http://127.0.0.1:{PORT}"

        def call(path: str, body: dict | None = None) -> tuple[int, str]:
            args = [base + path] + ([json.dumps(body)] if body is not None else [])
            result = exec_json(podman, container, PROBE, *args)
            assert isinstance(result, dict)
            return int(result["status"]), str(result["body"])

        def ready() -> bool:
            if podman("inspect", "-f", "{{.State.Running}}", container).stdout.strip() != "true":
                raise AssertionError(
                    "container exited during startup:\n" + podman("logs", container).stderr[-3000:]
                )
            return call("/readyz")[0] == 200

        wait_until(ready, timeout_s=120)
        ready_s = time.perf_counter() - started
        assert call("/healthz")[0] == 200

        status, body = call("/classify", {"text": "A moving, beautifully acted film."})
        assert status == 200, body
        classified = json.loads(body)
        assert classified["label"] in classified["probabilities"]
        assert abs(sum(classified["probabilities"].values()) - 1.0) < 1e-3
        assert classified["model"].startswith("imdb-sentiment@")
        status, body = call("/classify", {"text": "A dull film.", "model": SECOND_CLASSIFIER})
        assert status == 200 and json.loads(body)["model"].startswith(SECOND_CLASSIFIER + "@"), body
        status, body = call("/classify", {"text": "A dull film.", "model": "nope"})
        assert status == 404, body

        status, body = call("/generate", {"prompt": "The movie was", "n_words": 5, "seed": 7})
        assert status == 200, body
        samples = json.loads(body)["samples"]
        assert len(samples) == 1 and samples[0].startswith("The movie was")

        pss_kib = int(podman("exec", container, "python", "-c", PSS).stdout)
        stop_started = time.perf_counter()
        podman("stop", "-t", "10", container, timeout=60)
        stop_s = time.perf_counter() - stop_started
        state = podman(
            "inspect", "-f", "{{.State.ExitCode}} {{.State.OOMKilled}}", container
        ).stdout.split()
        log_result = podman("logs", container)
        logs = log_result.stdout + log_result.stderr
    finally:
        podman("rm", "-f", "-t", "0", container, check=False)

    metrics = {
        "ready_s": round(ready_s, 2),
        "pss_mib": round(pss_kib / 1024, 1),
        "stop_s": round(stop_s, 2),
    }
    request.config.stash.setdefault(_METRICS, {}).update(metrics)
    for key, value in metrics.items():
        record_property(key, value)
    print(
        f"\nready after {ready_s:.2f} s (incl. podman exec polling), {pss_kib / 1024:.0f} MiB PSS, "
        f"stopped in {stop_s:.2f} s"
    )
    assert state == ["0", "false"], f"exit code / OOM after SIGTERM: {state}\n{logs[-3000:]}"
    assert stop_s < 10, "the server ignored SIGTERM until podman's 10 s kill"
    crashes = [
        line
        for line in logs.splitlines()
        if re.search(r"SIGABRT|SIGKILL|Segmentation|terminate called|Traceback", line)
    ]
    assert not crashes, "unclean shutdown:\n" + "\n".join(crashes)
    assert "Failed to persist telemetry" not in logs, "ORT_DISABLE_TELEMETRY is not effective"
