"""Slim serving runtime: Falcon + gunicorn + onnxruntime + numpy over the bundles in MODEL_DIR.

Never imports torch, fastai, fastcore or spaCy, and never unpickles anything. onnxruntime is
only ever imported through `bundle`, which turns its telemetry off first (bundle/__init__.py).
"""
