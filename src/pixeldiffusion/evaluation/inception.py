"""The Inception-v3 of the Frechet Inception Distance (Heusel et al. 2017), as pytorch-fid ports it from TensorFlow.

The network is torchvision's Inception3 with the FID graph's differences (pytorch-fid's FIDInceptionA/C/E blocks:
average pools that ignore the padding, a max pool in the last block), up to the 2048-d global average pool; its
modules carry torchvision's names, so pytorch-fid's weights file pt_inception-2015-12-05-6726825d.pth loads as it
is (its ImageNet head fc.* is not used). The weights are never downloaded unasked: they are read from a file the
user gives, or from the cache where `pixeldiffusion download-inception` puts them, with torch.load(weights_only=True)
(tensors only, no code from the file).
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pixeldiffusion.data.download import WEIGHTS, weights_path
from pixeldiffusion.errors import PixelDiffusionError

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
DOWNLOAD_COMMAND = "pixeldiffusion download-inception"
SIZE = 299  # images are resized bilinearly to SIZE x SIZE


class BasicConv2d(nn.Module):
    """Convolution (no bias), BatchNorm (eps 0.001), ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def avg_pool(x: torch.Tensor) -> torch.Tensor:
    """TensorFlow's 3x3 average pool: padded pixels are not counted in the average."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """1x1 | 1x1-5x5 | 1x1-3x3-3x3 | pool-1x1 (FIDInceptionA)."""

    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(avg_pool(x)),
            ],
            1,
        )


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17: 3x3/2 | 1x1-3x3-3x3/2 | max pool/2."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), deep, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    """1x1 | factorised 7x7 | twice factorised 7x7 | pool-1x1 (FIDInceptionC)."""

    def __init__(self, c_in: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = layer(double)
        return torch.cat([self.branch1x1(x), single, double, self.branch_pool(avg_pool(x))], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max pool/2."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), deep, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1: FIDInceptionE_1 with the average pool, FIDInceptionE_2
    with a 3x3 max pool (as the FID graph has it)."""

    def __init__(self, c_in: int, *, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else avg_pool(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(a),
                self.branch3x3_2b(a),
                self.branch3x3dbl_3a(b),
                self.branch3x3dbl_3b(b),
                self.branch_pool(pooled),
            ],
            1,
        )


class FIDInception(nn.Module):
    """Inception-v3 up to its pool3 features: images (N, 3, 299, 299) in [-1, 1] -> (N, 2048)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3))


@dataclass(frozen=True)
class InceptionExtractor:
    """The FID Inception with its weights, ready to embed images."""

    network: FIDInception
    path: Path
    fingerprint: str  # SHA-256 of the weights file

    @property
    def name(self) -> str:
        """ "inception-v3 pt_inception-2015-12-05" for pytorch-fid's file; other weights are named by their hash."""
        if self.fingerprint == WEIGHTS[WEIGHTS_FILE][1]:
            return "inception-v3 pt_inception-2015-12-05"
        return f"inception-v3 {self.path.name} (sha256 {self.fingerprint[:16]}, not pytorch-fid's file)"

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """pool3 features (N, 2048) of images (N, C, H, W) in [-1, 1]: grey is replicated to 3 channels, and the
        images are resized bilinearly to 299 x 299 (which commutes with pytorch-fid's scaling from [0, 1])."""
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return self.network(F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False))


def load_inception(path: str | Path | None = None, *, device: str | torch.device = "cpu") -> InceptionExtractor:
    """The FID Inception with the weights at `path` (default: the cache's copy of pytorch-fid's file)."""
    default = weights_path(WEIGHTS_FILE)
    path = Path(path) if path else default
    if not path.is_file():
        url = WEIGHTS[WEIGHTS_FILE][0][0] + WEIGHTS_FILE
        fetch = f"run `{DOWNLOAD_COMMAND}` (or download {url} to {path})"
        if path != default:
            fetch = f"download {url} to it, or run `{DOWNLOAD_COMMAND}` and leave out --inception-weights"
        raise PixelDiffusionError(f"no Inception weights at {path}: {fetch}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise PixelDiffusionError(f"{path} is not a loadable PyTorch weights file: {str(e).splitlines()[0]}") from e
    if not isinstance(state, dict):
        raise PixelDiffusionError(f"{path} holds a {type(state).__name__}, not a state dict of weights")
    network = FIDInception()
    try:
        network.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise PixelDiffusionError(f"{path} does not hold the FID Inception's weights ({detail})") from e
    fingerprint = hashlib.sha256(path.read_bytes()).hexdigest()
    return InceptionExtractor(network.to(device).eval().requires_grad_(False), path, fingerprint)
