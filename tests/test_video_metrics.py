"""Video metrics: PSNR/SSIM on hand-computed cases, the Fréchet distance against scipy, and the
Flax feature nets (LPIPS, FID InceptionV3, I3D) against independent PyTorch models written here
in the public module layouts, converted by `mtvjax.evaluate.feature_nets.convert`.

The torch models below follow the public code (torchvision AlexNet/VGG16 `features` + the lpips
package's heads; pytorch-fid's FIDInceptionA/C/E; piergiaj/pytorch-i3d's InceptionI3d) with a
`d` width divisor so the full block structure runs on CPU in a second; the full-width layouts are
checked on torch's meta device (shapes only).
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn as tnn
import torch.nn.functional as F
from flax import traverse_util

from mtvjax.evaluate.feature_nets import convert as cfn
from mtvjax.checkpoint.conversion import ConversionError
from mtvjax.evaluate.feature_nets import layers as fl
from mtvjax.evaluate.feature_nets import registry as fn
from mtvjax.evaluate import video_metrics as vm

torch.set_num_threads(2)
RTOL = 1e-4


# =============================================================================================
# Independent PyTorch references (public module names)
# =============================================================================================

class ScalingLayer(tnn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.Tensor([-.030, -.088, -.188])[None, :, None, None])
        self.register_buffer("scale", torch.Tensor([.458, .448, .450])[None, :, None, None])

    def forward(self, x):
        return (x - self.shift) / self.scale


def torch_alexnet(d=1):
    """torchvision AlexNet (features + a small stand-in classifier, skipped by the converter)."""
    m = tnn.Module()
    m.features = tnn.Sequential(
        tnn.Conv2d(3, 64 // d, 11, 4, 2), tnn.ReLU(), tnn.MaxPool2d(3, 2),
        tnn.Conv2d(64 // d, 192 // d, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(3, 2),
        tnn.Conv2d(192 // d, 384 // d, 3, padding=1), tnn.ReLU(),
        tnn.Conv2d(384 // d, 256 // d, 3, padding=1), tnn.ReLU(),
        tnn.Conv2d(256 // d, 256 // d, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(3, 2))
    m.classifier = tnn.Sequential(tnn.Dropout(), tnn.Linear(8, 4))
    return m, [1, 4, 7, 9, 11]


def torch_vgg16(d=1):
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers, cin = [], 3
    for v in cfg:
        if v == "M":
            layers.append(tnn.MaxPool2d(2, 2))
        else:
            layers += [tnn.Conv2d(cin, v // d, 3, padding=1), tnn.ReLU()]
            cin = v // d
    m = tnn.Module()
    m.features = tnn.Sequential(*layers)
    m.classifier = tnn.Sequential(tnn.Linear(8, 4))
    return m, [3, 8, 15, 22, 29]


class TorchLPIPS(tnn.Module):
    """The lpips package's LPIPS(net=..., lpips=True) forward, written from its source."""

    def __init__(self, backbone, taps, channels):
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.backbone, self.taps = backbone, taps
        for k, c in enumerate(channels):
            lin = tnn.Module()
            lin.model = tnn.Sequential(tnn.Dropout(), tnn.Conv2d(c, 1, 1, bias=False))
            setattr(self, f"lin{k}", lin)

    def feats(self, x):
        out = []
        for i, layer in enumerate(self.backbone.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
            if i == self.taps[-1]:
                break
        return out

    def forward(self, x0, x1):
        f0, f1 = self.feats(self.scaling_layer(x0)), self.feats(self.scaling_layer(x1))
        total = 0
        for k, (a, b) in enumerate(zip(f0, f1)):
            na = a / (torch.sqrt(torch.sum(a ** 2, dim=1, keepdim=True)) + 1e-10)
            nb = b / (torch.sqrt(torch.sum(b ** 2, dim=1, keepdim=True)) + 1e-10)
            total = total + getattr(self, f"lin{k}").model((na - nb) ** 2).mean([2, 3])
        return total[:, 0]


class BasicConv2d(tnn.Module):
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = tnn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = tnn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class FIDInceptionA(tnn.Module):
    def __init__(self, cin, pool_features, d):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64 // d, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48 // d, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48 // d, 64 // d, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64 // d, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64 // d, 96 // d, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96 // d, 96 // d, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features // d, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(tnn.Module):
    def __init__(self, cin, d):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384 // d, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64 // d, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64 // d, 96 // d, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96 // d, 96 // d, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionC(tnn.Module):
    def __init__(self, cin, c7, d):
        super().__init__()
        c7 //= d
        self.branch1x1 = BasicConv2d(cin, 192 // d, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192 // d, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192 // d, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192 // d, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for k in range(2, 6):
            bd = getattr(self, f"branch7x7dbl_{k}")(bd)
        bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(tnn.Module):
    def __init__(self, cin, d):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192 // d, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192 // d, 320 // d, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192 // d, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192 // d, 192 // d, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192 // d, 192 // d, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192 // d, 192 // d, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionE(tnn.Module):
    def __init__(self, cin, d, last):
        super().__init__()
        self.last = last
        self.branch1x1 = BasicConv2d(cin, 320 // d, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384 // d, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384 // d, 384 // d, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384 // d, 384 // d, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448 // d, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448 // d, 384 // d, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384 // d, 384 // d, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384 // d, 384 // d, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192 // d, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.last:   # FIDInceptionE_2: max pool
            bp = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:           # FIDInceptionE_1: average pool without the padding
            bp = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        return torch.cat([b1, b3, bd, self.branch_pool(bp)], 1)


class TorchFIDInception(tnn.Module):
    """pytorch-fid's fid_inception_v3() (torchvision inception_v3 names, FID blocks) with its
    InceptionV3 wrapper's resize to `size` and scaling to [-1, 1]."""

    def __init__(self, d=1, num_classes=1008):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32 // d, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32 // d, 32 // d, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32 // d, 64 // d, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64 // d, 80 // d, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80 // d, 192 // d, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192 // d, 32, d)
        self.Mixed_5c = FIDInceptionA(256 // d, 64, d)
        self.Mixed_5d = FIDInceptionA(288 // d, 64, d)
        self.Mixed_6a = InceptionB(288 // d, d)
        self.Mixed_6b = FIDInceptionC(768 // d, 128, d)
        self.Mixed_6c = FIDInceptionC(768 // d, 160, d)
        self.Mixed_6d = FIDInceptionC(768 // d, 160, d)
        self.Mixed_6e = FIDInceptionC(768 // d, 192, d)
        self.Mixed_7a = InceptionD(768 // d, d)
        self.Mixed_7b = FIDInceptionE(1280 // d, d, last=False)
        self.Mixed_7c = FIDInceptionE(2048 // d, d, last=True)
        self.fc = tnn.Linear(2048 // d, num_classes)

    def forward(self, x, size=299):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        pool = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
        return pool, self.fc(pool)


def _same_pad(sizes, kernel, stride):
    pads = []
    for s, k, st in zip(sizes, kernel, stride):
        total = max(k - st, 0) if s % st == 0 else max(k - (s % st), 0)
        pads.append((total // 2, total - total // 2))
    (tf, tb), (hf, hb), (wf, wb) = pads
    return (wf, wb, hf, hb, tf, tb)


class MaxPool3dSamePadding(tnn.MaxPool3d):
    def forward(self, x):
        x = F.pad(x, _same_pad(x.shape[2:], self.kernel_size, self.stride))
        return super().forward(x)


class Unit3D(tnn.Module):
    def __init__(self, cin, cout, kernel=(1, 1, 1), stride=(1, 1, 1), activation=True,
                 use_batch_norm=True, use_bias=False):
        super().__init__()
        self.kernel, self.stride, self.activation = tuple(kernel), tuple(stride), activation
        self.use_batch_norm = use_batch_norm
        self.conv3d = tnn.Conv3d(cin, cout, self.kernel, self.stride, padding=0, bias=use_bias)
        if use_batch_norm:
            self.bn = tnn.BatchNorm3d(cout, eps=0.001, momentum=0.01)

    def forward(self, x):
        x = self.conv3d(F.pad(x, _same_pad(x.shape[2:], self.kernel, self.stride)))
        if self.use_batch_norm:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class InceptionModule(tnn.Module):
    def __init__(self, cin, oc):
        super().__init__()
        self.b0 = Unit3D(cin, oc[0])
        self.b1a = Unit3D(cin, oc[1])
        self.b1b = Unit3D(oc[1], oc[2], (3, 3, 3))
        self.b2a = Unit3D(cin, oc[3])
        self.b2b = Unit3D(oc[3], oc[4], (3, 3, 3))
        self.b3a = MaxPool3dSamePadding(kernel_size=(3, 3, 3), stride=(1, 1, 1), padding=0)
        self.b3b = Unit3D(cin, oc[5])

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)),
                          self.b3b(self.b3a(x))], 1)


class TorchI3D(tnn.Module):
    """piergiaj/pytorch-i3d InceptionI3d up to the logits (VideoGPT's mean over time); the
    avg pool kernel is [2, 7, 7] in the port, `pool_kernel` here for small test inputs."""

    def __init__(self, d=1, num_classes=400, pool_kernel=(2, 7, 7)):
        super().__init__()

        def c(*xs):
            return [x // d for x in xs]

        self.Conv3d_1a_7x7 = Unit3D(3, 64 // d, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSamePadding((1, 3, 3), (1, 2, 2), padding=0)
        self.Conv3d_2b_1x1 = Unit3D(64 // d, 64 // d)
        self.Conv3d_2c_3x3 = Unit3D(64 // d, 192 // d, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSamePadding((1, 3, 3), (1, 2, 2), padding=0)
        self.Mixed_3b = InceptionModule(192 // d, c(64, 96, 128, 16, 32, 32))
        self.Mixed_3c = InceptionModule(256 // d, c(128, 128, 192, 32, 96, 64))
        self.MaxPool3d_4a_3x3 = MaxPool3dSamePadding((3, 3, 3), (2, 2, 2), padding=0)
        self.Mixed_4b = InceptionModule(480 // d, c(192, 96, 208, 16, 48, 64))
        self.Mixed_4c = InceptionModule(512 // d, c(160, 112, 224, 24, 64, 64))
        self.Mixed_4d = InceptionModule(512 // d, c(128, 128, 256, 24, 64, 64))
        self.Mixed_4e = InceptionModule(512 // d, c(112, 144, 288, 32, 64, 64))
        self.Mixed_4f = InceptionModule(528 // d, c(256, 160, 320, 32, 128, 128))
        self.MaxPool3d_5a_2x2 = MaxPool3dSamePadding((2, 2, 2), (2, 2, 2), padding=0)
        self.Mixed_5b = InceptionModule(832 // d, c(256, 160, 320, 32, 128, 128))
        self.Mixed_5c = InceptionModule(832 // d, c(384, 192, 384, 48, 128, 128))
        self.avg_pool = tnn.AvgPool3d(kernel_size=pool_kernel, stride=(1, 1, 1))
        self.dropout = tnn.Dropout(0.5)
        self.logits = Unit3D(1024 // d, num_classes, activation=False, use_batch_norm=False,
                             use_bias=True)
        self.order = ["Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3",
                      "MaxPool3d_3a_3x3", "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3",
                      "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f",
                      "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c"]

    def forward(self, x):
        for name in self.order:
            x = getattr(self, name)(x)
        pooled = self.avg_pool(x)
        logits = self.logits(self.dropout(pooled)).squeeze(3).squeeze(3).mean(2)
        return pooled.squeeze(3).squeeze(3).mean(2), logits


def randomize(model: tnn.Module, seed: int = 0) -> tnn.Module:
    """He-normal conv/linear weights, random biases and batch-norm statistics; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (tnn.Conv2d, tnn.Conv3d, tnn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            if isinstance(m, (tnn.BatchNorm2d, tnn.BatchNorm3d)):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return model.eval()


def lpips_files(tmp_path, net="alex", d=1, seed=0):
    """(torch LPIPS, backbone file, heads file): torchvision and lpips v0.1 layouts."""
    backbone, taps = (torch_alexnet if net == "alex" else torch_vgg16)(d)
    channels = [backbone.features[t - 1].out_channels for t in taps]
    model = randomize(TorchLPIPS(backbone, taps, channels), seed)
    with torch.no_grad():   # lpips heads are non-negative
        for k in range(len(taps)):
            w = getattr(model, f"lin{k}").model[1].weight
            w.copy_(w.abs())
    torch.save(backbone.state_dict(), tmp_path / f"{net}_backbone.pth")
    heads = {k: v for k, v in model.state_dict().items() if k.startswith("lin")}
    torch.save(heads, tmp_path / f"{net}_lin.pth")
    return model, tmp_path / f"{net}_backbone.pth", tmp_path / f"{net}_lin.pth"


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


# =============================================================================================
# PSNR and SSIM
# =============================================================================================


def _images(seed=0, shape=(2, 24, 20, 3)):
    return np.random.default_rng(seed).uniform(0.0, 1.0, shape).astype(np.float32)


def _numpy_ssim(x, y, data_range=1.0):
    """Direct window-by-window SSIM of one [H, W, C] pair (independent of the separable code)."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for ch in range(x.shape[2]):
        for i in range(x.shape[0] - 10):
            for j in range(x.shape[1] - 10):
                a = x[i:i + 11, j:j + 11, ch].astype(np.float64)
                b = y[i:i + 11, j:j + 11, ch].astype(np.float64)
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
                cov = (w * (a - ma) * (b - mb)).sum()
                vals.append(((2 * ma * mb + c1) * (2 * cov + c2))
                            / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


class PixelMetricsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_identical_images(self):
        x = _images()
        p = self.variant(vm.psnr)(x, x)
        chex.assert_shape(p, (2,))
        assert np.all(np.isinf(np.asarray(p)))
        chex.assert_trees_all_close(self.variant(vm.ssim)(x, x), np.ones(2), atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_psnr_constant_offset(self):
        x = _images() * 0.8
        # MSE = 0.1² → 10 log10(1 / 0.01) = 20 dB; on the 0–255 scale the same.
        chex.assert_trees_all_close(self.variant(vm.psnr)(x + 0.1, x), np.full(2, 20.0),
                                    atol=1e-4)
        chex.assert_trees_all_close(
            self.variant(lambda a, b: vm.psnr(a, b, 255.0))(255 * (x + 0.1), 255 * x),
            np.full(2, 20.0), atol=1e-3)
        # uint8 frames through to_unit: offset of 5 levels everywhere
        u = (x * 200).astype(np.uint8)
        expected = 10 * np.log10(255.0 ** 2 / 25.0)
        chex.assert_trees_all_close(self.variant(vm.psnr)(vm.to_unit(u + 5), vm.to_unit(u)),
                                    np.full(2, expected), atol=1e-3)

    @chex.variants(with_jit=True, without_jit=True)
    def test_ssim_of_constant_images_by_hand(self):
        # One 11 x 11 window of constants a, b: variances and covariance vanish, so
        # SSIM = (2ab + C1) / (a² + b² + C1) with C1 = 0.01².
        a, b = 0.3, 0.5
        x, y = np.full((11, 11, 1), a, np.float32), np.full((11, 11, 1), b, np.float32)
        expected = (2 * a * b + 1e-4) / (a * a + b * b + 1e-4)
        chex.assert_trees_all_close(self.variant(vm.ssim)(x, y), expected, atol=1e-5)
        assert abs(expected - 0.8824) < 1e-3

    def test_ssim_matches_direct_window_loop(self):
        x = _images(1, (16, 18, 3))
        y = np.clip(x + np.random.default_rng(2).normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
        got = float(jax.jit(vm.ssim)(x, y))
        assert abs(got - _numpy_ssim(x, y)) < 1e-5
        assert 0.0 < got < 1.0
        m = vm.ssim_map(x, y)
        chex.assert_shape(m, (6, 8, 3))

    def test_gaussian_window(self):
        g = vm.gaussian_window()
        assert g.shape == (11,) and abs(g.sum() - 1) < 1e-6 and g.argmax() == 5
        np.testing.assert_allclose(g[4] / g[5], np.exp(-1 / (2 * 1.5 ** 2)), rtol=1e-6)

    def test_ssim_rejects_small_images(self):
        with pytest.raises(ValueError, match="at least 11 x 11"):
            vm.ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))


# =============================================================================================
# Fréchet distance
# =============================================================================================


def _spd(n, seed, rank=None, jitter=0.0):
    a = np.random.default_rng(seed).normal(size=(n, rank or n))
    return a @ a.T / n + jitter * np.eye(n)


@pytest.mark.parametrize("rank,jitter", [(None, 0.0), (None, 1e-3), (5, 1e-10), (5, 0.0)])
def test_sqrtm_psd_matches_scipy(rank, jitter):
    a = _spd(12, 0, rank, jitter)
    ours = vm.sqrtm_psd(a)
    ref = np.real(scipy.linalg.sqrtm(a))
    np.testing.assert_allclose(ours @ ours, a, atol=1e-10)
    np.testing.assert_allclose(ours, ref, atol=1e-5 if rank else 1e-9)
    assert np.all(np.linalg.eigvalsh(ours) > -1e-12)


@pytest.mark.parametrize("rank", [None, 6])
def test_trace_sqrtm_product_matches_scipy(rank):
    s1, s2 = _spd(10, 1, rank, 1e-9), _spd(10, 2, rank, 1e-9)
    ref = np.trace(np.real(scipy.linalg.sqrtm(s1 @ s2)))
    np.testing.assert_allclose(vm.trace_sqrtm_product(s1, s2), ref, rtol=1e-6)


def test_frechet_distance_cases():
    f = np.random.default_rng(3).normal(size=(40, 6))
    mu, sigma = vm.feature_stats(f)
    np.testing.assert_allclose(mu, f.mean(0))
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False))
    assert vm.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0, 0.0])
    assert vm.frechet_distance_from_features(f, f + shift) == pytest.approx(shift @ shift,
                                                                            rel=1e-9)
    # fewer samples than dimensions: singular covariances stay finite and real
    g = np.random.default_rng(4).normal(size=(5, 32))
    fd = vm.frechet_distance_from_features(g, g[::-1] * 1.5 + 1.0)
    assert np.isfinite(fd) and fd > 0
    # against the textbook formula with scipy on full-rank covariances
    h1, h2 = np.random.default_rng(5).normal(size=(2, 50, 4))
    (m1, c1), (m2, c2) = vm.feature_stats(h1), vm.feature_stats(h2 * 2 + 1)
    ref = (m1 - m2) @ (m1 - m2) + np.trace(c1 + c2 - 2 * np.real(scipy.linalg.sqrtm(c1 @ c2)))
    assert vm.frechet_distance(m1, c1, m2, c2) == pytest.approx(ref, rel=1e-9)
    with pytest.raises(ValueError, match="at least 2 samples"):
        vm.feature_stats(f[:1])


# =============================================================================================
# Feature nets vs PyTorch
# =============================================================================================


def test_resize_matches_torch_interpolate():
    x = np.random.default_rng(0).uniform(size=(2, 13, 21, 3)).astype(np.float32)
    for size in ((29, 7), (5, 40), (13, 21), (75, 75)):
        ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=size, mode="bilinear",
                            align_corners=False).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(fl.resize_bilinear(x, size), ref, atol=1e-5)
        np.testing.assert_allclose(np.asarray(jax.jit(fl.resize_bilinear, static_argnums=1)(
            jnp.asarray(x), size)), ref, atol=1e-5)


# XLA's CPU backend spends seconds optimising the tiny test convolutions; the unoptimised
# program computes the same values.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _apply(module, params, *args, **kwargs):
    return jax.jit(lambda p, *a: module.apply({"params": p}, *a, **kwargs),
                   compiler_options=FAST_COMPILE)(params, *args)


@pytest.mark.parametrize("net,d", [("alex", 1), ("vgg", 4)])
def test_lpips_matches_torch(tmp_path, net, d):
    model, backbone, heads = lpips_files(tmp_path, net, d)
    config, params, summary = cfn.load_params("lpips", backbone, heads)
    assert config["net"] == net and config["width_divisor"] == d
    assert any("classifier" in s for s in summary["skipped"])
    rng = np.random.default_rng(0)
    x0, x1 = rng.uniform(-1, 1, (2, 2, 128, 112, 3)).astype(np.float32)
    with torch.no_grad():
        ref = model(*(torch.from_numpy(x).permute(0, 3, 1, 2) for x in (x0, x1))).numpy()
    ours = _apply(fn.build(config), params, x0, x1)
    assert _rel(ours, ref) < RTOL, (ours, ref)
    assert np.all(np.abs(np.asarray(_apply(fn.build(config), params, x0, x0))) < 1e-9)
    # the lpips.LPIPS state dict in one file (net.slice{s}.{i}.*, scaling_layer buffers)
    if net == "alex":
        sd = {}
        for k, v in model.state_dict().items():
            if k.startswith("backbone.features."):
                i, rest = int(k.split(".")[2]), k[len("backbone.features."):]
                sd[f"net.slice{1 + sum(i > t for t in model.taps)}.{rest}"] = v
            elif not k.startswith("backbone."):
                sd[k] = v
        torch.save(sd, tmp_path / "lpips_full.pth")
        _, params2, _ = cfn.load_params("lpips", tmp_path / "lpips_full.pth")
        chex.assert_trees_all_equal(params, params2)
        sd["scaling_layer.scale"] = sd["scaling_layer.scale"] * 2
        torch.save(sd, tmp_path / "lpips_bad.pth")
        with pytest.raises(ConversionError, match="scaling_layer.scale"):
            cfn.load_params("lpips", tmp_path / "lpips_bad.pth")
        with pytest.raises(ConversionError, match="--lin"):
            cfn.load_params("lpips", backbone)


def test_fid_inception_matches_torch(tmp_path):
    d = 16
    model = randomize(TorchFIDInception(d, num_classes=24), seed=1)
    sd = model.state_dict()
    torch.save(sd, tmp_path / "pt_inception.pth")
    config, params, summary = cfn.load_params("inception", tmp_path / "pt_inception.pth")
    assert config["width_divisor"] == d and config["num_classes"] == 24
    assert summary["tensors"] == len([k for k in sd if "num_batches" not in k])
    x = np.random.default_rng(0).uniform(0, 1, (2, 64, 80, 3)).astype(np.float32)
    with torch.no_grad():
        ref_pool, ref_logits = model(torch.from_numpy(x).permute(0, 3, 1, 2), size=99)
    out = _apply(fn.build(config), params, x, resolution=99)
    assert out["pool"].shape == (2, 2048 // d)
    assert _rel(out["pool"], ref_pool.numpy()) < RTOL
    assert _rel(out["logits"], ref_logits.numpy()) < RTOL


def test_i3d_matches_torch(tmp_path):
    d = 8
    model = randomize(TorchI3D(d, num_classes=10, pool_kernel=(2, 1, 1)), seed=2)
    torch.save(model.state_dict(), tmp_path / "rgb_imagenet.pt")
    config, params, _ = cfn.load_params("i3d", tmp_path / "rgb_imagenet.pt")
    assert config["width_divisor"] == d and config["num_classes"] == 10
    x = np.random.default_rng(0).uniform(0, 1, (2, 16, 28, 36, 3)).astype(np.float32)
    xt = F.interpolate(torch.from_numpy(x).reshape(-1, 28, 36, 3).permute(0, 3, 1, 2),
                       size=(32, 32), mode="bilinear", align_corners=False)
    xt = xt.reshape(2, 16, 3, 32, 32).permute(0, 2, 1, 3, 4) * 2 - 1
    with torch.no_grad():
        ref_pool, ref_logits = model(xt)
    out = _apply(fn.build(config), params, x, resolution=32)
    assert out["pool"].shape == (2, 1024 // d) and out["logits"].shape == (2, 10)
    assert _rel(out["pool"], ref_pool.numpy()) < RTOL
    assert _rel(out["logits"], ref_logits.numpy()) < RTOL


@pytest.mark.parametrize("kind", ["lpips_alex", "lpips_vgg", "inception", "i3d"])
def test_full_width_public_layouts_convert(kind):
    """The public networks' complete state dicts (shapes from torch's meta device) satisfy the
    name tables and shape rules of the full-width Flax nets."""
    with torch.device("meta"):
        if kind.startswith("lpips"):
            net = kind.split("_")[1]
            backbone, taps = (torch_alexnet if net == "alex" else torch_vgg16)()
            channels = [backbone.features[t - 1].out_channels for t in taps]
            sd = TorchLPIPS(backbone, taps, channels).state_dict()
            sd = {k[len("backbone."):] if k.startswith("backbone.") else k: v
                  for k, v in sd.items() if not k.startswith("scaling")}
            expected = {"net": net, "width_divisor": 1}
        elif kind == "inception":
            sd, expected = TorchFIDInception().state_dict(), {"num_classes": 1008}
        else:
            sd, expected = TorchI3D().state_dict(), {"num_classes": 400}
    source = cfn._Merged([], kind)
    source.shapes = {k: tuple(v.shape) for k, v in sd.items()}
    name = kind.split("_")[0]
    cfn._prepare(name, source)
    config = cfn.infer_net_config(name, source)
    assert config["width_divisor"] == 1 and expected.items() <= config.items()
    targets = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(
        fn.abstract_params(fn.build(config), name)).items()}
    cfn.check_layout(source.shapes, targets, cfn.TABLES[name](config), cfn.RULES, kind)
    n = sum(int(np.prod(s)) for s in source.shapes.values())
    assert n == sum(int(np.prod(s)) for s in targets.values())
    if kind == "inception":   # pytorch-fid's FID InceptionV3: weights + BN statistics
        assert n == 23_885_392


def test_conversion_errors_name_keys(tmp_path):
    model = randomize(TorchI3D(8, num_classes=10, pool_kernel=(2, 1, 1)))
    sd = model.state_dict()
    sd["extra.weight"] = torch.zeros(3)
    del sd["Mixed_4c.b1b.bn.running_var"]
    sd["Mixed_5c.b0.conv3d.weight"] = torch.zeros(1, 2, 1, 1, 1)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(ConversionError) as e:
        cfn.load_params("i3d", tmp_path / "bad.pt")
    msg = str(e.value)
    assert "extra.weight" in msg and "Mixed_4c.b1b.bn.running_var" in msg
    assert "Mixed_5c.b0.conv3d.weight: shape (1, 2, 1, 1, 1)" in msg
    with pytest.raises(ConversionError, match="Conv2d_1a_3x3.conv.weight"):
        cfn.load_params("inception", tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        cfn.load_params("i3d", tmp_path / "nothing.pt")
