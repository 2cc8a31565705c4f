"""Multi-worker training by TensorFlow's conventions (issue 16): two worker processes on
127.0.0.1 run the same `tfp-ae train --strategy multiworker` command with their own `TF_CONFIG`;
only the chief writes the run folder, the loss curve is the one-process run's, and a pair killed
after an epoch resumes when restarted."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tfp_ae.rundir import STATE_FILE

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.getcwd())
TIMEOUT = 400  # seconds per worker: a hung collective fails the test instead of blocking CI
FLAGS = ["--dataset", "digits", "--head", "normal_diag", "--epochs", "3", "--train-limit", "1024", "--seed", "3",
         "--no-fid", "--no-extra-figures", "--eval-images", "100", "--tsne-images", "0"]


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start_workers(argv):
    """Start `argv` once per worker of a fresh two-worker loopback cluster; returns the processes."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    procs = []
    for i in range(2):
        env = dict(ENV, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def wait(procs):
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT)
            outs.append((p.returncode, out, err))
    finally:
        for p in procs:
            p.kill()
    return outs


def train_command(out, strategy):
    return [sys.executable, "-m", "tfp_ae", "train", *FLAGS, "--strategy", strategy, "--out", str(out)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The same run in one process with the same global batch (128)."""
    out = tmp_path_factory.mktemp("single") / "run"
    r = subprocess.run(train_command(out, "default"), capture_output=True, text=True, env=ENV, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def test_two_workers_write_one_run_folder_with_the_one_process_loss_curve(tmp_path, one_process):
    out = tmp_path / "run"
    results = wait(start_workers(train_command(out, "multiworker")))
    for rc, _stdout, stderr in results:
        assert rc == 0, stderr[-3000:]
    assert "the chief evaluates and writes" in results[1][1]  # worker 1 is not the chief
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no second folder, no worker scratch
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["device"] == "2 x CPU on 2 workers (MultiWorkerMirroredStrategy)"
    np.testing.assert_allclose(metrics["train_loss"], one_process["train_loss"], rtol=1e-4)
    assert not any(p.name.startswith("workertemp") for p in out.iterdir())


def test_two_workers_train_the_conv_arch_like_one_process(tmp_path):
    """`--arch conv` (issue 51) under MultiWorkerMirroredStrategy: the loss curve of two workers is the
    one-process run's (the strategy code is the same for every arch; this checks the conv layers and the
    parameter maps replicate and reduce like the dense ones)."""
    argv = FLAGS + ["--epochs", "2", "--train-limit", "512", "--arch", "conv", "--conv-width", "4", "--latent-dim", "8"]
    runs = {}
    for strategy in ("default", "multiworker"):
        out = tmp_path / strategy
        command = [sys.executable, "-m", "tfp_ae", "train", *argv, "--strategy", strategy, "--out", str(out)]
        if strategy == "default":
            r = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=TIMEOUT)
            assert r.returncode == 0, r.stderr[-3000:]
        else:
            for rc, _stdout, stderr in wait(start_workers(command)):
                assert rc == 0, stderr[-3000:]
        runs[strategy] = json.loads((out / "metrics.json").read_text())
    assert runs["multiworker"]["arch"] == "conv" and len(runs["multiworker"]["train_loss"]) == 2
    np.testing.assert_allclose(runs["multiworker"]["train_loss"], runs["default"]["train_loss"], rtol=1e-4)


def test_killed_pair_resumes_after_a_restart(tmp_path, one_process):
    out = tmp_path / "run"
    kill_after_first_epoch = textwrap.dedent(f"""
        import os, signal, sys
        import tfp_ae
        from tfp_ae._tf import tfk
        from tfp_ae.config import RunConfig
        from tfp_ae.runtime import make_strategy
        from tfp_ae.train import run

        class Kill(tfk.callbacks.Callback):  # runs after the package's checkpointing callback
            def on_epoch_end(self, epoch, logs=None):
                os.kill(os.getpid(), signal.SIGKILL)

        strategy = make_strategy("multiworker")  # before any other TensorFlow work
        cfg = RunConfig(dataset="digits", head="normal_diag", epochs=3, train_limit=1024, seed=3, fid=False,
                        extra_figures=False, eval_images=100, tsne_images=0, strategy="multiworker", out={str(out)!r})
        run(cfg, callbacks=[Kill()], strategy=strategy)
    """)
    for rc, _, stderr in wait(start_workers([sys.executable, "-c", kill_after_first_epoch])):
        assert rc == -9, stderr[-3000:]
    assert len(json.loads((out / STATE_FILE).read_text())["epochs"]) == 1

    results = wait(start_workers(train_command(out, "multiworker")))
    for rc, stdout, stderr in results:
        assert rc == 0, stderr[-3000:]
        assert "resuming" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    np.testing.assert_allclose(metrics["train_loss"], one_process["train_loss"], rtol=1e-4)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """scikit-learn's digits as TFRecord shards: 4 files (FILE sharding) and 1 file (DATA fall-back)."""
    from tfp_ae.data import convert, open_source
    root = tmp_path_factory.mktemp("shards")
    for n in (4, 1):
        convert(open_source("digits"), root / f"s{n}", shards=n)
    return root


def shard_command(out, strategy, dataset):
    flags = [f for f in FLAGS if f not in ("--train-limit", "1024")]  # whole files: a range would be sharded by DATA
    flags[flags.index("digits")] = str(dataset)
    return [sys.executable, "-m", "tfp_ae", "train", *flags, "--strategy", strategy, "--out", str(out)]


def test_two_workers_on_shards_read_their_own_files(tmp_path, shards):
    """4 shard files: each worker reads 2 (AutoShardPolicy.FILE). A global batch is then half from
    each worker's files, not the one process's batch, so the curves are close, not equal; with 1
    file the input falls back to DATA and the curve is the one process's."""
    single = {}
    for n in (4, 1):
        r = subprocess.run(shard_command(tmp_path / f"one{n}", "default", shards / f"s{n}"), capture_output=True,
                           text=True, env=ENV, timeout=TIMEOUT)
        assert r.returncode == 0, r.stderr[-3000:]
        single[n] = json.loads((tmp_path / f"one{n}" / "metrics.json").read_text())["train_loss"]
    results = wait(start_workers(shard_command(tmp_path / "file", "multiworker", shards / "s4")))
    for rc, stdout, stderr in results:
        assert rc == 0, stderr[-3000:]
        assert "4 shard files over 2 workers: each worker reads its own files" in stdout
    file_loss = json.loads((tmp_path / "file" / "metrics.json").read_text())["train_loss"]
    np.testing.assert_allclose(file_loss, single[4], rtol=0.05)
    assert file_loss != single[4]
    results = wait(start_workers(shard_command(tmp_path / "data", "multiworker", shards / "s1")))
    for rc, stdout, stderr in results:
        assert rc == 0, stderr[-3000:]
        assert "1 shard file(s) for 2 workers: sharding by DATA" in stdout
    np.testing.assert_allclose(json.loads((tmp_path / "data" / "metrics.json").read_text())["train_loss"], single[1],
                               rtol=1e-4)
