"""Prediction with a saved model folder: the Predictor that evaluate, serving and batch prediction decode
outputs with (inference.py), and the runtimes it runs on, PyTorch or ONNX Runtime fp32 and int8
(runtimes.py)."""
