"""A ResNet-50 written as an ONNX graph with random weights: the benchmark's stand-in for
the ONNX classifiers users bring (torchvision's and the ONNX model zoo's ResNet-50 have
this graph: NCHW, ImageNet's normalisation, 1000 logits), since no model hub is reachable.

Its speed is ResNet-50's (the same convolutions, about 4 GFLOPs per image); its answers
mean nothing. Batch norms are left out, as an exported model has them folded into the
convolutions; each block's last convolution is scaled down so that the untrained
activations neither vanish nor overflow through 16 residual blocks."""

from pathlib import Path

import numpy as np

# (blocks, bottleneck width, first block's stride) of ResNet-50's four stages.
STAGES = ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2))
EXPANSION = 4
CLASSES = 1000


class _Graph:
    def __init__(self, seed: int) -> None:
        from onnx import helper, numpy_helper

        self.helper = helper
        self.numpy_helper = numpy_helper
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.weights: list = []

    def conv(
        self, x: str, out: int, inp: int, kernel: int, stride: int = 1, gain: float = 1.0
    ) -> str:
        name = f"conv{len(self.nodes)}"
        # He initialisation: the activations keep their scale through a ReLU.
        std = gain * np.sqrt(2.0 / (inp * kernel * kernel))
        weight = self.rng.normal(0, std, (out, inp, kernel, kernel)).astype(np.float32)
        self.weights.append(self.numpy_helper.from_array(weight, f"{name}.w"))
        self.weights.append(self.numpy_helper.from_array(np.zeros(out, np.float32), f"{name}.b"))
        pad = kernel // 2
        self.nodes.append(
            self.helper.make_node(
                "Conv",
                [x, f"{name}.w", f"{name}.b"],
                [name],
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[pad] * 4,
            )
        )
        return name

    def op(self, kind: str, inputs: list[str], **attributes) -> str:
        name = f"{kind.lower()}{len(self.nodes)}"
        self.nodes.append(self.helper.make_node(kind, inputs, [name], **attributes))
        return name

    def bottleneck(self, x: str, inp: int, width: int, stride: int) -> str:
        out = width * EXPANSION
        y = self.op("Relu", [self.conv(x, width, inp, 1)])
        y = self.op("Relu", [self.conv(y, width, width, 3, stride)])
        y = self.conv(y, out, width, 1, gain=0.2)
        shortcut = x if (inp == out and stride == 1) else self.conv(x, out, inp, 1, stride)
        return self.op("Relu", [self.op("Add", [y, shortcut])])


def write_resnet50(path: Path, *, seed: int = 0) -> Path:
    """Write the graph to path (about 100 MB) and return path."""
    import onnx
    from onnx import TensorProto, helper

    graph = _Graph(seed)
    x = graph.op("Relu", [graph.conv("pixels", 64, 3, 7, 2)])
    x = graph.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    channels = 64
    for blocks, width, stride in STAGES:
        for block in range(blocks):
            x = graph.bottleneck(x, channels, width, stride if block == 0 else 1)
            channels = width * EXPANSION
    x = graph.op("Flatten", [graph.op("GlobalAveragePool", [x])])
    head = graph.rng.normal(0, 0.01, (CLASSES, channels)).astype(np.float32)
    graph.weights.append(graph.numpy_helper.from_array(head, "head.w"))
    graph.weights.append(graph.numpy_helper.from_array(np.zeros(CLASSES, np.float32), "head.b"))
    graph.nodes.append(helper.make_node("Gemm", [x, "head.w", "head.b"], ["logits"], transB=1))
    model = helper.make_model(
        helper.make_graph(
            graph.nodes,
            "resnet50",
            [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, 224, 224])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
            graph.weights,
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
