"""Class selection and novelty detection (issue 49): `--classes` / `--exclude-classes` on every labelled
source kind (named arrays, .npz, a folder of PNGs, a TFDS dataset, TFRecord shards; in memory and streamed),
`tfp-ae score --novelty` against scikit-learn on its own scores.csv, and bad input."""
import csv
import json

import numpy as np
import pytest
from conftest import write_png
from sklearn.metrics import roc_auc_score

from tfp_ae._tf import tf
from tfp_ae.cli import main
from tfp_ae.config import RunConfig
from tfp_ae.data import convert, open_source, resolve_classes
from tfp_ae.errors import InputError
from tfp_ae.novelty import map_reductions, novelty_metrics, score_novelty
from tfp_ae.scoring import image_scores, p_values
from tfp_ae.train import load_model, run

FAST = dict(epochs=2, batch_size=64, fid=False, tsne_images=0, eval_images=50, extra_figures=False, verbose=0)
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def sources(digits, tmp_path_factory):
    """The real 8x8 digits as every labelled source kind: {kind: dataset string, options}."""
    root = tmp_path_factory.mktemp("classes")
    np.savez(root / "digits.npz", x_train=digits.x_train, y_train=digits.y_train, x_test=digits.x_test,
             y_test=digits.y_test)
    for split in ("train", "test"):
        x, y = getattr(digits, f"x_{split}")[:300], getattr(digits, f"y_{split}")[:300]
        for i, (img, label) in enumerate(zip(x, y)):
            write_png(root / "pngs" / split / NAMES[label] / f"{i:04d}.png", img)
    import tensorflow_datasets as tfds
    features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(8, 8, 1)),
                                           "label": tfds.features.ClassLabel(names=NAMES)})
    for name, train in (("digits_local", digits.y_train >= 0), ("digits_gap", digits.y_train != 9)):
        # digits_gap: class 9 only in the test split (a class without training images)
        splits = {"train": tf.data.Dataset.from_tensor_slices(
                      {"image": np.round(digits.x_train[train] * 255).astype(np.uint8), "label": digits.y_train[train]}),
                  "test": tf.data.Dataset.from_tensor_slices(
                      {"image": np.round(digits.x_test * 255).astype(np.uint8), "label": digits.y_test})}
        tfds.dataset_builders.store_as_tfds_dataset(name, "1.0.0", features, splits, data_dir=str(root / "tfds"),
                                                    disable_shuffling=True)
    convert(open_source("digits"), root / "shards", shards=3)
    tfds_options = dict(data_dir=str(root / "tfds"))
    return dict(named=("digits", {}), npz=(str(root / "digits.npz"), {}), folder=(str(root / "pngs"), {}),
                tfds=("tfds:digits_local", tfds_options), shards=(str(root / "shards"), {}),
                gap=("tfds:digits_gap", tfds_options))


@pytest.mark.parametrize("kind", ["named", "npz", "folder", "tfds", "shards"])
@pytest.mark.parametrize("select", [dict(classes="3"), dict(classes="1,7"), dict(exclude_classes="2")])
def test_class_selection_keeps_exactly_those_images_in_order(sources, kind, select):
    spec, options = sources[kind]
    full = open_source(spec, **options)
    names = full.class_names or [str(i) for i in range(10)]
    if kind == "folder":  # class subfolders are named, and sorted by name: select by name
        select = {k: ",".join(NAMES[int(c)] for c in v.split(",")) for k, v in select.items()}
    chosen = open_source(spec, **options, **select)
    table = {i: str(n) for i, n in enumerate(names)}
    keep = resolve_classes(next(iter(select.values())), table)
    if "exclude_classes" in select:
        keep = [i for i in table if i not in keep]
    assert list(chosen.selected_classes) == keep and list(chosen.selected_classes.values()) == [names[i] for i in keep]
    for split in ("train", "test"):
        x, y = full.splits[split].take()
        mask = np.isin(y, keep)
        s = chosen.splits[split]
        assert s.kind == full.splits[split].kind  # records stay records: filtered as they stream
        assert s.count == mask.sum() > 0
        xs, ys = s.take()
        np.testing.assert_array_equal(xs, x[mask])
        np.testing.assert_array_equal(ys, y[mask])
        np.testing.assert_array_equal(s.label_values(), y[mask])
    # the training stream: one epoch of batches holds every selected image once
    train = chosen.splits["train"]
    n = sum(len(b[0]) for b in train.pipeline(batch_size=64, seed=0).as_numpy_iterator())
    assert n == train.count


def test_streamed_selection_of_shards_trains_and_is_recorded(sources, tmp_path):
    spec, _ = sources["shards"]
    _, m = run(RunConfig(dataset=spec, classes="0,6", out=str(tmp_path / "r"), **FAST))
    full = open_source("digits")
    assert m["train_images"] == int(np.isin(full.splits["train"].y, [0, 6]).sum())
    assert m["classes"] == dict(indices=[0, 6], names=["0", "6"])
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["classes"] == "0,6" and saved["exclude_classes"] is None


def test_names_are_matched_without_case_or_underscores():
    table = {0: "T-shirt/top", 9: "Ankle boot", 8: "Bag"}
    assert resolve_classes("ankle_boot", table) == [9]
    assert resolve_classes("BAG, 0", table) == [0, 8]
    assert resolve_classes([9, "bag"], table) == [8, 9]
    with pytest.raises(InputError, match=r"unknown class 'cat'; the classes are: 0 T-shirt/top, 9 Ankle boot, 8 Bag"):
        resolve_classes("cat", table)
    with pytest.raises(InputError, match="no class named"):
        resolve_classes(" , ", table)


@pytest.mark.parametrize("select, match", [
    (dict(classes="ten"), r"unknown class 'ten'; the classes are: 0 zero, 1 one"),
    (dict(classes="10"), "unknown class '10'"),
    (dict(classes="nine"), r"class\(es\) 9 nine have no training images"),
    (dict(exclude_classes="0,1,2,3,4,5,6,7,8,9"), "leaves no class"),
    (dict(classes="1", exclude_classes="2"), "not both"),
])
def test_bad_selections_are_refused_naming_the_classes(sources, select, match):
    spec, options = sources["gap"]
    with pytest.raises(InputError, match=match):
        open_source(spec, **options, **select)


def test_a_source_without_labels_refuses_classes(digits, tmp_path):
    np.savez(tmp_path / "nolabels.npz", x_train=digits.x_train, x_test=digits.x_test)
    with pytest.raises(InputError, match="has no class labels"):
        open_source(str(tmp_path / "nolabels.npz"), classes="3")


def test_cli_refuses_an_unknown_class_before_writing_anything(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as e:
        main(["train", "--dataset", "digits", "--classes", "cat", "--epochs", "1", "--out", str(out)])
    assert str(e.value.code).startswith("tfp-ae: error: unknown class 'cat'; the classes are: 0, 1, 2")
    assert not out.exists()


def test_novelty_metrics_equal_scikit_learn_on_scores_csv(tmp_path, capsys):
    run(RunConfig(dataset="digits", classes="3", dequantize=True, validation_split=0.25, out=str(tmp_path / "r"),
                  **FAST))
    main(["score", str(tmp_path / "r"), "--data", "digits", "--novelty", "--out", str(tmp_path / "s")])
    printed = capsys.readouterr().out
    assert "(recommended)" in printed and "novelty_examples.png" in printed
    m = json.loads((tmp_path / "s" / "metrics.json").read_text())["novelty"]
    rows = list(csv.DictReader(open(tmp_path / "s" / "scores.csv")))
    labels = np.array([int(r["label"]) for r in rows])
    novel = np.array([int(r["novel"]) for r in rows])
    full_test = open_source("digits").splits["test"]
    assert len(rows) == full_test.count  # the whole test split, not the run's class only
    np.testing.assert_array_equal(labels, full_test.y)
    np.testing.assert_array_equal(novel, labels != 3)
    assert m["normal_classes"] == {"3": "3"} and m["counts"] == dict(normal=int((labels == 3).sum()),
                                                                       novel=int((labels != 3).sum()))
    assert m["recommended"] == "fisher_complexity_error" and "neg_log_marginal_smooth_max" in m["overall"]
    # the recommended score: Fisher's method over the p-values of complexity and abs_error_smooth_top1
    # against the run's held-out images (the last quarter of its class's training images)
    model, _ = load_model(tmp_path / "r")
    train = open_source("digits", classes="3").splits["train"]
    held_out = train.subset(train.count - int(train.count * 0.25))
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["reference"] == dict(images=held_out.count,
                                                                                          kind="held_out")
    reference = {**image_scores(model, held_out, 17, seed=1), **map_reductions(model, held_out)}
    test = {k: np.array([float(r[k]) for r in rows]) for k in ("complexity", "abs_error_smooth_top1")}
    want = -2 * (np.log(p_values(test["complexity"], reference["complexity"]))
                 + np.log(p_values(test["abs_error_smooth_top1"], reference["abs_error_smooth_top1"])))
    np.testing.assert_allclose([float(r["fisher_complexity_error"]) for r in rows], want, rtol=1e-9)
    for score in ("nll", "min_p", "complexity", "abs_error_smooth_top1", "fisher_complexity_error"):
        s = np.array([float(r[score]) for r in rows])
        assert m["overall"][score]["auroc"] == pytest.approx(roc_auc_score(novel, s), abs=1e-12)
        for c in (0, 8):
            pick = (labels == 3) | (labels == c)
            assert m["per_class"][str(c)][score]["auroc"] == pytest.approx(roc_auc_score(labels[pick] == c, s[pick]),
                                                                          abs=1e-12)
    assert set(m["per_class"]) == {str(c) for c in range(10) if c != 3}
    for f in ("roc.png", "histograms.png", "novelty_examples.png"):
        assert (tmp_path / "s" / f).stat().st_size > 0


def test_novelty_metrics_need_normal_and_novel_images():
    with pytest.raises(InputError, match="0 normal"):
        novelty_metrics({"s": np.arange(4.0)}, [1, 1, 2, 2], [0], {0: "a", 1: "b", 2: "c"})
    m = novelty_metrics({"s": np.array([0.0, 1.0, 2.0, 3.0])}, [0, 0, 1, 2], [0], {0: "a", 1: "b", 2: "c"})
    assert m["overall"]["s"]["auroc"] == 1.0 and set(m["per_class"]) == {"b", "c"}


def test_novelty_on_a_run_of_every_class_is_refused(tmp_path):
    run(RunConfig(dataset="digits", out=str(tmp_path / "all"), **dict(FAST, epochs=1)))
    with pytest.raises(InputError, match="--novelty needs a run trained on some classes"):
        score_novelty(tmp_path / "all", "digits")


def test_novelty_refuses_flags_it_does_not_use(tmp_path):
    with pytest.raises(SystemExit, match="does not take --ood"):
        main(["score", str(tmp_path), "--data", "digits", "--novelty", "--ood", "mnist", "--out", str(tmp_path / "s")])
