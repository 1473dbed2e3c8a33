"""fastai learner -> plain torch -> ONNX -> int8 -> verified bundle."""
