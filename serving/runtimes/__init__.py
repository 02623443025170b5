"""The runtimes a worker runs a model with, one module each, named after what it runs:
OpenVINO (openvino.py: model packages, no TensorFlow) and TensorFlow (tensorflow.py: Keras
models, the built-in ResNet50)."""
