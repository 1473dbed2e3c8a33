"""Helpers for the server tests, in two tiers with one interface (`get`, `post`, `url`):

- `InProcessServer`: the real app (`create_app` over the real bundles and onnxruntime) called
  through falcon.testing, no socket. For behaviour: fast, and a failure points at the code.
- `RunningServer`: the real `python -m server` (gunicorn) on a free loopback port, for what
  only transport shows (status lines, chunked bodies, streaming, bytes read, startup, SIGTERM,
  overload, headers on the wire).

Plus a small OpenAPI 3.0 schema checker for the responses and the Prometheus text reader.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import falcon.testing
import requests
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parent.parent
TRACEBACK_MARKERS = ("Traceback", 'File "', "Error:", "line ")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    """A `python -m server` process; its JSON logs go to `log_path`."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def url(self, path: str) -> str:
        return self.base_url + path

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.url(path), timeout=kwargs.pop("timeout", 60), **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.post(self.url(path), timeout=kwargs.pop("timeout", 120), **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (what Cloud Run sends), then SIGKILL if it overstays; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return int(self.process.returncode)


class InProcessResponse:
    """A falcon.testing result with the parts of `requests.Response` the tests read."""

    def __init__(self, result: falcon.testing.Result) -> None:
        self._result = result
        self.status_code = result.status_code
        self.headers = requests.structures.CaseInsensitiveDict(result.headers)
        self.content = result.content
        self.text = result.text

    def json(self) -> Any:
        return json.loads(self.content)


class InProcessServer:
    """The app of `python -m server`, built in this process over `model_dir` and called
    through falcon.testing. `settings` overrides are Settings fields (e.g. max_batch_texts=16)."""

    base_url = "http://falcon.test"

    def __init__(self, model_dir: Path, **settings: Any) -> None:
        from server.app import create_app
        from server.config import Settings
        from server.runtime import ServerRuntime

        self.settings = Settings(model_dir=model_dir, **settings)
        self.runtime = ServerRuntime.load(self.settings)
        self.runtime.warm_up()
        self.app = create_app(self.settings, self.runtime)
        self.client = falcon.testing.TestClient(self.app)

    def url(self, path: str) -> str:
        return self.base_url + path

    def request(self, method: str, path: str, **kwargs: Any) -> InProcessResponse:
        kwargs.pop("timeout", None)
        if "data" in kwargs:
            data = kwargs.pop("data")
            kwargs["body"] = data if isinstance(data, (bytes, str)) else b"".join(data)
        return InProcessResponse(self.client.simulate_request(method, path, **kwargs))

    def get(self, path: str, **kwargs: Any) -> InProcessResponse:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> InProcessResponse:
        return self.request("POST", path, **kwargs)


def server_env(model_dir: Path, port: int, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAX_", "WEB_", "ORT_"))}
    env.update(
        HOST="127.0.0.1",
        PORT=str(port),
        MODEL_DIR=str(model_dir),
        PYTHONUNBUFFERED="1",
        LOG_LEVEL="info",
    )
    env.update(overrides)
    return env


def launch_server(
    model_dir: Path,
    log_dir: Path,
    *,
    python: str = sys.executable,
    cwd: Path = REPO_ROOT,
    **env_overrides: str,
) -> RunningServer:
    """Exec `python -m server` on a free port, its output to a log file; does not wait."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"server-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [python, "-m", "server"],
            cwd=cwd,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=server_env(model_dir, port, **env_overrides),
        )
    return RunningServer(process, f"http://127.0.0.1:{port}", log_path)


def start_server(
    model_dir: Path,
    log_dir: Path,
    *,
    python: str = sys.executable,
    cwd: Path = REPO_ROOT,
    wait_ready: bool = True,
    timeout: float = 90.0,
    **env_overrides: str,
) -> RunningServer:
    """Start the server and wait for /healthz (and /readyz unless `wait_ready` is False)."""
    server = launch_server(model_dir, log_dir, python=python, cwd=cwd, **env_overrides)
    process = server.process
    probe = "/readyz" if wait_ready else "/healthz"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if requests.get(server.url(probe), timeout=2).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"server not up on {probe} within {timeout} s:\n{server.log()}")


def assert_no_traceback(body: str) -> None:
    for marker in ("Traceback", 'File "/', "site-packages"):
        assert marker not in body, f"{marker!r} leaked into a response: {body[:300]}"


def assert_json_error(
    response: requests.Response | InProcessResponse, status: int
) -> dict[str, Any]:
    """The error contract: the status, JSON content type, exactly {title, description}."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    assert_no_traceback(response.text)
    body = response.json()
    assert set(body) == {"title", "description"}, body
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["description"], str) and body["description"]
    return body


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a text/event-stream body."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((fields["event"], json.loads(fields["data"])))
    return events


# ---------------------------------------------------------------- OpenAPI 3.0 schema checking
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
}


class SchemaChecker:
    """Validates JSON values against the subset of OpenAPI 3.0 schemas our spec uses.

    Supported: $ref, type (+ nullable), enum, required, properties, additionalProperties,
    items, min/maxItems, min/maxLength, pattern, minimum/maximum (+ exclusiveMinimum), oneOf.
    An unknown keyword fails loudly, so the spec cannot outgrow the checker unnoticed.
    """

    KNOWN = {
        "$ref",
        "type",
        "nullable",
        "enum",
        "required",
        "properties",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "oneOf",
        "description",
        "default",
        "example",
    }

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            node: Any = self.spec
            for part in schema["$ref"].lstrip("#/").split("/"):
                node = node[part]
            schema = node
        return schema

    def errors(self, value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
        schema = self.resolve(schema)
        unknown = set(schema) - self.KNOWN
        if unknown:
            return [f"{where}: checker does not support {sorted(unknown)}"]
        if value is None:
            return (
                []
                if schema.get("nullable") or ("type" not in schema and "oneOf" not in schema)
                else [f"{where}: null not allowed"]
            )
        problems: list[str] = []
        kind = schema.get("type")
        if kind:
            ok = isinstance(value, _TYPES[kind]) and not (
                kind in ("integer", "number") and isinstance(value, bool)
            )
            if not ok:
                return [f"{where}: expected {kind}, got {type(value).__name__}"]
        if "enum" in schema and value not in schema["enum"]:
            problems.append(f"{where}: {value!r} not in {schema['enum']}")
        if "oneOf" in schema:
            matches = sum(not self.errors(value, option, where) for option in schema["oneOf"])
            if matches != 1:
                problems.append(f"{where}: matches {matches} of oneOf, expected exactly 1")
        if isinstance(value, dict):
            for key in schema.get("required", []):
                if key not in value:
                    problems.append(f"{where}: missing {key!r}")
            properties = schema.get("properties", {})
            extra = schema.get("additionalProperties", True)
            for key, item in value.items():
                if key in properties:
                    problems += self.errors(item, properties[key], f"{where}.{key}")
                elif extra is False:
                    problems.append(f"{where}: unexpected {key!r}")
                elif isinstance(extra, dict):
                    problems += self.errors(item, extra, f"{where}.{key}")
        if isinstance(value, list):
            if len(value) < schema.get("minItems", 0) or len(value) > schema.get(
                "maxItems", len(value)
            ):
                problems.append(f"{where}: {len(value)} items out of bounds")
            if "items" in schema:
                for index, item in enumerate(value):
                    problems += self.errors(item, schema["items"], f"{where}[{index}]")
        if isinstance(value, str):
            if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
                problems.append(f"{where}: length {len(value)} out of bounds")
            if "pattern" in schema and not re.search(schema["pattern"], value):
                problems.append(f"{where}: does not match {schema['pattern']!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            low, high = schema.get("minimum"), schema.get("maximum")
            exclusive = schema.get("exclusiveMinimum", False)
            if low is not None and (value <= low if exclusive else value < low):
                problems.append(f"{where}: {value} below {low}")
            if high is not None and value > high:
                problems.append(f"{where}: {value} above {high}")
        return problems

    def response_schema(
        self, path: str, method: str, status: int, content_type: str = "application/json"
    ) -> dict[str, Any] | None:
        """The documented schema of a response, or None when that status is not documented."""
        responses = self.spec["paths"][path][method.lower()]["responses"]
        response = responses.get(str(status))
        if response is None:
            return None
        response = self.resolve(response)
        return response.get("content", {}).get(content_type, {}).get("schema", {})


# ------------------------------------------------------------------ Prometheus text, read back
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """({family: type}, {(sample name, labels): value}) as Prometheus itself would read them."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


# ------------------------------------------------------------------ bundles for the tests
def bundle_copy(source: Path, into: Path, **manifest_changes: Any) -> Path:
    """A copy of a real bundle under `into/<name>`, with manifest fields changed (a new name or
    version, multi_label, direction); the weights and tokenizer are the source's, so the copy is
    still verified like any bundle (hashes, vocab size) when the server loads it."""
    import shutil

    manifest = json.loads((source / "manifest.json").read_text(encoding="utf-8"))
    manifest.update(manifest_changes)
    target = into / manifest["name"]
    shutil.copytree(source, target)
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return target
