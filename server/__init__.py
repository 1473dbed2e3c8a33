"""Slim serving runtime: Falcon + gunicorn + onnxruntime + numpy over the bundles in MODEL_DIR.

Never imports torch, fastai, fastcore or spaCy, and never unpickles anything.

onnxruntime's PyPI builds start Microsoft's telemetry (1DS) when first imported, unless
ORT_DISABLE_TELEMETRY is set by then: a device id and an SQLite event queue under
`$XDG_CACHE_HOME` or `~/.cache` (Cloud Run's filesystem is memory), a background uploader
thread, and connections to Microsoft's collector. A server that sends its host's details
elsewhere is not what users deploy, so every entry point (this package runs first) sets it to
1 unless the operator set it (docs/configuration.md, "onnxruntime telemetry").
"""

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
