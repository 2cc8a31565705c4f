"""The paper's grid: which cells exist, the paper's numbers beside ours, resuming without re-running."""
import csv
import json

import pytest

from tfp_ae import grid, train
from tfp_ae.config import RunConfig
from tfp_ae.heads import HEADS, mixable_heads


def test_grid_cells_follow_the_paper():
    cells = grid.grid_cells(["mnist"], "mlp", ["all"], [1, 10])
    k1 = [c for c in cells if c.components == 1]
    k10 = [c for c in cells if c.components == 10]
    assert len(k1) == len(HEADS) + 1 and sum(c.model == "vae" for c in k1) == 1
    assert {c.head for c in k10} == set(mixable_heads())  # no mse / maf / vae at K=10
    assert {c.head for c in k10 if c.skip} == {"normal_full", "student_t_full"}
    named = grid.grid_cells(["mnist"], "mlp", ["normal_full"], [10])
    assert named[0].skip == ""  # asked for by name: run
    with pytest.raises(ValueError, match="no grid cells for heads \\['vae'\\] with arch 'cnn'"):
        grid.grid_cells(["mnist"], "cnn", ["vae"], [1])  # the VAE row is mlp only: nothing to run
    for arch in ("cnn", "cnn_dense"):  # cnn_dense is compared with Table 2, like the paper's cnn
        paper = grid.grid_cells(["mnist", "fashion_mnist"], arch, ["paper"], [1, 10])
        assert len(paper) == 24 and not any(c.skip for c in paper), arch
        assert {c.head for c in paper} == {h for h in HEADS if h.startswith("matrix_")}
    conv = grid.grid_cells(["mnist"], "conv", ["all", "normal_full"], [1])  # named or not, D x D heads skip on conv
    assert {c.head for c in conv if c.skip} == {"normal_full", "student_t_full"}
    assert all("parameter maps" in c.skip for c in conv if c.skip) and not any(c.model == "vae" for c in conv)
    with pytest.raises(ValueError, match="unknown head.*valid: all, paper, vae"):
        grid.grid_cells(["mnist"], "mlp", ["gauss"], [1])
    with pytest.raises(ValueError, match="components must be >= 1"):
        grid.grid_cells(["mnist"], "mlp", ["all"], [0])


def test_paper_tables_ship_with_the_package():
    t1 = {grid._paper_key(r): r for r in grid.paper_table("mlp") if r["head"]}
    assert t1["mse", 1]["mnist_l2_percent"] == "1.585" and t1["vae", 1]["mnist_params"] == "101984"
    assert t1["matrix_t_full", 10]["fmnist_seconds_per_epoch"] == "78.134"
    assert len(grid.paper_table("cnn")) == 13 and grid.paper_table("cnn_dense") == grid.paper_table("cnn")
    assert grid.paper_table("no_such_arch") == []


def test_markdown_puts_paper_numbers_beside_ours():
    cell = grid.Cell("mnist", "mlp", "ae", "mse", 1)
    papers = {grid._paper_key(r): r for r in grid.paper_table("mlp") if r["head"]}
    metrics = dict(epochs=20, l2_percent=2.0, psnr=20.0, ssim=0.9, test_nll_nats=700.0, bits_per_dim=9.3,
                   num_params=50992, seconds_per_epoch=[1.0, 3.0, 2.0], fid_lenet=1.5, fid_lenet_vs_noise=200.0,
                   fid_lenet_real_vs_noise=250.0)
    row = grid._row(cell, metrics, 42.0, papers, "x")
    assert row["paper_l2_percent"] == "1.585" and row["seconds_per_epoch"] == 2.0 and row["status"] == "done"
    md = grid.markdown_table([row], epochs=20)
    assert "### Table 1 (mlp), mnist, 20 epochs" in md
    assert "| MSE | mse | 1 | 2.000 (worse) | 1.585 | 1.500 | 200.000 | 520.167 |" in md
    assert "| test images | | | | | | 250.000 | 485.073 |" in md


def test_run_grid_resumes_without_rerunning(tmp_path, monkeypatch):
    monkeypatch.setenv("TFP_AE_CACHE_DIR", str(tmp_path / "cache"))
    cells = grid.grid_cells(["digits"], "mlp", ["normal_diag", "mse"], [1, 2])
    base = RunConfig(epochs=1, train_limit=256, eval_images=50, tsne_images=0, verbose=0)
    rows = grid.run_grid(tmp_path / "g", cells, base)
    assert [r["status"] for r in rows] == ["done"] * 3
    with open(tmp_path / "g" / "results.csv") as f:
        saved = list(csv.DictReader(f))
    assert [(r["head"], r["components"]) for r in saved] == [("normal_diag", "1"), ("mse", "1"), ("normal_diag", "2")]
    assert float(saved[0]["l2_percent"]) == pytest.approx(rows[0]["l2_percent"])
    assert (tmp_path / "g" / "figure1_digits_mlp.png").exists() and (tmp_path / "g" / "figure2_digits_mlp.png").exists()
    state = json.loads((tmp_path / "g" / "grid_state.json").read_text())
    assert set(state) == {c.key for c in cells}

    monkeypatch.setattr(train, "run", lambda *a, **k: pytest.fail("a finished cell was re-run"))
    again = grid.run_grid(tmp_path / "g", cells, base, figures=False)
    assert [r["l2_percent"] for r in again] == [r["l2_percent"] for r in rows]


def test_every_rewrite_lists_all_cells_finished_or_pending(tmp_path, monkeypatch):
    # a cell finished by an earlier invocation shows in the table from the first rewrite on, even
    # when it comes later in the order; cells not run yet are `pending`
    monkeypatch.setenv("TFP_AE_CACHE_DIR", str(tmp_path / "cache"))
    base = RunConfig(epochs=1, train_limit=256, eval_images=50, tsne_images=0, verbose=0)
    first, middle, last = grid.grid_cells(["digits"], "mlp", ["mse", "normal_diag", "normal_identity"], [1])
    grid.run_grid(tmp_path, [last], base, figures=False)

    def fake_run(config, **kw):
        raise MemoryError("needs 99 GiB")

    seen = []

    def on_cell(cell, row):
        with open(tmp_path / "results.csv") as f:
            seen.append([(r["head"], r["status"]) for r in csv.DictReader(f)])

    monkeypatch.setattr(train, "run", fake_run)
    grid.run_grid(tmp_path, [first, middle, last], base, on_cell=on_cell, figures=False)
    assert seen[0] == [("mse", "failed: MemoryError: needs 99 GiB"), ("normal_diag", grid.PENDING),
                       ("normal_identity", "done")]
    assert "| Nµ | normal_identity | 1 |" in (tmp_path / "table.md").read_text()
    assert seen[-1][1] == ("normal_diag", "failed: MemoryError: needs 99 GiB")


def test_time_left_counts_only_the_cells_still_to_run():
    assert grid._eta({}, 3) == ""
    assert grid._eta({"a": 600.0, "b": 1200.0}, 3) == ", about 45 min left (mean 15.0 min per cell)"


def test_failed_cell_is_recorded_and_the_grid_goes_on(tmp_path, monkeypatch):
    calls = []

    def fake_run(config, **kw):
        calls.append(config.head)
        raise MemoryError("needs 99 GiB")

    monkeypatch.setattr(train, "run", fake_run)
    rows = grid.run_grid(tmp_path, grid.grid_cells(["digits"], "mlp", ["normal_full", "mse"], [1]), figures=False)
    assert calls == ["normal_full", "mse"]
    assert rows[0]["status"] == "failed: MemoryError: needs 99 GiB"


def test_grid_cli_passes_every_training_flag_to_its_cells(tmp_path, monkeypatch):
    from tfp_ae import cli
    seen = []

    def fake_run(config, **kw):
        seen.append(config)
        raise MemoryError("not trained in this test")

    monkeypatch.setattr(train, "run", fake_run)
    cli.main(["grid", "--dataset", "digits", "--heads", "mse", "vae", "-K", "1", "--epochs", "3",
              "--learning-rate", "0.01", "--dequantize", "--objective", "iwae", "--no-extra-figures",
              "--strategy", "mirrored", "--no-figures", "--out", str(tmp_path)])
    assert [(c.model, c.head, c.dataset) for c in seen] == [("ae", "mse", "digits"), ("vae", "normal_diag", "digits")]
    for c in seen:
        assert (c.epochs, c.learning_rate, c.dequantize, c.objective, c.extra_figures, c.strategy) == \
            (3, 0.01, True, "iwae", False, "mirrored")
        assert c.out == str(tmp_path / grid.Cell(c.dataset, "mlp", c.model, c.head, 1).key)


def _write_rows(cells, out, status="done", l2=1.0):
    out.mkdir()
    grid.write_results(_fake_rows(cells, status, l2), out)


def _fake_rows(cells, status="done", l2=1.0):
    return [dict(dataset=c.dataset, arch=c.arch, model=c.model, head=c.head, components=c.components,
                 label=c.head, status=status, epochs=20, l2_percent=l2 if status == "done" else "",
                 run_dir="x") for c in cells]


def test_table_merges_results_from_several_grids(tmp_path, capsys):
    from tfp_ae import cli
    first = grid.grid_cells(["mnist"], "mlp", ["mse", "normal_full", "maf", "vae"], [1])
    (tmp_path / "a").mkdir()
    grid.write_results(_fake_rows(first[:1] + first[2:]) + _fake_rows(first[1:2], "failed: MemoryError"),
                       tmp_path / "a")
    _write_rows(grid.grid_cells(["fashion_mnist", "mnist"], "mlp", ["normal_full"], [1]), tmp_path / "b", l2=2.5)
    _write_rows(first[:1], tmp_path / "c", "failed: ValueError")  # never replaces a done row
    cli.main(["table", str(tmp_path / "a" / "results.csv"), str(tmp_path / "b" / "results.csv"),
              str(tmp_path / "c" / "results.csv"), "--out", str(tmp_path / "m"), "--epochs", "20"])
    with open(tmp_path / "m" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["dataset"], r["head"], r["status"], r["l2_percent"]) for r in rows] == [
        ("mnist", "mse", "done", "1.0"), ("mnist", "normal_full", "done", "2.5"), ("mnist", "maf", "done", "1.0"),
        ("mnist", "normal_diag", "done", "1.0"), ("fashion_mnist", "normal_full", "done", "2.5")]
    assert rows[3]["model"] == "vae"
    table = (tmp_path / "m" / "table.md").read_text()
    assert "### Table 1 (mlp), mnist, 20 epochs" in table and "| vae/normal_diag | 1 | 1.000 |" in table
    assert "5 cells from 3 file(s)" in capsys.readouterr().out


def test_table_rejects_a_file_that_is_not_grid_results(tmp_path):
    from tfp_ae import cli
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SystemExit, match="not a grid results.csv"):
        cli.main(["table", str(tmp_path / "x.csv"), "--out", str(tmp_path / "m")])
    with pytest.raises(SystemExit, match="No such file"):
        cli.main(["table", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "m")])
