"""Memory per loaded bundle: `python scripts/bundle_memory.py [--models models] [--max 3]`.

Starts the real server (`python -m server`, gunicorn) on MODEL_DIRs holding 1, 2, ... copies of
the shipped classifier, then of the shipped language model (copies under other names: the same
weights, so each copy costs what a distinct bundle of that size costs), sends every bundle the
same requests, and reads the instance's memory from /proc: RSS and PSS of the worker, PSS of
master + worker (what the instance holds), and the worker's peak RSS (VmHWM). Prints a Markdown
table; docs/configuration.md ("Memory per bundle") records a run. Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REVIEW = (
    "I went in expecting little and came out moved. The acting is restrained, the score never "
    "tells you what to feel, and the last twenty minutes are as good as anything this year. "
) * 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_kib(pid: int, file: str, key: str) -> int:
    for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def call(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def copies(source: Path, count: int, into: Path) -> list[str]:
    """`count` copies of a bundle under the names name, name-2, ... (manifest name changed)."""
    names = []
    manifest = json.loads((source / "manifest.json").read_text())
    for index in range(count):
        name = manifest["name"] if index == 0 else f"{manifest['name']}-{index + 1}"
        shutil.copytree(source, into / name)
        (into / name / "manifest.json").write_text(json.dumps({**manifest, "name": name}))
        names.append(name)
    return names


def measure(source: Path, count: int, task: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp)
        names = copies(source, count, model_dir)
        port = free_port()
        variable = "DEFAULT_CLASSIFIER" if task == "classify" else "DEFAULT_LM"
        env = {**os.environ, "MODEL_DIR": str(model_dir), "PORT": str(port), variable: names[0]}
        env["HOST"] = "127.0.0.1"
        server = subprocess.Popen(
            [sys.executable, "-m", "server"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if call(base, "/readyz")["status"] == "ready":
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"server on {count} bundles did not become ready")
                time.sleep(0.1)
            for name in names:  # the same work for every bundle: its arena grows like in use
                for _ in range(3):
                    if task == "classify":
                        call(base, "/classify", {"texts": [REVIEW] * 8, "model": name})
                    else:
                        body = {"prompt": "The movie", "n_words": 40, "n_samples": 5}
                        call(base, "/generate", {**body, "model": name})
            children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
            worker = int(children[0])
            master_pss = proc_kib(server.pid, "smaps_rollup", "Pss")
            return {
                "bundles": count,
                "worker_rss_mib": proc_kib(worker, "status", "VmRSS") / 1024,
                "worker_pss_mib": proc_kib(worker, "smaps_rollup", "Pss") / 1024,
                "instance_pss_mib": (master_pss + proc_kib(worker, "smaps_rollup", "Pss")) / 1024,
                "worker_peak_rss_mib": proc_kib(worker, "status", "VmHWM") / 1024,
            }
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--max", type=int, default=3, help="most copies of each bundle")
    args = parser.parse_args()
    print("| bundle | copies | worker RSS | worker PSS | instance PSS | worker peak RSS |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, task in (("imdb-sentiment", "classify"), ("imdb-lm", "generate")):
        source = args.models / name
        size = sum(f.stat().st_size for f in source.iterdir()) / 2**20
        for count in range(1, args.max + 1):
            row = measure(source, count, task)
            print(
                f"| {name} ({size:.1f} MiB on disk) | {count} | {row['worker_rss_mib']:.0f} MiB "
                f"| {row['worker_pss_mib']:.0f} MiB | {row['instance_pss_mib']:.0f} MiB "
                f"| {row['worker_peak_rss_mib']:.0f} MiB |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
