"""The container image as shipped: the repo's Dockerfile and its models/, built with podman.

Why build it here rather than read a test's record: the image row of the report must describe
the image Cloud Build would make from this commit (the shipped bundles, nothing else), and its
size on top of the base is what we control. The base is the stand-in for python:3.11-slim that
scripts/make-base-image.sh makes (docs/deploy.md); layer sizes come from `podman history`.
Needs podman and root (the stand-in base is made with debootstrap); otherwise the row says why
it was not measured. `python -m benchmarks.image` prints the JSON alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TAG = "localhost/fastai-onnx-serve:benchmark"
BASE = "docker.io/library/python:3.11-slim"
BUILD = ("podman", "build", "--isolation=chroot", "--network=host", "--pull=never")


def podman_environment() -> dict[str, str]:
    """What scripts/podman-env.sh exports for these hosts (storage, runtime, ulimits)."""
    out = subprocess.run(
        ["bash", "-c", f". {REPO / 'scripts' / 'podman-env.sh'} && env -0"],
        capture_output=True,
        check=True,
        timeout=120,
    )
    return dict(item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)


def _run(args: list[str], env: dict[str, str], timeout: float) -> str:
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args[:3])} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
        )
    return out.stdout


def _size(ref: str, env: dict[str, str]) -> int:
    return int(_run(["podman", "image", "inspect", "-f", "{{.Size}}", ref], env, 60).strip())


def measure(repo: Path = REPO) -> dict[str, Any]:
    """Build the image from `repo` and weigh it, its base and each layer it adds."""
    if shutil.which("podman") is None or os.geteuid() != 0:
        return {
            "measured": False,
            "note": "not measured: needs podman and root (scripts/install-container-tools.sh)",
        }
    env = podman_environment()
    _run(["bash", str(repo / "scripts" / "make-base-image.sh")], env, 900)
    started = time.perf_counter()
    _run(
        [*BUILD, "-t", TAG, "-f", str(repo / "Dockerfile"), str(repo)],
        env,
        1800,
    )
    build_s = time.perf_counter() - started
    image, base = _size(TAG, env), _size(BASE, env)
    history = json.loads(_run(["podman", "history", "--format", "json", TAG], env, 60))
    base_layers = len(json.loads(_run(["podman", "history", "--format", "json", BASE], env, 60)))
    ours = history[: len(history) - base_layers]  # newest first; the base's layers come last
    layers = [
        {"bytes": int(entry["size"]), "step": " ".join(str(entry["CreatedBy"]).split())[:160]}
        for entry in ours
        if int(entry["size"]) > 0
    ]
    models = sorted(p.name for p in (repo / "models").iterdir() if p.is_dir())
    return {
        "measured": True,
        "tag": TAG,
        "models": models,
        "image_bytes": image,
        "base_bytes": base,
        "added_bytes": image - base,
        "build_s": round(build_s, 1),
        "storage_driver": env.get("STORAGE_DRIVER"),
        "layers": sorted(layers, key=lambda layer: -layer["bytes"]),  # ours only
    }


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
    sys.exit(0)
