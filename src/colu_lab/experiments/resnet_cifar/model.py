"""The CIFAR-10 ResNets of He et al. (2016), Section 4.2, with the activation as a parameter.

Depth ``6n + 2``: a 3x3 convolution to 16 channels, then three stages of
``n`` basic blocks at 16, 32 and 64 channels (the first block of stages 2
and 3 halves the resolution with stride 2), global average pooling and a
linear classifier. Shortcuts are parameter-free ("option A"): the identity,
or, where a block changes shape, the input subsampled by 2 and padded with
zero channels. ResNet-20 has 0.27 M parameters and ResNet-56 0.85 M.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

ActFactory = Callable[[int], nn.Module]
DEPTHS = (20, 32, 44, 56, 110)  # the depths of the paper's Table 6 (He et al.); any 6n + 2 works


def relu_factory(channels: int) -> nn.Module:
    """The default activation factory: ReLU whatever the width."""
    return nn.ReLU()


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and append zero channels up to ``out_channels``.

    The input's channels keep their positions (channel ``i`` in is channel
    ``i`` out), so the residual sum adds to the first ``in_channels``
    channels and leaves the new ones to the residual branch.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"a zero-padding shortcut cannot shrink {in_channels} channels to {out_channels}")
        self.extra = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra}"


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm; the second activation comes after the residual sum.

    Args:
        in_channels: channels in.
        out_channels: channels out.
        stride: stride of the first convolution (2 where the stage halves the resolution).
        act: activation factory, called with ``out_channels`` for each of the two activations.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, act: ActFactory):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act1 = act(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act2 = act(out_channels)
        reshape = stride != 1 or in_channels != out_channels
        self.shortcut = ZeroPadShortcut(in_channels, out_channels, stride) if reshape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images.

    Args:
        depth: total number of weighted layers, ``6n + 2`` (20, 32, 44, 56,
            110, ...); default 56.
        act: activation factory ``act(channels) -> nn.Module`` (default ReLU).
            For CoLU on NCHW feature maps use
            ``lambda c: colu.CoLU(cone_dim=4, dim=1)``: the cones run over
            channels, so every width here (16, 32, 64) must suit the cone
            spec.
        num_classes: outputs of the classifier (default 10).
        in_channels: image channels (default 3).
        widths: channels of the three stages (default ``(16, 32, 64)``).

    Shape:
        - Input: ``(N, in_channels, H, W)`` (32x32 for CIFAR).
        - Output: ``(N, num_classes)`` logits.
    """

    def __init__(self, depth: int = 56, act: ActFactory | None = None, num_classes: int = 10,
                 in_channels: int = 3, widths: tuple = (16, 32, 64)):
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth={depth!r}: a CIFAR ResNet has depth 6n + 2 with n >= 1, "
                             f"e.g. {', '.join(map(str, DEPTHS))}")
        act = act or relu_factory
        self.depth = depth
        self.blocks_per_stage = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        self.act = act(widths[0])
        stages, prev = [], widths[0]
        for i, width in enumerate(widths):
            blocks = []
            for j in range(self.blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(prev, width, stride, act))
                prev = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(prev, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # the initialisation of He et al. 2015 that the ResNet paper uses; fan-out, as torchvision does
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.conv(x)))
        x = self.stages(x)
        return self.fc(x.mean((2, 3)))


def resnet_cifar(depth: int = 56, act: ActFactory | None = None, **kwargs) -> CifarResNet:
    """:class:`CifarResNet` of the given depth (default 56); ``kwargs`` go to its constructor."""
    return CifarResNet(depth, act, **kwargs)
