"""Start the two servers under test as real processes, pinned to one core, one thread each.

`ours` is the production entry point (`python -m server`, gunicorn + server/gunicorn.conf.py);
`naive` is gunicorn with one sync worker serving benchmarks/naive_app.py. Both run under
`taskset -c CPU` with every math library held to one thread, so the comparison is one core
against one core, as on a one-vCPU Cloud Run instance.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OURS = "ours"
NAIVE = "naive"
ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
    "ORT_INTRA_OP_THREADS": "1",
    "ORT_INTER_OP_THREADS": "1",
}
# Bytecode as deployed: an image compiles every module at build time (pip compiles what it
# installs; our Dockerfile runs compileall). The dev venv is installed without bytecode and
# PYTHONDONTWRITEBYTECODE may be set, so each server would otherwise recompile every module it
# imports on every start. Here a server's first (untimed) start writes its bytecode under this
# folder, and later starts read it.
BYTECODE_DIR = REPO / "cache" / "pycache"


class ServerFailed(RuntimeError):
    """A server exited or never answered; the message carries its log tail."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(argv: list[str], cpu: int | None) -> list[str]:
    """Prefix `taskset -c CPU` (the exec'd process keeps its pid, so /proc ages stay right)."""
    if cpu is None:
        return argv
    if shutil.which("taskset") is None:
        raise ServerFailed("taskset not found (util-linux); pass --server-cpu none to run unpinned")
    return ["taskset", "-c", str(cpu), *argv]


def base_env() -> dict[str, str]:
    """The caller's environment minus the server's own knobs, plus one thread everywhere."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MAX_", "WEB_", "ORT_", "GUNICORN"))
    }
    env.update(ONE_THREAD)
    # What bundle/__init__.py sets in ours, for every probe: in-process timings without the
    # telemetry thread and event writes of onnxruntime, as the server runs.
    env["ORT_DISABLE_TELEMETRY"] = "1"
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(BYTECODE_DIR)
    env.update(PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore", TQDM_DISABLE="1")
    return env


@dataclass(frozen=True)
class ServerSpec:
    """What to exec for one server, and where."""

    name: str
    argv: list[str]
    env: dict[str, str]


def our_server(models: Path, port: int) -> ServerSpec:
    env = base_env()
    env.update(
        HOST="127.0.0.1",
        PORT=str(port),
        MODEL_DIR=str(models),
        LOG_LEVEL="info",
        ACCESS_LOG="false",
    )
    return ServerSpec(OURS, [sys.executable, "-m", "server"], env)


def naive_server(run_dir: Path, port: int) -> ServerSpec:
    env = base_env()
    env.update(NAIVE_RUN_DIR=str(run_dir))
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--workers",
        "1",
        "--worker-class",
        "sync",
        "--bind",
        f"127.0.0.1:{port}",
        "--timeout",
        "600",
        "--graceful-timeout",
        "5",
        "--no-control-socket",
        "--log-level",
        "warning",
        "benchmarks.naive_app:app",
    ]
    return ServerSpec(NAIVE, argv, env)


def server_spec(name: str, run_dir: Path, models: Path, port: int) -> ServerSpec:
    return our_server(models, port) if name == OURS else naive_server(run_dir, port)


@dataclass
class RunningServer:
    """One started server: its process, URL, log file, and the moment it was exec'd."""

    spec: ServerSpec
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    started: float  # time.perf_counter() just before the exec
    started_wall: float  # time.time() at the same moment: ages of the server's log lines
    exit_code: int | None = field(default=None)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON lines of the log (both servers print their startup facts as JSON)."""
        records = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return records

    def failure(self, what: str) -> ServerFailed:
        return ServerFailed(
            f"{self.spec.name} server: {what}\n--- log tail ---\n{self.log_text()[-4000:]}"
        )

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise self.failure(f"exited with {self.process.returncode}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (what Cloud Run sends), SIGKILL if it overstays; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.exit_code = int(self.process.returncode)
        return self.exit_code


def start(spec: ServerSpec, port: int, log_dir: Path, cpu: int | None) -> RunningServer:
    """Exec the server (pinned) with stdout+stderr into a log file; does not wait."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{spec.name}-{port}.log"
    with log_path.open("wb") as log_file:
        started, started_wall = time.perf_counter(), time.time()
        process = subprocess.Popen(
            pinned(spec.argv, cpu),
            cwd=REPO,
            env=spec.env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return RunningServer(spec, process, f"http://127.0.0.1:{port}", log_path, started, started_wall)


def launch(name: str, run_dir: Path, models: Path, log_dir: Path, cpu: int | None) -> RunningServer:
    port = free_port()
    return start(server_spec(name, run_dir, models, port), port, log_dir, cpu)


def wait_ready(server: RunningServer, timeout: float) -> float:
    """Poll /readyz until 200; returns seconds since exec."""
    import requests

    deadline = time.monotonic() + timeout
    with requests.Session() as session:
        while time.monotonic() < deadline:
            server.check_alive()
            try:
                if session.get(server.base_url + "/readyz", timeout=timeout).status_code == 200:
                    return time.perf_counter() - server.started
            except requests.ConnectionError:
                pass
            time.sleep(0.02)
    server.stop()
    raise server.failure(f"not ready within {timeout:.0f} s")


def pin_client(cpu: int | None) -> int | None:
    """Pin this process (the load generator) to `cpu` if it exists and differs from the server's."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    if cpu not in os.sched_getaffinity(0):
        return None
    os.sched_setaffinity(0, {cpu})
    return cpu
