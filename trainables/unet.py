"""U-Nets whose encoder is a classification backbone (segmentation-models-pytorch).

    model = build_unet("unet-resnet18", channels=1, image_size=128, dropout=0.1,
                       weights="none")   # or "imagenet", or a medsweep classification checkpoint
    set_backbone_frozen(model, True)     # trainables.models: the encoder frozen, BatchNorm in eval
    mask_logits = model(images)          # (N, 1, H, W)

`UNet` wraps `smp.Unet` in the attribute shape of `trainables.models.Classifier`: `backbone`
(the encoder: smp's ResNet encoders are torchvision ResNets without `fc`), `head` (the decoder
and the segmentation head, always trained) and `cam_layer`, so freezing, the train loop and
Grad-CAM treat it as they treat a classifier. `dropout` is a `Dropout2d` on the decoder's output.

Weights for the encoder: `none`; `imagenet` (torchvision's ResNet weights through
`trainables.models.load_imagenet_state`, whose offline error names the file and where to put
it); or a path: a medsweep checkpoint of a classifier with the same backbone (its `backbone.*`
weights: the seed's "encoder from part 1"), or a torchvision state-dict file. A first conv of
another shape is fitted (summed over RGB for one channel; a 3x3 small-stem kernel placed at the
centre of the 7x7 one); any other mismatch is an error naming the keys.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

ENCODERS = {
    "unet-resnet18": "resnet18",
    "unet-resnet34": "resnet34",
    "unet-efficientnet-b0": "efficientnet-b0",
}
"""Model name -> smp encoder name."""
IMAGENET_ARCH = {"unet-resnet18": "resnet18", "unet-resnet34": "resnet34"}
"""Models whose encoder takes torchvision's ImageNet ResNet weights (and medsweep ResNets)."""
CHECKPOINT_FORMAT_PREFIX = "medsweep-checkpoint/"
STRIDE = 32  # the encoder halves the image five times: sides must be multiples of this


class UNet(nn.Module):
    """encoder (`backbone`) -> decoder + segmentation head (`head`); one logit per pixel."""

    def __init__(self, net: nn.Module, dropout: float):
        super().__init__()
        self.backbone = net.encoder
        self.head = nn.ModuleDict(
            {
                "decoder": net.decoder,
                "dropout": nn.Dropout2d(dropout),
                "out": net.segmentation_head,
            }
        )
        # the decoder stage at 1/4 of the input: fine enough to show where, coarse enough
        # not to be the prediction itself
        self._cam_layer = [net.decoder.blocks[2]]

    @property
    def cam_layer(self) -> nn.Module:
        return self._cam_layer[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        decoded = self.head["decoder"](self.backbone(x))
        return self.head["out"](self.head["dropout"](decoded))


def build_unet(
    name: str,
    num_outputs: int,
    channels: int,
    image_size: int,
    dropout: float,
    weights: str,
    imagenet: Callable[[str], dict],
) -> UNet:
    """A U-Net from `ENCODERS`, its encoder loaded from `weights` (module docstring);
    `imagenet(arch)` gives torchvision's ImageNet state dict (`models.load_imagenet_state`)."""
    import segmentation_models_pytorch as smp

    if image_size % STRIDE:
        raise ValueError(
            f"{name} needs an image size that is a multiple of {STRIDE} (the encoder halves it "
            f"five times); got {image_size}: use e.g. {max(STRIDE, image_size // STRIDE * STRIDE)}"
        )
    net = smp.Unet(ENCODERS[name], encoder_weights=None, in_channels=channels, classes=num_outputs)
    model = UNet(net, dropout)
    if weights != "none":
        load_encoder(model.backbone, encoder_state(name, weights, imagenet))
    return model


def encoder_state(
    name: str, weights: str, imagenet: Callable[[str], dict]
) -> dict[str, torch.Tensor]:
    """The encoder weights `weights` names for model `name` (torchvision key names)."""
    arch = IMAGENET_ARCH.get(name)
    if arch is None:
        raise ValueError(
            f"{name} has no pretrained encoder weights here (only "
            f"{', '.join(IMAGENET_ARCH)} take ImageNet or medsweep ResNet weights); "
            "use --weights none with it"
        )
    if weights == "imagenet":
        return _without_fc(imagenet(arch))
    if not os.path.isfile(weights):
        raise ValueError(
            f"--weights {weights!r}: not 'none', 'imagenet' or an existing file (a medsweep "
            "classification checkpoint or a torchvision state dict)"
        )
    saved = torch.load(weights, map_location="cpu", weights_only=True)
    if str(saved.get("format", "")).startswith(CHECKPOINT_FORMAT_PREFIX):
        return _checkpoint_backbone(weights, saved, arch)
    return _without_fc(saved.get("state_dict", saved))


def _checkpoint_backbone(path: str, ckpt: dict, arch: str) -> dict[str, torch.Tensor]:
    """The `backbone.*` weights of a medsweep classification checkpoint of `arch`."""
    if ckpt.get("model") != arch:
        raise ValueError(
            f"--weights {path}: a checkpoint of model {ckpt.get('model')!r}, but this U-Net's "
            f"encoder is {arch}; pass a checkpoint of a {arch} classifier"
        )
    prefix = "backbone."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    return _without_fc(state)


def _without_fc(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def load_encoder(encoder: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load `state` into the encoder; the first conv fitted, every other key must match."""
    own = encoder.state_dict()
    state = dict(state)
    if "conv1.weight" in state and "conv1.weight" in own:
        state["conv1.weight"] = fit_first_conv(state["conv1.weight"], own["conv1.weight"].shape)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"the weights do not fit the encoder: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shape {wrong[:5]}; pass weights of the same backbone"
        )
    encoder.load_state_dict(state)


def fit_first_conv(weight: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A first-conv kernel for `shape` (out, in, k, k): RGB summed to one channel, a smaller
    kernel (a small-stem 3x3) zero-padded at the centre of the larger one."""
    if weight.shape[1] != shape[1] and shape[1] == 1:
        weight = weight.sum(dim=1, keepdim=True)
    if weight.shape[2:] != shape[2:] and weight.shape[-1] < shape[-1]:
        pad = (shape[-1] - weight.shape[-1]) // 2
        weight = nn.functional.pad(weight, (pad, pad, pad, pad))
    return weight
