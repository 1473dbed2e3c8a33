"""The bundle format and its runtime reader: json + numpy + onnxruntime, nothing heavier.

`export/` writes bundles and verifies them with this package; `server/` only reads them.
Never import torch, fastai, fastcore or spaCy here.

onnxruntime's PyPI builds start Microsoft's telemetry (1DS) when first imported, unless
ORT_DISABLE_TELEMETRY is set by then: a device id and an SQLite event queue under
`$XDG_CACHE_HOME` or `~/.cache` (Cloud Run's filesystem is memory), one more thread, and events
for an uploader to Microsoft's collector. The reader that the server, the image's bundle gate
and the teacher scoring run must not report its host elsewhere, so this package sets it to 1
before it imports onnxruntime, unless the environment set it (docs/configuration.md, "Fixed by
design").
"""

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

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
