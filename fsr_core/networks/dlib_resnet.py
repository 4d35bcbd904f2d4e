"""dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``) as a torch module.

The network
-----------
``dlib.face_recognition_model_v1`` runs the ``anet_type`` of dlib's
``examples/dnn_face_recognition_ex.cpp``: a 29-convolution ResNet (a ResNet-34 with a few layers
removed and the filter counts halved) trained with dlib's metric loss. It maps an aligned 150x150
RGB face chip to a 128-D descriptor; two chips of the same person are meant to lie closer than
0.6 (Euclidean). In dlib's template notation, read from the input upwards::

    input_rgb_image_sized<150>
    con<32,7,7,2,2> affine relu max_pool<3,3,2,2>                    stem, 150 -> 72 -> 35
    3 x ares<32>                                                     35x35x32
    ares_down<64>  + 3 x ares<64>                                    17x17x64
    ares_down<128> + 2 x ares<128>                                   8x8x128
    ares_down<256> + 2 x ares<256>                                   4x4x256 (see below)
    ares_down<256>                                                   2x2x256
    avg_pool_everything fc_no_bias<128> loss_metric                  -> [128]

    block<N,stride>   = affine(con<N,3,3,1,1>(relu(affine(con<N,3,3,stride,stride>(x)))))
    ares<N>           = relu(block<N,1>(x) + x)                          (tag1 / add_prev1)
    ares_down<N>      = relu(block<N,2>(x) + avg_pool<2,2,2,2>(x))       (tag1, tag2, skip1, add_prev2)

29 convolutions (all with a bias), 29 affine layers (gamma and beta per channel) and one 256x128
matrix: 5,614,592 parameters.

Where each detail comes from (dlib's sources, ``github.com/davisking/dlib``; read, not copied):

- ``dlib/dnn/layers.h``: ``con_``, ``max_pool_`` and ``avg_pool_`` default their padding to
  ``stride != 1 ? 0 : size/2``, so every stride-2 layer (the 7x7 stem convolution, the 3x3
  downsampling convolutions, the 3x3 max pool, the 2x2 average pools) pads **0** and the stride-1
  3x3 convolutions pad 1. ``affine_`` is ``gamma * x + beta`` per channel (CONV_MODE); a
  serialized ``bn_con2`` read into an ``affine_`` is folded as ``gamma / sqrt(var + eps)`` and
  ``beta - g * mean`` (this file stores ``affine_`` directly). ``fc_`` computes
  ``x[N, num_inputs] @ W[num_inputs, num_outputs]`` (W row-major in that shape, no bias for
  ``fc_no_bias``). ``add_prev_`` sizes its output as the element-wise max of both inputs and adds
  them with the out-of-range entries of the smaller read as zero (``tt::add``, see
  ``dlib/cuda/cpu_dlib.cpp``): this matters at the third downsampling, where the stride-2 3x3
  convolution of an 8x8 map gives 3x3 but the 2x2 average pool gives 4x4, so the block output
  fills the top-left 3x3 of a 4x4 sum (and 4x4 -> 1x1 vs 2x2 at the last one). Tag, skip and
  add_prev semantics (``layer<tag>(sub)`` is the nearest layer with that tag below) are in
  ``dlib/dnn/core.h``.
- ``dlib/cuda/cpu_dlib.cpp``: convolution and pooling output sizes are
  ``1 + (in + 2*pad - window) // stride``; pooling windows start at ``stride * i - pad``
  (``centered_rect`` at ``stride*i + window/2 - pad``); convolution is a correlation with
  ``filters[num_filters, k, nr, nc]`` (torch's OIHW order), then the bias is added.
  ``avg_pool_everything`` is ``avg_pool_<0,0,1,1>``: the mean over the whole map.
- ``dlib/dnn/input.h``: ``input_rgb_image_sized::to_tensor`` writes planes R, G, B of a row-major
  ``matrix<rgb_pixel>`` as ``(pixel - avg) / 256`` with ``avg = (122.782, 117.001, 104.298)``
  (float; the file stores these three values, which are used here).
- ``dlib/dnn/loss.h``: ``loss_metric_::to_label`` returns the fc output as is (no normalisation).
- ``tools/python/src/face_recognition.cpp``: ``compute_face_descriptor(chip)`` on an aligned
  150x150 chip (``num_jitters <= 1``) is exactly ``net(chip)``; chips come from
  ``dlib.get_face_chip(img, shape, size=150, padding=0.25)`` on dlib's 5- or 68-point landmarks.

File format (``dlib/serialize.h``, ``dlib/float_details.h``, ``dlib/cuda/tensor.h``, ``core.h``):

- integers: a control byte (low nibble: byte count, 0x80: negative) then that many
  little-endian magnitude bytes;
- floats/doubles: ``float_details`` = an integer mantissa then an integer exponent, value
  ``mantissa * 2**exponent`` (exponents 32000/32001/32002 are +inf/-inf/nan);
- strings: integer length then bytes; bools: ASCII ``'0'``/``'1'``;
- ``resizable_tensor``: int version (2), four ints (num_samples, k, nr, nc), then raw
  little-endian IEEE float32 values; ``alias_tensor``: int version (1) and four ints;
- ``add_loss_layer``: int version, loss details, subnetwork; ``add_layer``: int version,
  subnetwork, layer details, three bools, ``x_grad`` and ``cached_output`` tensors (and
  ``params_grad`` from version 2); the ``add_layer`` over the input layer: int version, input
  layer, layer details, three bools, three tensors (and ``sample_expansion_factor`` from version
  3); tag and skip layers: int version (1), subnetwork.

  Because each wrapper writes its subnetwork before its own details, the file holds the loss
  layer, then one version integer per layer from the top down, then the input layer, then the
  layers' details from the input up. Tags and skips write nothing but their version, so the
  topology is not in the file: :func:`anet_type_layers` rebuilds it from the C++ templates and
  :func:`parse_dlib_network` checks every layer in the file against it.

Conventions of :class:`DlibFaceDescriptor`: ``forward(x)`` takes ``[N,3,150,150]`` float, channels
in **RGB** order, values in **0..255** (the uint8 pixel values of a chip as ``dlib.get_face_chip``
returns them, ``HWC -> CHW``), and returns ``[N,128]`` float descriptors, equal to
``dlib.face_recognition_model_v1.compute_face_descriptor(chip)`` to ~1e-6. The input is not
rounded to integers, so the module is differentiable in its input. On CUDA, torch's default
TF32 convolutions (``torch.backends.cudnn.allow_tf32``) cost about three decimal digits; turn them
off where the descriptors must match dlib's.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEFAULT_MODEL_NAME",
    "DlibFaceDescriptor",
    "DlibFormatError",
    "DlibLayer",
    "anet_type_layers",
    "chips_to_tensor",
    "default_model_path",
    "face_chip",
    "load_dlib_face_descriptor",
    "parse_dlib_network",
]

DEFAULT_MODEL_NAME = "dlib_face_recognition_resnet_model_v1.dat"
CHIP_SIZE = 150

_FLOAT_INF, _FLOAT_NINF, _FLOAT_NAN = 32000, 32001, 32002  # float_details special exponents


# --------------------------------------------------------------------------------------------
# The topology: dnn_face_recognition_ex.cpp's anet_type, input first.


def _block(n: int, stride: int) -> list[tuple]:
    # BN<con<N,3,3,1,1,relu<BN<con<N,3,3,stride,stride,SUBNET>>>>> with BN = affine
    return [("con", n, 3, 3, stride, stride), ("affine",), ("relu",), ("con", n, 3, 3, 1, 1), ("affine",)]


def _ares(n: int) -> list[tuple]:
    # relu<add_prev1<block<N,affine,1,tag1<SUBNET>>>>
    return [("tag", 1), *_block(n, 1), ("add_prev", 1), ("relu",)]


def _ares_down(n: int) -> list[tuple]:
    # relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,affine,2,tag1<SUBNET>>>>>>>
    return [
        ("tag", 1),
        *_block(n, 2),
        ("tag", 2),
        ("skip", 1),
        ("avg_pool", 2, 2, 2, 2),
        ("add_prev", 2),
        ("relu",),
    ]


def anet_type_layers() -> list[tuple]:
    """The layers of ``anet_type`` in forward order (input first, loss last).

    Entries: ``("input", 150)``, ``("con", filters, nr, nc, stride_y, stride_x)``, ``("affine",)``,
    ``("relu",)``, ``("max_pool"|"avg_pool", nr, nc, stride_y, stride_x)`` (``0, 0`` = the whole
    map), ``("tag", id)``, ``("skip", id)``, ``("add_prev", id)``, ``("fc", outputs)``,
    ``("loss_metric",)``.
    """
    layers: list[tuple] = [("input", CHIP_SIZE), ("con", 32, 7, 7, 2, 2), ("affine",), ("relu",), ("max_pool", 3, 3, 2, 2)]
    layers += _ares(32) * 3  # alevel4
    layers += _ares_down(64) + _ares(64) * 3  # alevel3
    layers += _ares_down(128) + _ares(128) * 2  # alevel2
    layers += _ares_down(256) + _ares(256) * 2  # alevel1
    layers += _ares_down(256)  # alevel0
    layers += [("avg_pool", 0, 0, 1, 1), ("fc", 128), ("loss_metric",)]
    return layers


# --------------------------------------------------------------------------------------------
# The reader of dlib's serialization format.


class DlibFormatError(ValueError):
    """The file is not a serialized ``anet_type`` (or is damaged)."""


class _Reader:
    def __init__(self, data: bytes, name: str) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.name = name

    def fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"{self.name}: {what} (at byte {self.pos})")

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise self.fail(f"unexpected end of file reading {n} bytes")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int_(self) -> int:
        # serialize.h pack_int/unpack_int: control byte (size in the low nibble, 0x80 = negative),
        # then the magnitude's bytes, least significant first.
        ctrl = self.take(1)[0]
        size = ctrl & 0x0F
        if size == 0 or size > 8:
            raise self.fail(f"bad integer control byte 0x{ctrl:02x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if ctrl & 0x80 else value

    def float_(self) -> float:
        # serialize.h deserialize_floating_point / float_details: mantissa * 2**exponent.
        if self.data[self.pos] & 0x70:
            raise self.fail("old ASCII float format is not supported")
        mantissa, exponent = self.int_(), self.int_()
        if exponent == _FLOAT_INF:
            return math.inf
        if exponent == _FLOAT_NINF:
            return -math.inf
        if exponent == _FLOAT_NAN:
            return math.nan
        return math.ldexp(float(mantissa), exponent)

    def bool_(self) -> bool:
        ch = self.take(1)[0]
        if ch not in (ord("0"), ord("1")):
            raise self.fail(f"bad bool byte 0x{ch:02x}")
        return ch == ord("1")

    def str_(self) -> str:
        n = self.int_()
        if n < 0 or n > 1 << 16:
            raise self.fail(f"implausible string length {n}")
        return bytes(self.take(n)).decode("latin-1")

    def version(self, expected: tuple[int, ...], what: str) -> int:
        v = self.int_()
        if v not in expected:
            raise self.fail(f"unexpected {what} version {v}, expected one of {expected}")
        return v

    def tensor(self) -> np.ndarray:
        # tensor.h serialize(const tensor&): version 2, num_samples, k, nr, nc, float32 LE data.
        self.version((2,), "resizable_tensor")
        shape = tuple(self.int_() for _ in range(4))
        if min(shape) < 0:
            raise self.fail(f"negative tensor shape {shape}")
        count = int(np.prod(shape))
        raw = self.take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        self.version((1,), "alias_tensor")
        return tuple(self.int_() for _ in range(4))  # type: ignore[return-value]


@dataclass
class DlibLayer:
    """One layer of the parsed network, in forward order."""

    kind: str
    """``input``, ``con``, ``affine``, ``relu``, ``max_pool``, ``avg_pool``, ``tag``, ``skip``,
    ``add_prev``, ``fc`` or ``loss_metric``."""
    config: dict[str, Any] = field(default_factory=dict)
    """Hyper-parameters: sizes, strides, paddings, tag ids, the input's average colour, ..."""
    params: dict[str, np.ndarray] = field(default_factory=dict)
    """``weight``/``bias`` (con: ``[O,I,H,W]``, ``[O]``; fc: ``[in, out]``), ``gamma``/``beta``
    (affine: ``[C]``), as float32."""

    def __repr__(self) -> str:
        shapes = {k: tuple(v.shape) for k, v in self.params.items()}
        return f"DlibLayer({self.kind}, {self.config}, {shapes})"


def _split(params: np.ndarray, *shapes: tuple[int, ...], r: _Reader, what: str) -> list[np.ndarray]:
    flat = params.reshape(-1)
    need = sum(int(np.prod(s)) for s in shapes)
    if flat.size != need:
        raise r.fail(f"{what}: {flat.size} parameters, expected {need} for shapes {shapes}")
    out, offset = [], 0
    for s in shapes:
        n = int(np.prod(s))
        out.append(flat[offset : offset + n].reshape(s).copy())
        offset += n
    return out


def _read_details(r: _Reader, spec: tuple) -> DlibLayer:
    """One layer's details (``serialize(item.details)``), checked against ``spec``."""
    kind = spec[0]
    tag = r.str_()
    if kind == "con":
        if tag not in ("con_4", "con_5", "con_6"):
            raise r.fail(f"expected a con_ layer, found {tag!r}")
        params = r.tensor()
        num_filters = r.int_()
        nr, nc, sy, sx, py, px = (r.int_() for _ in range(6))
        filters = r.alias_tensor()
        r.alias_tensor()  # biases: (1, num_filters)
        for _ in range(4):  # learning rate / weight decay multipliers
            r.float_()
        use_bias = r.bool_() if tag in ("con_5", "con_6") else True
        use_relu = r.bool_() if tag == "con_6" else False
        _, n_filt, n_r, n_c, s_y, s_x = spec
        want_pad = (0 if s_y != 1 else n_r // 2, 0 if s_x != 1 else n_c // 2)
        if (num_filters, nr, nc, sy, sx, py, px) != (n_filt, n_r, n_c, s_y, s_x, *want_pad):
            raise r.fail(f"con_ {(num_filters, nr, nc, sy, sx, py, px)} does not match anet_type's {spec}")
        if filters[0] != num_filters or filters[2:] != (nr, nc):
            raise r.fail(f"con_ filter shape {filters} does not match {num_filters} {nr}x{nc}")
        shapes = [filters] + ([(num_filters,)] if use_bias else [])
        arrays = _split(params, *shapes, r=r, what=tag)
        layer = DlibLayer("con", {"stride": (sy, sx), "padding": (py, px), "relu": use_relu, "in_channels": filters[1]})
        layer.params["weight"] = arrays[0]
        layer.params["bias"] = arrays[1] if use_bias else np.zeros(num_filters, np.float32)
        return layer
    if kind == "affine":
        if tag in ("affine_", "affine_2"):
            params = r.tensor()
            gamma_shape = r.alias_tensor()
            beta_shape = r.alias_tensor()
            mode = r.int_()
            disabled = r.bool_() if tag == "affine_2" else False
            if mode != 0:  # CONV_MODE
                raise r.fail(f"affine_ in mode {mode}, anet_type uses CONV_MODE (0)")
            c = gamma_shape[1]
            if gamma_shape[0] != 1 or gamma_shape[2:] != (1, 1) or beta_shape != gamma_shape:
                raise r.fail(f"affine_ gamma/beta shapes {gamma_shape} {beta_shape}")
            if disabled:
                return DlibLayer("affine", {"disabled": True})
            gamma, beta = _split(params, (c,), (c,), r=r, what=tag)
            return DlibLayer("affine", {"channels": c}, {"gamma": gamma, "beta": beta})
        if tag == "bn_con2":
            # layers.h affine_(const bn_&): g = gamma / sqrt(running_var + eps), b = beta - g * mean.
            params = r.tensor()
            gamma_shape = r.alias_tensor()
            r.alias_tensor()
            r.tensor(), r.tensor()  # means, invstds (training batch statistics)
            running_means, running_vars = r.tensor(), r.tensor()
            r.int_(), r.int_()  # num_updates, running_stats_window_size
            for _ in range(4):
                r.float_()
            eps = np.float32(r.float_())
            c = gamma_shape[1]
            gamma, beta = _split(params, (c,), (c,), r=r, what=tag)
            g = (gamma / np.sqrt(running_vars.reshape(-1) + eps)).astype(np.float32)
            b = (beta - g * running_means.reshape(-1)).astype(np.float32)
            return DlibLayer("affine", {"channels": c}, {"gamma": g, "beta": b})
        raise r.fail(f"expected an affine_ layer, found {tag!r}")
    if kind == "relu":
        if tag not in ("relu_", "relu_2"):
            raise r.fail(f"expected a relu_ layer, found {tag!r}")
        disabled = r.bool_() if tag == "relu_2" else False
        return DlibLayer("relu", {"disabled": disabled})
    if kind in ("max_pool", "avg_pool"):
        if tag != f"{kind}_2":
            raise r.fail(f"expected a {kind}_ layer, found {tag!r}")
        nr, nc, sy, sx, py, px = (r.int_() for _ in range(6))
        _, n_r, n_c, s_y, s_x = spec
        want_pad = (0 if s_y != 1 else n_r // 2, 0 if s_x != 1 else n_c // 2)
        if (nr, nc, sy, sx, py, px) != (n_r, n_c, s_y, s_x, *want_pad):
            raise r.fail(f"{kind} {(nr, nc, sy, sx, py, px)} does not match anet_type's {spec}")
        return DlibLayer(kind, {"window": (nr, nc), "stride": (sy, sx), "padding": (py, px)})
    if kind == "add_prev":
        if tag != "add_prev_":
            raise r.fail(f"expected an add_prev_ layer, found {tag!r}")
        return DlibLayer("add_prev", {"tag": spec[1]})
    if kind == "fc":
        if tag not in ("fc_2", "fc_3"):
            raise r.fail(f"expected an fc_ layer, found {tag!r}")
        num_outputs, num_inputs = r.int_(), r.int_()
        params = r.tensor()
        weights = r.alias_tensor()
        r.alias_tensor()
        bias_mode = r.int_()
        for _ in range(4):
            r.float_()
        if tag == "fc_3":
            r.bool_()  # use_bias (no bias either way in fc_no_bias)
        if num_outputs != spec[1] or weights[:2] != (num_inputs, num_outputs):
            raise r.fail(f"fc_ {num_inputs}->{num_outputs} (weights {weights}) does not match anet_type's {spec}")
        if bias_mode != 1:  # fc_bias_mode: FC_HAS_BIAS = 0, FC_NO_BIAS = 1
            raise r.fail(f"anet_type's fc is fc_no_bias (bias mode 1), found mode {bias_mode}")
        (weight,) = _split(params, (num_inputs, num_outputs), r=r, what=tag)
        return DlibLayer("fc", {"in_features": num_inputs, "out_features": num_outputs}, {"weight": weight})
    raise r.fail(f"no reader for layer kind {kind!r}")


def parse_dlib_network(data: bytes, name: str = "<bytes>") -> list[DlibLayer]:
    """Parse a serialized ``anet_type`` into its layers, input first (see the module docstring).

    Raises :class:`DlibFormatError` (a ``ValueError``) where the bytes do not match.
    """
    spec = anet_type_layers()
    r = _Reader(data, name)
    layers: list[DlibLayer] = [DlibLayer(s[0], {"tag": s[1]} if s[0] in ("tag", "skip") else {}) for s in spec]

    # add_loss_layer: version 1, loss details, subnetwork.
    r.version((1,), "add_loss_layer")
    tag = r.str_()
    if tag == "loss_metric_2":
        layers[-1].config = {"margin": r.float_(), "distance_threshold": r.float_()}
    elif tag == "loss_metric_":
        layers[-1].config = {"margin": 0.1, "distance_threshold": 0.75}
    else:
        raise r.fail(f"expected loss_metric_, found {tag!r}")

    # One version integer per wrapper, top (fc) down to the add_layer over the input.
    body = spec[1:-1]
    versions: dict[int, int] = {}
    for i in range(len(body), 0, -1):
        kind = spec[i][0]
        if kind in ("tag", "skip"):
            r.version((1, 2) if i == 1 else (1,), f"add_{kind}_layer")
        else:
            versions[i] = r.version((2, 3) if i == 1 else (1, 2), "add_layer")

    # The input layer.
    tag = r.str_()
    if tag != "input_rgb_image_sized":
        raise r.fail(f"expected input_rgb_image_sized, found {tag!r}")
    avg = (r.float_(), r.float_(), r.float_())
    nr, nc = r.int_(), r.int_()
    if (nr, nc) != (CHIP_SIZE, CHIP_SIZE):
        raise r.fail(f"input size {nr}x{nc}, expected {CHIP_SIZE}x{CHIP_SIZE}")
    layers[0].config = {"average_rgb": avg, "size": (nr, nc)}

    # The layers' details, input up; tags and skips wrote nothing here.
    for i in range(1, len(spec) - 1):
        if spec[i][0] in ("tag", "skip"):
            continue
        layers[i] = _read_details(r, spec[i])
        for _ in range(3):  # this_layer_setup_called, gradient_input_is_stale, ..._disabled
            r.bool_()
        r.tensor(), r.tensor()  # x_grad, cached_output
        if i == 1:
            r.tensor()  # grad_final
            if versions[i] >= 3:
                r.int_()  # sample_expansion_factor
        elif versions[i] >= 2:
            r.tensor()  # params_grad
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} bytes left after the network")
    return layers


# --------------------------------------------------------------------------------------------
# The torch module.


def _add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``tt::add`` of two tensors of different sizes: zero-extend both to the larger one."""
    if a.shape == b.shape:
        return a + b
    shape = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:])]

    def grow(t: torch.Tensor) -> torch.Tensor:
        c, h, w = t.shape[1:]
        if (c, h, w) == tuple(shape):
            return t
        return F.pad(t, (0, shape[2] - w, 0, shape[1] - h, 0, shape[0] - c))

    return grow(a) + grow(b)


class DlibFaceDescriptor(nn.Module):
    """dlib's face-recognition ResNet: ``[N,3,150,150]`` RGB in 0..255 -> ``[N,128]`` descriptors.

    The input is the aligned chip (``dlib.get_face_chip(img, shape, size=150, padding=0.25)``) as
    float, channel order R, G, B, values 0..255 (not normalised: the module subtracts dlib's
    average colour and divides by 256 itself). The output is what
    ``dlib.face_recognition_model_v1.compute_face_descriptor(chip)`` returns (not re-normalised;
    its norm is about 1 by training). Differentiable; move it with ``.to(device)``.

    Built from :func:`parse_dlib_network`'s layers; the forward pass interprets their list in
    order, with dlib's tag/skip/add_prev semantics.
    """

    def __init__(self, layers: list[DlibLayer]) -> None:
        super().__init__()
        if not layers or layers[0].kind != "input":
            raise ValueError("the layer list must start with the input layer")
        average = layers[0].config.get("average_rgb", (122.782, 117.001, 104.298))
        self.register_buffer("average_rgb", torch.tensor(average, dtype=torch.float32).view(1, 3, 1, 1))
        self.input_size = tuple(layers[0].config.get("size", (CHIP_SIZE, CHIP_SIZE)))
        self.program: list[tuple] = []
        self.convs = nn.ModuleList()
        self.affines = nn.ParameterList()
        self.fc_weight: nn.Parameter | None = None
        for layer in layers[1:]:
            k, cfg = layer.kind, layer.config
            if k == "con":
                w = torch.from_numpy(layer.params["weight"])
                conv = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=cfg["stride"], padding=cfg["padding"])
                with torch.no_grad():
                    conv.weight.copy_(w)
                    conv.bias.copy_(torch.from_numpy(layer.params["bias"]))
                self.program.append(("con", len(self.convs), bool(cfg.get("relu", False))))
                self.convs.append(conv)
            elif k == "affine":
                if cfg.get("disabled"):
                    continue
                i = len(self.affines)
                self.affines.append(nn.Parameter(torch.from_numpy(layer.params["gamma"]).view(1, -1, 1, 1).clone()))
                self.affines.append(nn.Parameter(torch.from_numpy(layer.params["beta"]).view(1, -1, 1, 1).clone()))
                self.program.append(("affine", i))
            elif k == "relu":
                if not cfg.get("disabled"):
                    self.program.append(("relu",))
            elif k in ("max_pool", "avg_pool"):
                self.program.append((k, tuple(cfg["window"]), tuple(cfg["stride"]), tuple(cfg["padding"])))
            elif k in ("tag", "skip", "add_prev"):
                self.program.append((k, cfg["tag"]))
            elif k == "fc":
                self.fc_weight = nn.Parameter(torch.from_numpy(layer.params["weight"]).clone())
                self.program.append(("fc",))
            elif k == "loss_metric":
                pass
            else:
                raise ValueError(f"unsupported layer kind {k!r}")
        if self.fc_weight is None:
            raise ValueError("the layer list has no fc layer")

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(f"DlibFaceDescriptor expects [N,3,{self.input_size[0]},{self.input_size[1]}] input, got {tuple(x.shape)}")
        x = (x - self.average_rgb.to(x.dtype)) / 256.0
        tags: dict[int, torch.Tensor] = {}
        for op in self.program:
            kind = op[0]
            if kind == "con":
                x = self.convs[op[1]](x)
                if op[2]:
                    x = torch.relu(x)
            elif kind == "affine":
                x = x * self.affines[op[1]] + self.affines[op[1] + 1]
            elif kind == "relu":
                x = torch.relu(x)
            elif kind == "max_pool" or kind == "avg_pool":
                window, stride, padding = op[1], op[2], op[3]
                if window == (0, 0):  # *_pool_everything
                    x = x.amax(dim=(2, 3), keepdim=True) if kind == "max_pool" else x.mean(dim=(2, 3), keepdim=True)
                elif kind == "max_pool":
                    x = F.max_pool2d(x, window, stride, padding)
                else:
                    # dlib averages over the window's part inside the map (subm_clipped).
                    x = F.avg_pool2d(x, window, stride, padding, count_include_pad=False)
            elif kind == "tag":
                tags[op[1]] = x
            elif kind == "skip":
                x = tags[op[1]]
            elif kind == "add_prev":
                x = _add_padded(x, tags[op[1]])
            elif kind == "fc":
                x = x.flatten(1) @ self.fc_weight.to(x.dtype)
        return x


# --------------------------------------------------------------------------------------------
# Loading.


def default_model_path() -> str:
    """Where the ``face_recognition_models`` package keeps the weights (not importing it)."""
    from fsr_core import storage

    path = storage.package_file("face_recognition_models", "models", DEFAULT_MODEL_NAME)
    return path or os.path.join("face_recognition_models", "models", DEFAULT_MODEL_NAME)


def load_dlib_face_descriptor(uri: str | None = None) -> DlibFaceDescriptor:
    """Read ``dlib_face_recognition_resnet_model_v1.dat`` (default: the installed package's copy).

    ``FileNotFoundError`` (naming the file and where to get it) when it is missing;
    :class:`DlibFormatError` when it is not the network described in this module.
    """
    path = os.fspath(uri) if uri is not None else default_model_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"dlib face recognition weights not found: {path!r} ({DEFAULT_MODEL_NAME}); install them with "
            f"'pip install face-recognition-models' or download {DEFAULT_MODEL_NAME}.bz2 from dlib's model "
            "collection (http://dlib.net/files/, github.com/davisking/dlib-models) and decompress it"
        )
    with open(path, "rb") as f:
        data = f.read()
    model = DlibFaceDescriptor(parse_dlib_network(data, name=path))
    model.eval()
    return model


def face_chip(rgb: np.ndarray, shape: Any, size: int = CHIP_SIZE, padding: float = 0.25) -> np.ndarray:
    """The aligned chip dlib's descriptor expects: ``dlib.get_face_chip`` on a landmark ``shape``.

    ``rgb`` is ``HxWx3`` uint8 RGB; ``shape`` a ``dlib.full_object_detection`` from the 5- or
    68-point predictor. Returns ``size x size x 3`` uint8 RGB. Needs dlib (imported here only).
    """
    import dlib  # noqa: PLC0415 - optional dependency

    return np.asarray(dlib.get_face_chip(np.ascontiguousarray(rgb, dtype=np.uint8), shape, size=size, padding=padding))


def chips_to_tensor(chips: np.ndarray | list[np.ndarray]) -> torch.Tensor:
    """``[N,]HxWx3`` uint8 RGB chips -> ``[N,3,H,W]`` float32 in 0..255, the module's input."""
    arr = np.asarray(chips)
    if arr.ndim == 3:
        arr = arr[None]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2))).float()

