"""The canary commands in docs/deploy.md match what cloudbuild.yaml really deploys (service,
region, tag), and the rollout guide in docs/monitoring.md points at them."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from test_deploy_files import flags, load_cloudbuild, run_deploy_step

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
