"""Class selection: `--classes` / `--exclude-classes` restrict every split of a labelled source to some of
its classes (by name or index), the set-up of one-class novelty detection (Ruff et al., ICML 2018: train on
one class) and of leave-one-class-out (train on nine, the tenth is the novelty).

A selection is a list of class tokens, `"3"`, `"0,1,2"`, `"bag"`, `"Ankle boot"` or `"ankle_boot"`: a token
is a class name (case and `_`/space ignored) or, failing that, a class index. Arrays and file lists are
indexed; TFRecord sources are filtered as they stream (`tfp_ae.data.Split.select`).
"""
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from tfp_ae.errors import InputError

if TYPE_CHECKING:  # annotations only (split imports nothing from here)
    from tfp_ae.data.split import Source


def _norm(name):
    return str(name).strip().lower().replace("_", " ")


def class_table(source: "Source") -> dict[int, str]:
    """`{index: name}` of the classes of a labelled `Source`: its `class_names`, or the label values of its
    training split named by their index when it has no names.

    Raises:
      InputError: the source has no labels.
    """
    if not source.has_labels:
        raise InputError(f"{source.description} has no class labels, so no classes can be selected "
                         "(labels come from class subfolders, a TFDS ClassLabel, shards with labels or an .npz's y_train)")
    if source.class_names is not None:
        return {i: str(n) for i, n in enumerate(source.class_names)}
    return {int(v): str(int(v)) for v in np.unique(source.splits["train"].label_values())}


def describe_classes(table: dict[int, str]) -> str:
    """`"0 T-shirt/top, 1 Trouser, ..."`: the classes of a `class_table`, for error messages."""
    return ", ".join(f"{i}" if str(i) == n else f"{i} {n}" for i, n in table.items())


def resolve_classes(spec: str | int | list, table: dict[int, str]) -> list[int]:
    """The sorted class indices a selection names.

    Args:
      spec: comma-separated class names or indices (a string), one index, or a list of them.
      table: `{index: name}` (`class_table`).
    Returns:
      a sorted list of distinct class indices (ints).
    Raises:
      InputError: an empty selection, or a token that is neither a name nor an index of `table` (the
        message lists the classes that exist).
    """
    spec = [spec] if isinstance(spec, int) else spec
    tokens = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else map(str, spec))]
    tokens = [t for t in tokens if t]
    if not tokens:
        raise InputError(f"no class named in {spec!r}; the classes are: {describe_classes(table)}")
    by_name = {_norm(n): i for i, n in table.items()}
    out = set()
    for t in tokens:
        if _norm(t) in by_name:
            out.add(by_name[_norm(t)])
        elif t.lstrip("-").isdigit() and int(t) in table:
            out.add(int(t))
        else:
            raise InputError(f"unknown class {t!r}; the classes are: {describe_classes(table)}")
    return sorted(out)


def kept_classes(table: dict[int, str], classes: str | int | list | None = None,
                 exclude_classes: str | int | list | None = None) -> list[int]:
    """The sorted class indices of `table` (`class_table`) that `classes` names, or all but those
    `exclude_classes` names (all when both are None).

    Raises:
      InputError: an unknown class, or an exclusion that leaves no class.
    """
    if classes is not None:
        return resolve_classes(classes, table)
    dropped = resolve_classes(exclude_classes, table) if exclude_classes is not None else []
    keep = [i for i in sorted(table) if i not in dropped]
    if not keep:
        raise InputError(f"--exclude-classes {exclude_classes!r} leaves no class; the classes are: "
                         f"{describe_classes(table)}")
    return keep


def select_classes(source: "Source", classes: str | int | list | None = None,
                   exclude_classes: str | int | list | None = None) -> "Source":
    """`source` with every split restricted to the classes `classes` names, or to all classes but those
    `exclude_classes` names (`resolve_classes`); unchanged when both are None.

    Returns:
      the restricted `Source`; its `selected_classes` maps each kept class index to its name, and
        its `description` names them.
    Raises:
      InputError: both arguments given, a source without labels, an unknown class (naming those that
        exist), a selection that keeps no class, or a kept class without training images.
    """
    if classes is None and exclude_classes is None:
        return source
    if classes is not None and exclude_classes is not None:
        raise InputError("give --classes or --exclude-classes, not both")
    table = class_table(source)
    keep = kept_classes(table, classes, exclude_classes)
    train_labels = source.splits["train"].label_values()  # read once: checked, then selected
    empty = [i for i in keep if not np.any(train_labels == i)]
    if empty:
        raise InputError(f"class(es) {', '.join(f'{i} {table[i]}' for i in empty)} have no training images in "
                         f"{source.description}; the classes are: {describe_classes(table)}")
    splits = {name: split.select(keep, train_labels if name == "train" else None)
              for name, split in source.splits.items()}
    kept = {i: table[i] for i in keep}
    return replace(source, splits=splits, selected_classes=kept,
                   description=f"{source.description}, classes {describe_classes(kept)}")
