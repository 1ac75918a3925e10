"""The task registry: one small frozen record per task, and the lookup that names the choices.

    from trainables.tasks import get_task
    task = get_task("pathology")  # Task(name='pathology', flag='pathmnist', kind='multiclass')

A task says what the data is (a MedMNIST flag, or a folder converted once: `source`), what
kind of prediction it is (one of `trainables.kinds.KINDS`: `multiclass`, `binary`,
`multilabel`, `segmentation`), its class names, the default model and image size, and the
metric the search optimises. Everything that depends on `kind` (loss, activation, metrics,
augmentation, what to explain and how to test) is decided by the kind object `task.kind_ops`.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainables.kinds import KIND_NAMES

_MEDMNIST_KIND = {
    "multi-class": "multiclass",
    "binary-class": "binary",
    "multi-label, binary-class": "multilabel",
}


@dataclass(frozen=True)
class Task:
    """What one task is; plain data, no behaviour."""

    name: str
    """Registry key, what `--task` takes."""
    flag: str
    """MedMNIST flag; the file is `<flag>.npz` (28 px) or `<flag>_<size>.npz`."""
    kind: str
    """A key of `trainables.kinds.KINDS`: `multiclass` | `binary` | `multilabel` |
    `segmentation`."""
    classes: tuple[str, ...]
    """Class (or label) names in label-index order."""
    channels: int
    """Image channels in the source data (1 grayscale, 3 RGB)."""
    model: str = "resnet18"
    """Default model name (see `trainables.models.MODELS`)."""
    image_size: int = 28
    """Default image size in pixels (MedMNIST ships 28, 64, 128, 224)."""
    metric: str = "val_auc"
    """The metric the search optimises; the tuner, report, W&B and tests read it from here."""
    mode: str = "max"
    """`max` or `min` for `metric`."""
    augment: tuple[str, ...] = ("hflip", "vflip", "rotate", "crop")
    """Augmentations used for epochs `< aug_cutoff_epoch` (see `trainables.data.AUGMENTATIONS`)."""
    description: str = ""
    source: str = "medmnist"
    """`medmnist` (an npz by flag and size), `folder` (a folder per class, converted once),
    `segfolder` (images/ + masks/, converted once: `search.data.segfolders`) or `table` (images
    listed in a CSV/TSV/Parquet table with their labels, converted once: `search.data.table`,
    which also holds the table presets' defaults: label file, policies, filter, split)."""
    foreground: str | None = None
    """What the attribution focus score counts as the object: `otsu` (Otsu's threshold
    separates one cell from a plain background), `mask` (segmentation: the share of Grad-CAM on
    the true mask), or None where no foreground is defined (tissue tiles, cropped X-rays, skin
    lesions, an unknown folder dataset): no focus score and no low-focus warning."""

    def __post_init__(self) -> None:
        if self.kind not in KIND_NAMES:
            raise ValueError(f"task {self.name!r}: kind {self.kind!r} is not one of {KIND_NAMES}")
        if self.mode not in ("max", "min"):
            raise ValueError(f"task {self.name!r}: mode {self.mode!r} must be 'max' or 'min'")

    @property
    def kind_ops(self):
        """The kind object (`trainables.kinds`): loss, probabilities, metrics, layouts."""
        from trainables.kinds import get_kind

        return get_kind(self.kind)

    @property
    def num_outputs(self) -> int:
        """Width of the model's last layer (`Kind.num_outputs`: one logit for binary and
        segmentation, one per class otherwise)."""
        return self.kind_ops.num_outputs(len(self.classes))


def _medmnist_task(name: str, flag: str, **overrides) -> Task:
    """A task record whose kind, class names and channels come from `medmnist.INFO`."""
    from medmnist import INFO  # importing medmnist creates ~/.medmnist, so only when needed

    info = INFO[flag]
    labels = info["label"]
    classes = tuple(labels[str(i)] for i in range(len(labels)))
    return Task(
        name=name,
        flag=flag,
        kind=_MEDMNIST_KIND[info["task"]],
        classes=classes,
        channels=info["n_channels"],
        description=info["description"].split(".")[0],
        **overrides,
    )


_RGB_AUG = ("hflip", "vflip", "rotate", "crop", "color")
_XRAY_AUG = ("rotate", "crop", "contrast")  # chest X-rays are not mirror-symmetric

_REGISTRY = {
    "pathology": lambda: _medmnist_task("pathology", "pathmnist", augment=_RGB_AUG),
    "blood": lambda: _medmnist_task("blood", "bloodmnist", augment=_RGB_AUG, foreground="otsu"),
    "chest": lambda: _medmnist_task("chest", "chestmnist", augment=_XRAY_AUG),
    "derma": lambda: _medmnist_task("derma", "dermamnist", augment=_RGB_AUG),
    "pneumonia": lambda: _medmnist_task("pneumonia", "pneumoniamnist", augment=_XRAY_AUG),
}
_REGISTRY["malaria"] = lambda: Task(
    name="malaria",
    flag="cell_images",
    kind="binary",
    classes=("Uninfected", "Parasitized"),  # Parasitized is the positive class (label 1)
    channels=3,
    image_size=64,
    augment=_RGB_AUG,
    source="folder",
    description="NIH malaria cell images (thin blood smears, a folder per class)",
    foreground="otsu",  # one segmented cell on a black background
)
# Any folder-per-class dataset: classes, kind and channels come from the folder when converted.
_REGISTRY["folder"] = lambda: Task(
    name="folder",
    flag="folder",
    kind="multiclass",
    classes=(),
    channels=3,
    image_size=64,
    augment=_RGB_AUG,
    source="folder",
    description="a folder per class",
)
# Images and their masks (DIR/images/, DIR/masks/, the same file names): a U-Net whose encoder
# unfreezes at a searched epoch (the fifth seed); channels come from the images when converted.
_REGISTRY["segfolder"] = lambda: Task(
    name="segfolder",
    flag="segfolder",
    kind="segmentation",
    classes=("background", "foreground"),
    channels=1,
    model="unet-resnet18",
    image_size=128,
    metric="val_dice",
    augment=("hflip", "vflip", "rotate", "crop", "contrast"),
    source="segfolder",
    description="images/ and masks/ of the same names (mask > 0 = foreground)",
    foreground="mask",  # focus: the share of Grad-CAM on the true mask
)
# Images listed in a table (CSV, TSV, Parquet): classes and kind come from the table.
_REGISTRY["table"] = lambda: Task(
    name="table",
    flag="table",
    kind="multiclass",
    classes=(),
    channels=3,
    image_size=128,
    source="table",
    description="images listed in a label table (CSV, TSV or Parquet)",
)
CHEXPERT_OBSERVATIONS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
"""CheXpert's 14 observations in the paper's (and train.csv's) order (Irvin et al. 2019)."""
NIH_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
"""NIH ChestX-ray14's findings as Data_Entry_2017.csv spells them, in ChestMNIST's order."""
_REGISTRY["chexpert"] = lambda: Task(
    name="chexpert",
    flag="chexpert",
    kind="multilabel",
    classes=CHEXPERT_OBSERVATIONS,
    channels=1,
    model="resnet50",
    image_size=224,
    augment=_XRAY_AUG,
    source="table",
    description="CheXpert chest radiographs (Stanford; train.csv / valid.csv, 14 observations)",
)
_REGISTRY["chestxray14"] = lambda: Task(
    name="chestxray14",
    flag="chestxray14",
    kind="multilabel",
    classes=NIH_FINDINGS,
    channels=1,
    model="resnet50",
    image_size=224,
    augment=_XRAY_AUG,
    source="table",
    description="NIH ChestX-ray14 (Data_Entry_2017.csv, official train_val / test lists)",
)
TASK_NAMES = tuple(sorted(_REGISTRY))


def get_task(name: str) -> Task:
    """The task called `name`, or a ValueError that lists the valid names."""
    if name not in _REGISTRY:
        raise ValueError(
            f"{name!r} is not a task; choose one of: {', '.join(TASK_NAMES)} "
            f"(e.g. --task {TASK_NAMES[0]})"
        )
    return _REGISTRY[name]()
