"""Task kinds: everything that depends on what a label is, one small class per kind.

    from trainables.kinds import get_kind
    kind = get_kind(task.kind)                     # or task.kind_ops
    loss_fn = kind.make_loss(kind.class_weights(train_labels, n_classes, power))
    probs = kind.probabilities(logits)             # (N, outputs) numpy
    metrics = kind.metrics(val_labels, probs)      # {"acc", "f1", "auc"}

Labels arrive as stored in the MedMNIST npz layout: (N, 1) class ids for `multiclass` and
`binary`, (N, L) 0/1 for `multilabel`, (N, H, W) 0/1 masks for `segmentation`. Every module
outside this package asks the kind object instead of branching on the kind's name; a new kind
is one new module here, one entry in `KINDS`, and its tests.
"""

from __future__ import annotations

from trainables.kinds.base import THRESHOLD, Kind
from trainables.kinds.binary import Binary
from trainables.kinds.multiclass import Multiclass
from trainables.kinds.multilabel import Multilabel
from trainables.kinds.segmentation import Segmentation

KINDS: dict[str, Kind] = {
    k.name: k for k in (Multiclass(), Binary(), Multilabel(), Segmentation())
}
KIND_NAMES = tuple(KINDS)


def get_kind(name: str) -> Kind:
    """The kind object called `name`, or a ValueError naming the valid kinds."""
    if name not in KINDS:
        raise ValueError(f"kind {name!r} is not a task kind; choose one of: {', '.join(KINDS)}")
    return KINDS[name]


def kind_for_classes(n_classes: int) -> str:
    """The kind of a folder-per-class dataset with `n_classes` folders."""
    return Binary.name if n_classes == 2 else Multiclass.name


__all__ = ["KINDS", "KIND_NAMES", "THRESHOLD", "Kind", "get_kind", "kind_for_classes"]
