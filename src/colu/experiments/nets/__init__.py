"""Networks for the larger experiments: the CIFAR ResNet family, a small GPT, and a FLOPs counter.

Each network takes its activation from a factory ``act(channels) -> nn.Module``
called once per activation site with the number of channels there, so a
component-wise activation (``lambda c: nn.ReLU()``) and a cone activation
(``lambda c: colu.CoLU(cone_dim=4, dim=1)`` for images,
``dim=-1`` for token features) plug in alike.
"""

from .flops import forward_flops_per_example
from .gpt import GPT, GPTConfig
from .resnet import BasicBlock, CifarResNet, resnet_cifar

__all__ = ["BasicBlock", "CifarResNet", "GPT", "GPTConfig", "forward_flops_per_example", "resnet_cifar"]
