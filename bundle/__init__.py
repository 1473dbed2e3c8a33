"""The bundle format and its runtime reader: json + numpy + onnxruntime, nothing heavier.

`export/` writes bundles and verifies them with this package; `server/` only reads them.
Never import torch, fastai, fastcore or spaCy here.
"""

from .ensemble import load_bundle  # plain bundles and ensembles (bundle.runtime: plain only)
from .manifest import SCHEMA_VERSION, BundleError, Manifest, file_digest, load_manifest
from .runtime import ClassifierModel, LanguageModel, session_options

__all__ = [
    "SCHEMA_VERSION",
    "BundleError",
    "ClassifierModel",
    "LanguageModel",
    "Manifest",
    "file_digest",
    "load_bundle",
    "load_manifest",
    "session_options",
]
