"""Slim serving runtime: Falcon + gunicorn + onnxruntime + numpy over the bundles in MODEL_DIR.

Never imports torch, fastai, fastcore or spaCy, and never unpickles anything.
"""
