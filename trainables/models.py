"""The model registry: small CNNs from the BloodMNIST seed and torchvision backbones.

    model = build_model("resnet18", num_outputs=9, channels=3, image_size=28, dropout=0.2,
                        weights="none")        # or "imagenet" or a path to a state-dict file
    set_backbone_frozen(model, True)           # head-only training; frozen BatchNorm in eval mode
    layer = model.cam_layer                    # what Grad-CAM looks at

Every model is a `Classifier`: a `backbone` that maps images to a feature vector and a `head`
(dropout, then the last linear layer) so freezing, dropout and Grad-CAM work the same for all.
ResNets get a small stem for images <= 64 px (3x3 stride-1 conv, no max-pool), as MedMNIST's
baselines do. One-channel inputs are handled in the first conv (pretrained filters are summed
over RGB, as timm does).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from trainables.unet import ENCODERS, IMAGENET_ARCH, build_unet

if TYPE_CHECKING:
    import torchvision

SMALL_STEM_MAX = 64


class Classifier(nn.Module):
    """backbone -> feature vector -> head. `cam_layer` is the last convolutional stage."""

    def __init__(self, backbone: nn.Module, head: nn.Module, cam_layer: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self._cam_layer = [cam_layer]  # a list, so it is not registered twice in state_dict

    @property
    def cam_layer(self) -> nn.Module:
        return self._cam_layer[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _conv_block(cin: int, cout: int, batchnorm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(cout))
    return [*layers, nn.ReLU(inplace=True)]


def simple_cnn(channels: int) -> tuple[nn.Module, int, nn.Module]:
    """The BloodMNIST seed's 3-conv CNN (32-64-128 filters, max-pool after each)."""
    convs = [nn.Sequential(*_conv_block(c, o, False)) for c, o in ((channels, 32), (32, 64))]
    last = nn.Sequential(*_conv_block(64, 128, False))
    features = nn.Sequential(
        convs[0], nn.MaxPool2d(2), convs[1], nn.MaxPool2d(2), last, nn.AdaptiveAvgPool2d(1)
    )
    return nn.Sequential(features, nn.Flatten()), 128, last


def deeper_cnn(channels: int) -> tuple[nn.Module, int, nn.Module]:
    """The BloodMNIST seed's 4-block CNN: (conv-BN-ReLU) x2 then max-pool, 32..256 filters."""
    widths = (channels, 32, 64, 128, 256)
    blocks = [
        nn.Sequential(*_conv_block(cin, cout, True), *_conv_block(cout, cout, True))
        for cin, cout in zip(widths[:-1], widths[1:], strict=True)
    ]
    layers: list[nn.Module] = []
    for block in blocks[:-1]:
        layers += [block, nn.MaxPool2d(2)]
    features = nn.Sequential(*layers, blocks[-1], nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return features, 256, blocks[-1]


def _adapt_first_conv(conv: nn.Conv2d, channels: int, small_stem: bool) -> nn.Conv2d:
    """The first conv for `channels` inputs (and a 3x3 stride-1 kernel for small images).

    Pretrained filters carry over: summed over RGB for one channel, and for the small stem the
    centre 3x3 of each 7x7 filter.
    """
    kernel, stride, padding = (
        (3, 1, 1) if small_stem else (conv.kernel_size, conv.stride, conv.padding)
    )
    new = nn.Conv2d(channels, conv.out_channels, kernel, stride, padding, bias=False)
    with torch.no_grad():
        w = conv.weight
        if small_stem and w.shape[-1] > 3:
            c = w.shape[-1] // 2
            w = w[..., c - 1 : c + 2, c - 1 : c + 2]
        if channels == 1:
            w = w.sum(dim=1, keepdim=True)
        if w.shape == new.weight.shape:
            new.weight.copy_(w)
    return new


def _resnet(arch: str) -> Callable[..., tuple[nn.Module, int, nn.Module]]:
    def build(channels: int, image_size: int, weights: str) -> tuple[nn.Module, int, nn.Module]:
        net = _torchvision_model(arch, weights)
        small = image_size <= SMALL_STEM_MAX
        if channels != 3 or small:
            net.conv1 = _adapt_first_conv(net.conv1, channels, small)
        if small:
            net.maxpool = nn.Identity()
        width = net.fc.in_features
        net.fc = nn.Identity()
        return net, width, net.layer4[-1]

    return build


def _efficientnet(arch: str) -> Callable[..., tuple[nn.Module, int, nn.Module]]:
    def build(channels: int, image_size: int, weights: str) -> tuple[nn.Module, int, nn.Module]:
        net = _torchvision_model(arch, weights)
        stem = net.features[0][0]
        if channels != 3:
            net.features[0][0] = _adapt_first_conv(stem, channels, small_stem=False)
        width = net.classifier[-1].in_features
        net.classifier = nn.Identity()
        return net, width, net.features[-1]

    return build


def _custom(fn: Callable[[int], tuple[nn.Module, int, nn.Module]]) -> Callable:
    def build(channels: int, image_size: int, weights: str) -> tuple[nn.Module, int, nn.Module]:
        if weights != "none":
            raise ValueError(
                f"{fn.__name__} has no pretrained weights; use --weights none with it"
            )
        return fn(channels)

    return build


MODELS: dict[str, Callable[..., tuple[nn.Module, int, nn.Module]]] = {
    "simple_cnn": _custom(simple_cnn),
    "deeper_cnn": _custom(deeper_cnn),
    "resnet18": _resnet("resnet18"),
    "resnet50": _resnet("resnet50"),
    "efficientnet_b3": _efficientnet("efficientnet_b3"),
}
PRETRAINED = ("resnet18", "resnet50", "efficientnet_b3", *IMAGENET_ARCH)
SEGMENTERS = tuple(ENCODERS)
"""U-Nets (`trainables.unet`): one logit per pixel, for segmentation tasks."""


def check_model(name: str, kind) -> None:
    """A ValueError naming the models that fit when `name` is unknown or does not fit `kind`
    (a `trainables.kinds.Kind`: a U-Net for segmentation, a classifier otherwise). Trials and
    the driver (before Ray starts) both ask this."""
    fitting = kind.models()
    if name in fitting:
        return
    known = name in MODELS or name in SEGMENTERS
    what = f"does not fit a {kind.name} task" if known else "is not a model"
    raise ValueError(f"model {name!r} {what}; choose one of: {', '.join(fitting)}")


def build_model(
    name: str,
    num_outputs: int,
    channels: int,
    image_size: int,
    dropout: float = 0.0,
    weights: str = "none",
    head_hidden: int = 0,
) -> Classifier:
    """A `Classifier` from the registry; `weights` is `none`, `imagenet` or a state-dict path.

    The head is dropout then a linear layer, or with `head_hidden` > 0 the malaria seed's
    Linear(width, hidden) - ReLU - Dropout - Linear(hidden, outputs).
    """
    if name not in MODELS and name not in SEGMENTERS:
        choices = ", ".join([*MODELS, *SEGMENTERS])
        raise ValueError(f"{name!r} is not a model; choose one of: {choices}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout {dropout} must lie in [0, 1)")
    if name in SEGMENTERS:
        return build_unet(
            name, num_outputs, channels, image_size, dropout, weights, imagenet=load_imagenet_state
        )
    backbone, width, cam_layer = MODELS[name](channels, image_size, weights)
    if head_hidden:
        head = nn.Sequential(
            nn.Linear(width, head_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(head_hidden, num_outputs),
        )
    else:
        head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, num_outputs))
    return Classifier(backbone, head, cam_layer)


def imagenet_weights(arch: str) -> torchvision.models.WeightsEnum:
    """torchvision's default ImageNet weights enum for `arch`."""
    import torchvision  # here, not at import: it costs every driver process ~1.4 s (dynamo)

    return torchvision.models.get_model_weights(arch).DEFAULT


def _torchvision_model(arch: str, weights: str) -> nn.Module:
    import torchvision

    net = torchvision.models.get_model(arch, weights=None)
    if weights == "none":
        return net
    if weights == "imagenet":
        state = load_imagenet_state(arch)
    elif os.path.isfile(weights):
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    else:
        raise ValueError(
            f"--weights {weights!r}: not 'none', 'imagenet' or an existing state-dict file"
        )
    net.load_state_dict(state)
    return net


def load_imagenet_state(arch: str) -> dict[str, torch.Tensor]:
    """ImageNet weights through torchvision's own cache; offline, an error saying what to do.
    A U-Net's name stands for its encoder's torchvision architecture."""
    arch = IMAGENET_ARCH.get(arch, arch)
    enum = imagenet_weights(arch)
    cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(enum.url))
    try:
        return enum.get_state_dict(progress=False, check_hash=False)
    except Exception as err:  # URLError, HTTPError, socket errors: all mean "not fetched"
        raise RuntimeError(
            f"could not fetch ImageNet weights for {arch} ({type(err).__name__}: {err}). "
            f"torchvision looks for {cache}; download {enum.url} there (or set TORCH_HOME), "
            f"pass a state-dict file with --weights PATH, or train from scratch with "
            f"--weights none"
        ) from err


def set_backbone_frozen(model: Classifier, frozen: bool) -> None:
    """Freeze or unfreeze everything but the head; frozen BatchNorm stays in eval mode."""
    model.backbone.requires_grad_(not frozen)
    if frozen:
        model.backbone.eval()
    elif model.training:
        model.backbone.train()


def train_mode(model: Classifier, backbone_frozen: bool) -> None:
    """`model.train()` that keeps a frozen backbone's BatchNorm statistics fixed."""
    model.train()
    if backbone_frozen:
        model.backbone.eval()
