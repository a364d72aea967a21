"""The networks of the AGD paper's experiments, built from torchvision where it has them.

Every builder takes ``bias``. ``bias=False`` gives the variant the paper trains (with every rule,
baselines included): no bias anywhere and ``BatchNorm2d(affine=False)``, so that the only
parameters are 2-D matrices and 4-D kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmark.tasks.base import ScaledReLU, mlp


def fcn(in_features: int, num_classes: int, depth: int, width: int, bias: bool) -> nn.Sequential:
    """The paper's fully connected network: ``depth`` Linear layers, ``ScaledReLU`` between them.

    ``in → width``, ``depth − 2`` times ``width → width``, ``width → num_classes`` (depth 1 is a
    linear classifier). The input is flattened first.
    """
    sizes = [in_features, *[width] * (depth - 1), num_classes]
    return nn.Sequential(nn.Flatten(), *mlp(sizes, ScaledReLU, bias))


def strip_affine(model: nn.Module) -> nn.Module:
    """Remove every bias and BatchNorm affine from ``model``, in place (the bias-free variant).

    torchvision's builders initialise BatchNorm weights, which fails for ``affine=False``; so the
    model is built as usual and its norms are swapped afterwards.
    """
    for name, child in list(model.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            norm = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, affine=False)
            setattr(model, name, norm)
        else:
            strip_affine(child)
    if isinstance(model, nn.Linear | nn.Conv2d) and model.bias is not None:
        model.register_parameter("bias", None)
    return model


def cifar_vgg16(num_classes: int, bias: bool) -> nn.Sequential:
    """VGG-16 for 32×32 inputs: torchvision's configuration "D" with BatchNorm, then one Linear(512, C).

    The same network as kuangliu/pytorch-cifar's ``VGG('VGG16')``, which jxbz/agd uses: 13 conv3×3
    layers, each followed by BatchNorm and ReLU, five max-pools down to 1×1, no 4096-wide head.
    """
    from torchvision.models import vgg  # imported here: torchvision takes seconds, most tasks never need it

    features = vgg.make_layers(vgg.cfgs["D"], batch_norm=True)
    model = nn.Sequential(features, nn.Flatten(), nn.Linear(512, num_classes))
    return model if bias else strip_affine(model)  # type: ignore[return-value]


def cifar_resnet18(num_classes: int, bias: bool) -> nn.Module:
    """torchvision's ResNet-18 with the usual CIFAR stem: conv3×3 stride 1 and no max-pool.

    jxbz/agd uses a pre-activation ResNet-18; this is the post-activation one, with the same
    number of weight tensors (21).
    """
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model if bias else strip_affine(model)


def imagenet_resnet50(num_classes: int, bias: bool) -> nn.Module:
    """torchvision's ResNet-50 (stride on the 3×3 conv), channels_last and run under bf16 autocast on CUDA."""
    from torchvision.models import resnet50

    model = resnet50(num_classes=num_classes)
    if not bias:
        strip_affine(model)
    return BF16Autocast(model.to(memory_format=torch.channels_last))


class BF16Autocast(nn.Module):
    """Runs ``net`` under bfloat16 autocast when its input is on CUDA, and returns float32 outputs.

    The train loop calls the model directly, so the autocast context has to live in the model.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=x.is_cuda):
            out: Tensor = self.net(x)
        return out.float()
