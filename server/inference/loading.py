"""MODEL_DIR -> verified, loaded bundles, by name and by task (`ModelSet`).

Any bad bundle stops the server at start-up (BundleError, TokenizerError or ModelDirError, with
the reason, never a traceback): it never serves a half-loaded or mismatched set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bundle import BundleError, ClassifierModel, LanguageModel, load_bundle
from bundle.tokenizer import TokenizerError
from server.inference.errors import NoModelForTask, UnknownModel

Model = ClassifierModel | LanguageModel
CLASSIFY, GENERATE = "classify", "generate"


# Exit status of a process refusing its MODEL_DIR: gunicorn's own "worker failed to boot" code,
# so the master, a failed worker warm-up and `python -m server --check` all agree.
EXIT_BAD_BUNDLES = 3


class ModelDirError(Exception):
    """MODEL_DIR is missing or empty, or its bundles cannot be served as configured."""


def load_failures() -> tuple[type[Exception], ...]:
    """What a bad MODEL_DIR raises: refuse to start on these, with their message, no traceback."""
    return (ModelDirError, BundleError, TokenizerError)


@dataclass(frozen=True)
class ModelSet:
    """Every loaded bundle by name, and which one answers a task when a request names none."""

    by_name: Mapping[str, Model]
    default_classifier: str | None = None
    default_language_model: str | None = None

    def of_task(self, task: str) -> dict[str, Model]:
        return {name: m for name, m in self.by_name.items() if m.manifest.task == task}

    @property
    def classifiers(self) -> dict[str, ClassifierModel]:
        return {n: m for n, m in self.by_name.items() if isinstance(m, ClassifierModel)}

    @property
    def language_models(self) -> dict[str, LanguageModel]:
        return {n: m for n, m in self.by_name.items() if isinstance(m, LanguageModel)}

    def classifier(self, name: str | None = None) -> ClassifierModel:
        """The named classifier, else the default; UnknownModel / NoModelForTask otherwise."""
        model = self._pick(CLASSIFY, name, self.default_classifier)
        assert isinstance(model, ClassifierModel)
        return model

    def language_model(self, name: str | None = None) -> LanguageModel:
        model = self._pick(GENERATE, name, self.default_language_model)
        assert isinstance(model, LanguageModel)
        return model

    def any_model(self, name: str | None = None) -> Model:
        """For task-free routes (/tokenize): the named bundle, else the default classifier
        (ULMFiT's classifier reuses its LM's vocabulary), else the default LM."""
        if name is not None:
            return self.named(name)
        default = self.default_classifier or self.default_language_model
        if default is None:
            raise NoModelForTask("tokenize")
        return self.by_name[default]

    def named(self, name: str, version: str | None = None) -> Model:
        model = self.by_name.get(name)
        if model is None or (version is not None and version != model.manifest.version):
            raise UnknownModel(name, version)
        return model

    def _pick(self, task: str, name: str | None, default: str | None) -> Model:
        if name is None:
            if default is None:
                raise NoModelForTask(task)
            return self.by_name[default]
        model = self.by_name.get(name)
        if model is None or model.manifest.task != task:
            raise UnknownModel(name, task=task)
        return model

    def replaced(self, by_name: Mapping[str, Model]) -> ModelSet:
        """The same set with some models swapped (the instrumented copies)."""
        return ModelSet(dict(by_name), self.default_classifier, self.default_language_model)


def bundle_dirs(model_dir: Path) -> list[Path]:
    """Sub-directories holding a manifest.json, in name order."""
    if not model_dir.is_dir():
        raise ModelDirError(f"MODEL_DIR {model_dir} is not a directory")
    found = sorted(p for p in model_dir.iterdir() if (p / "manifest.json").is_file())
    if not found:
        raise ModelDirError(f"MODEL_DIR {model_dir} holds no bundle (no */manifest.json)")
    return found


def default_of(task: str, named: dict[str, Model], chosen: str | None, variable: str) -> str | None:
    """The bundle answering `task` when a request names none: `chosen` (the env var), else the
    only one; several and no choice, or a choice that is not one of them, stop the server."""
    names = ", ".join(sorted(named)) or "none"
    if chosen is not None:
        if chosen not in named:
            raise ModelDirError(
                f"{variable}={chosen!r} names no '{task}' bundle in MODEL_DIR ({task}: {names})"
            )
        return chosen
    if len(named) > 1:
        raise ModelDirError(
            f"MODEL_DIR holds {len(named)} '{task}' bundles ({names}); set {variable} to the one "
            f'that answers requests without a "model" field'
        )
    return next(iter(named), None)


def load_models(
    model_dir: Path,
    threads: int = 1,
    inter_threads: int = 1,
    default_classifier: str | None = None,
    default_lm: str | None = None,
) -> ModelSet:
    """Verify and load every bundle; any bad bundle stops the server (BundleError propagates),
    and so does a set that cannot be served (see `default_of`, backward language models)."""
    by_name: dict[str, Model] = {}
    for directory in bundle_dirs(model_dir):
        model = load_bundle(directory, threads=threads, inter_threads=inter_threads)
        manifest = model.manifest
        if manifest.name in by_name:
            raise ModelDirError(
                f"two bundles named {manifest.name!r} in {model_dir} "
                f"({by_name[manifest.name].manifest.directory.name} and {directory.name})"
            )
        if isinstance(model, LanguageModel) and model.backwards:
            raise ModelDirError(
                f"bundle {manifest.name!r} ({directory}) is a backward language model: it reads "
                "text right to left, so it cannot continue a prompt; serve a forward one "
                "(a backward classifier is fine)"
            )
        by_name[manifest.name] = model
    models = ModelSet(by_name)
    return ModelSet(
        by_name,
        default_of(CLASSIFY, dict(models.classifiers), default_classifier, "DEFAULT_CLASSIFIER"),
        default_of(GENERATE, dict(models.language_models), default_lm, "DEFAULT_LM"),
    )
