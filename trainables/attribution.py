"""Attribution maps for a trained classifier: where did the model look?

Pure functions over plain tensors, modules and arrays; the caller (the driver, after the
search) decides which checkpoint, which images and which output paths::

    idx = choose_panel(val_labels, kind="multiclass", per_class=2, seed=0)
    x = normalise(val_images[idx])                       # (N, C, H, W) float, as the model expects
    layer = last_spatial_layer(model, x)                 # or e.g. model.layer4 at 224 px
    cams = gradcam_maps(model, x, layer, targets)        # (N, H, W) in [0, 1]
    igs = integrated_gradients_maps(model, x, targets, IGSettings(steps=16))  # (N, H, W) >= 0
    focus = focus_score(val_images[idx], igs)            # share of attribution on the foreground
    save_grid(out / "gradcam.png", val_images[idx], cams, captions, title="Grad-CAM")
    save_maps(out / "maps.npz", gradcam=cams, integrated_gradients=igs, focus=focus)

Multi-label: one map per (image, positive label) pair. Repeat the images, one row per
pair: ``rows, labels = np.nonzero(y[idx]); gradcam_maps(model, x[rows], layer, labels)``.

Panel choice and the files (``choose_panel``, ``save_grid``, ``save_maps``) live in
``trainables.panels`` and are re-exported here.

Grad-CAM uses ``pytorch_grad_cam`` (maps are ReLU'd and min-max scaled to [0, 1] per image,
so they show where, not how much); Integrated Gradients uses ``captum`` with a SmoothGrad
``NoiseTunnel``. Both run the model in eval mode (BatchNorm on running statistics, so the
images of a batch never influence each other) and restore the mode it had.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trainables.panels import choose_panel, save_grid, save_maps, save_mask_grid

__all__ = [
    "MIN_CAM_SIDE",
    "IGSettings",
    "cam_layer",
    "choose_panel",
    "focus_score",
    "foreground_masks",
    "gradcam_maps",
    "integrated_gradients",
    "integrated_gradients_maps",
    "last_spatial_layer",
    "mask_focus",
    "mask_gradcam_maps",
    "reduce_channels",
    "save_grid",
    "save_mask_grid",
    "save_maps",
]
REDUCTIONS = ("abs", "positive", "sum")
FOREGROUNDS = ("auto", "bright", "dark")
MIN_CAM_SIDE = 4  # a smaller Grad-CAM map says nothing once upsampled; take an earlier layer


def cam_layer(model: nn.Module, images: torch.Tensor, min_side: int = MIN_CAM_SIDE) -> nn.Module:
    """The Grad-CAM target layer: `model.cam_layer`, unless its feature map is under
    `min_side` pixels for this input size (a ResNet's last block at 28 px is 1x1); then the
    last layer whose map is at least that large (`last_spatial_layer`)."""
    shapes: list[tuple[int, ...]] = []
    hook = model.cam_layer.register_forward_hook(lambda _m, _i, out: shapes.append(out.shape))
    try:
        with _eval_mode(model), torch.no_grad():
            model(images[:1].to(_device(model)))
    finally:
        hook.remove()
    if shapes and len(shapes[0]) == 4 and min(shapes[0][2:]) >= min_side:
        return model.cam_layer
    return last_spatial_layer(model, images, min_side)


def last_spatial_layer(model: nn.Module, images: torch.Tensor, min_side: int = 4) -> nn.Module:
    """The last module (in execution order) whose output is a feature map of at least
    ``min_side`` pixels per side: a Grad-CAM target layer that works at any image size.

    The usual choice, the last block (ResNet ``layer4``), is 1x1 at 28 px, and a 1x1 CAM is
    constant after upsampling. Modules called more than once per forward (a shared ReLU) are
    skipped, because Grad-CAM's hooks would record them twice.
    """
    calls: dict[nn.Module, int] = {}
    order: list[tuple[nn.Module, tuple[int, ...]]] = []

    def hook(module: nn.Module, _inputs, output) -> None:
        calls[module] = calls.get(module, 0) + 1
        if isinstance(output, torch.Tensor):
            order.append((module, tuple(output.shape)))

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        with _eval_mode(model), torch.no_grad():
            model(images[:1].to(_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    for module, shape in reversed(order):
        if len(shape) == 4 and min(shape[2:]) >= min_side and calls[module] == 1:
            return module
    raise ValueError(
        f"no layer of {type(model).__name__} outputs a feature map of at least "
        f"{min_side}x{min_side} for input {tuple(images.shape[1:])}; lower min_side or "
        "use larger images"
    )


def gradcam_maps(
    model: nn.Module,
    images: torch.Tensor,
    target_layer: nn.Module,
    targets: Sequence[int],
    batch_size: int = 64,
) -> np.ndarray:
    """Grad-CAM maps, (N, H, W) float32 in [0, 1] at image resolution, one per image.

    ``images`` is (N, C, H, W), normalised as the model expects; ``targets[i]`` is the class
    (or label) whose logit is explained for ``images[i]``; repeat an image to explain several
    labels. A map is all zeros where no location has a positive weighted activation.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = _check_targets(images, targets)
    if not targets:
        return np.zeros((0, *images.shape[2:]), np.float32)
    with _eval_mode(model):
        cam = GradCAM(model=model, target_layers=[target_layer])
        try:
            # No `with GradCAM(...)`: its __exit__ swallows IndexError and would return a
            # partial result. The input needs a gradient so the hooks fire even when the
            # layers before the target are frozen.
            maps = [
                cam(
                    input_tensor=chunk.detach().clone().requires_grad_(True),
                    targets=[ClassifierOutputTarget(t) for t in chunk_targets],
                )
                for chunk, chunk_targets in _chunks(images, targets, batch_size)
            ]
        finally:
            cam.activations_and_grads.release()
            model.zero_grad(set_to_none=True)
    return np.concatenate(maps).astype(np.float32)


def mask_gradcam_maps(
    model: nn.Module, images: torch.Tensor, target_layer: nn.Module, masks: np.ndarray
) -> np.ndarray:
    """Grad-CAM of a segmentation model's summed foreground logits inside `masks` (N, H, W)
    (pytorch-grad-cam's `SemanticSegmentationTarget`, output channel 0): (N, H, W) in [0, 1].
    An empty mask explains the whole image's foreground logits instead."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    masks = np.asarray(masks, np.float32)
    masks = np.where(masks.reshape(len(masks), -1).any(axis=1)[:, None, None], masks, 1.0)
    with _eval_mode(model):
        cam = GradCAM(model=model, target_layers=[target_layer])
        try:
            maps = [
                cam(
                    input_tensor=images[i : i + 1].detach().clone().requires_grad_(True),
                    targets=[SemanticSegmentationTarget(0, masks[i])],
                )
                for i in range(len(images))
            ]
        finally:
            cam.activations_and_grads.release()
            model.zero_grad(set_to_none=True)
    return np.concatenate(maps).astype(np.float32) if maps else np.zeros((0, *masks.shape[1:]))


def mask_focus(masks: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Per image, the share of positive map mass on the true mask (NaN: no mass or no mask)."""
    masks, maps = np.asarray(masks, bool), np.clip(np.nan_to_num(maps), 0, None)
    total, on = maps.sum(axis=(1, 2)), (maps * masks).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((total > 0) & masks.any(axis=(1, 2)), on / total, np.nan)


@dataclass(frozen=True)
class IGSettings:
    """How Integrated Gradients with SmoothGrad noise runs (`integrated_gradients`)."""

    baseline: str | float = 0.0
    """"zero" or a float: a constant image in the model's (normalised) input space, so 0.0 is
    the normalisation mean colour; "mean": each image's own per-channel mean."""
    n_samples: int = 4
    """Noisy copies of each image the attributions are averaged over."""
    steps: int = 16
    """Integration steps from the baseline to the image."""
    stdevs: float = 0.1
    """The noise's standard deviation, in the model's input space. The noise gives pixels
    equal to the baseline attribution too (noise x gradient: about 10% of the mass at 0.1 on
    [0, 1] images with a black background), so compare focus scores only at equal settings."""
    seed: int = 0
    """Seed of the noise, drawn without touching the global torch RNG."""
    max_batch: int = 256
    """The most inputs one forward pass sees (memory: `n_samples * steps` model evaluations
    per image)."""

    def __post_init__(self) -> None:
        if self.baseline not in ("zero", "mean") and not isinstance(self.baseline, int | float):
            raise ValueError(
                f"baseline={self.baseline!r} is not valid; use 'zero', 'mean' or a number"
            )


def integrated_gradients_maps(
    model: nn.Module,
    images: torch.Tensor,
    targets: Sequence[int],
    settings: IGSettings | None = None,
    reduce: str = "abs",
) -> np.ndarray:
    """Integrated Gradients with SmoothGrad noise (`settings`; default `IGSettings()`),
    reduced over channels to (N, H, W).

    ``reduce="abs"`` (default) sums |attribution| over channels: how much each pixel
    mattered, either way; "positive" keeps the evidence for the target class; see
    ``reduce_channels``. For the signed (N, C, H, W) attributions, call
    ``integrated_gradients`` instead.
    """
    return reduce_channels(integrated_gradients(model, images, targets, settings), reduce)


def integrated_gradients(
    model: nn.Module,
    images: torch.Tensor,
    targets: Sequence[int],
    settings: IGSettings | None = None,
) -> np.ndarray:
    """Signed Integrated Gradients attributions, (N, C, H, W) float32, averaged over
    `settings.n_samples` noisy copies of each image (captum ``NoiseTunnel``, smoothgrad);
    `IGSettings` says what each setting means."""
    from captum.attr import IntegratedGradients, NoiseTunnel

    s = settings or IGSettings()
    targets = _check_targets(images, targets)
    if not targets:
        return np.zeros(tuple(images.shape), np.float32)
    images = images.to(_device(model))
    per_chunk = max(1, s.max_batch // s.n_samples)
    tunnel = NoiseTunnel(IntegratedGradients(model))
    out = []
    with _eval_mode(model), _seeded(s.seed, images.device):
        for chunk, chunk_targets in _chunks(images, targets, per_chunk):
            attr = tunnel.attribute(
                chunk,
                nt_type="smoothgrad",
                nt_samples=s.n_samples,
                stdevs=s.stdevs,
                baselines=_baseline(chunk, s.baseline),
                target=chunk_targets,
                n_steps=s.steps,
                internal_batch_size=max(s.max_batch, len(chunk) * s.n_samples),
            )
            out.append(attr.detach().cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def reduce_channels(attributions: np.ndarray, how: str = "abs") -> np.ndarray:
    """(N, C, H, W) signed attributions to (N, H, W): "abs" sums |a| over channels,
    "positive" is max(sum of a over channels, 0), "sum" the signed sum."""
    if how not in REDUCTIONS:
        raise ValueError(f"reduce={how!r} is not a reduction; choose one of {REDUCTIONS}")
    if how == "abs":
        return np.abs(attributions).sum(axis=1)
    total = attributions.sum(axis=1)
    return np.maximum(total, 0) if how == "positive" else total


def foreground_masks(images: np.ndarray, foreground: str = "auto") -> np.ndarray:
    """Otsu foreground masks, (N, H, W) bool, of (N, H, W) or (N, H, W, C) images.

    Otsu splits the grey levels (mean over channels) in two classes. With
    ``foreground="auto"`` the foreground is the class that covers LESS of the one-pixel
    image border: the border is usually background, so this finds bright cells on a dark
    background (fluorescence) and dark cells on a bright one (stained pathology, malaria
    smears) alike; on a tie the bright class wins. It fails where the object fills the frame
    (a tissue patch with white gaps: the gaps win; a 28 px chest X-ray crop: bright body or
    dark lungs, image by image). Pass "bright" or "dark" where the task knows its side.
    A constant image has an all-False mask.
    """
    from skimage.filters import threshold_otsu

    if foreground not in FOREGROUNDS:
        raise ValueError(f"foreground={foreground!r} is not valid; choose one of {FOREGROUNDS}")
    grey = _grey(images)
    masks = np.zeros(grey.shape, bool)
    for i, img in enumerate(grey):
        if img.max() == img.min():
            continue
        high = img > threshold_otsu(img)
        border = np.concatenate([high[0], high[-1], high[1:-1, 0], high[1:-1, -1]])
        bright = foreground == "bright" or (foreground == "auto" and border.mean() <= 0.5)
        masks[i] = high if bright else ~high
    return masks


def focus_score(images: np.ndarray, maps: np.ndarray, foreground: str = "auto") -> np.ndarray:
    """Per image, the share of positive attribution mass on the foreground, in [0, 1].

    Foreground as in ``foreground_masks``; negative map values count as zero. NaN for a
    constant image (no foreground) or a map with no positive mass.
    """
    masks = foreground_masks(images, foreground)
    maps = np.asarray(maps, np.float64)
    if maps.shape != masks.shape:
        raise ValueError(
            f"maps {maps.shape} do not match images {np.shape(images)}: pass maps as (N, H, W) "
            "and images as (N, H, W) or (N, H, W, C), channels last"
        )
    positive = np.clip(np.nan_to_num(maps), 0, None)
    total = positive.sum(axis=(1, 2))
    on_fg = (positive * masks).sum(axis=(1, 2))
    defined = (total > 0) & masks.any(axis=(1, 2))
    score = np.full(len(maps), np.nan)
    score[defined] = on_fg[defined] / total[defined]
    return np.clip(score, 0, 1)


def _check_targets(images: torch.Tensor, targets: Sequence[int]) -> list[int]:
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    targets = [int(t) for t in targets]
    if len(targets) != len(images):
        raise ValueError(
            f"got {len(images)} images and {len(targets)} targets; pass one target per image "
            "(repeat an image to explain several labels)"
        )
    return targets


def _chunks(images: torch.Tensor, targets: list[int], size: int):
    for start in range(0, len(images), size):
        yield images[start : start + size], targets[start : start + size]


def _baseline(images: torch.Tensor, baseline: str | float) -> torch.Tensor | float:
    if baseline == "zero":
        return 0.0
    if baseline == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images).contiguous()
    return float(baseline)  # a number (`IGSettings` checks)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the model in eval mode, then restore whatever mode it was in."""
    was_training = model.training
    try:
        yield model.eval()
    finally:
        model.train(was_training)


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG for a block without disturbing the global stream."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _grey(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, np.float64)
    if images.ndim == 4:
        return images.mean(axis=-1)
    if images.ndim != 3:
        raise ValueError(f"images must be (N, H, W) or (N, H, W, C), got shape {images.shape}")
    return images
