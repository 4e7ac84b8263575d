"""The ``splitkern`` command as a user meets it: one-line errors, defaults in --help, exact epochs, the --out guard."""

import argparse
import csv
import os
import subprocess
import sys

import pytest
import torch

import splitkern
from splitkern import models
from splitkern.cli import _parser, _train_config
from splitkern.splitnet import split
from splitkern.splitnet.train import prepare_out
from tests.splitnet.test_wrn_split import randomised


def cli(*args, timeout=300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SPLITKERN_DEBUG")}
    return subprocess.run([sys.executable, "-m", "splitkern.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def assert_one_line_error(out: subprocess.CompletedProcess, *words: str) -> None:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "error:" in lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A split WRN for 10 classes (the built-in data has 16), and one for 16 classes of 16x16 images."""
    folder = tmp_path_factory.mktemp("ckpt")
    ten = splitkern.save(split(randomised("2-2", classes=10)), folder / "ten.pt", input_shape=(3, 32, 32))
    small = splitkern.save(split(randomised("2-2", classes=16)), folder / "small.pt", input_shape=(3, 16, 16))
    corrupt = folder / "corrupt.pt"
    corrupt.write_bytes(ten.read_bytes()[:1000])
    # dense models for --init-from: another WRN than the default wrn10-2, and wrn10-2 for 10 classes
    wrn16 = splitkern.save(models.build("wrn16-1", 16), folder / "wrn16-1.pt")
    dense10 = splitkern.save(models.build("wrn10-2", 10), folder / "dense10.pt")
    return {"ten": ten, "small": small, "corrupt": corrupt, "wrn16": wrn16, "dense10": dense10}


BAD_INPUTS = [
    (("train", "--out", "{tmp}/r", "--device", "cuda:3"), ("--device", "cuda:3")),
    (("train", "--out", "{tmp}/r", "--device", "gpu"), ("--device", "not a device")),
    (("train", "--out", "{tmp}/r", "--epochs", "0"), ("--epochs", "positive integer")),
    (("train", "--out", "{tmp}/r", "--epochs", "-3"), ("--epochs", "positive integer")),
    (("train", "--out", "{tmp}/r", "--batch-size", "0"), ("--batch-size",)),
    (("train", "--out", "{tmp}/r", "--lr", "-0.1"), ("--lr", "positive")),
    (("train", "--out", "{tmp}/r", "--dropout", "1"), ("--dropout",)),
    (("train", "--out", "{tmp}/r", "--gammas", "1,one,10"), ("--gammas", "three numbers")),
    (("train", "--out", "{tmp}/r", "--split", "3-4"), ("--split", "tree")),
    (("train", "--out", "{tmp}/r", "--model", "resnet"), ("--model", "wrn16-8")),
    (("train", "--out", "{tmp}/r", "--baselines", "dense,oracle"), ("--baselines", "oracle")),
    (("train", "--out", "{tmp}/r", "--epochs", "5", "--stage1-epochs", "2", "--stage2-epochs", "1"), ("--epochs 5",)),
    (("train", "--out", "{tmp}/r", "--data", "{tmp}/nowhere"), ("data", "nowhere", "not a folder")),
    (("train", "--out", "{tmp}/r", "--init-from", "{corrupt}"), ("--init-from", "not a splitkern model")),
    # a split spec, group count or --init-from model that cannot fit: refused before the data loads
    (("train", "--out", "{tmp}/r", "--split", "3-3-3-3-3"), ("--split 3-3-3-3-3", "only 3 split levels")),
    (("train", "--out", "{tmp}/r", "--model", "alexnet", "--split", "2-2-2-2"), ("--split 2-2-2-2", "AlexNet")),
    (("train", "--out", "{tmp}/r", "--split", "32"), ("--split 32", "32 groups", "16 classes")),
    (("train", "--out", "{tmp}/r", "--split", "2-4-32"), ("--split 2-4-32", "16 classes")),
    (("train", "--out", "{tmp}/r", "--model", "wrn10-1", "--split", "32-32-32"), ("--split 32-32-32", "16 features")),
    (("train", "--out", "{tmp}/r", "--init-from", "{wrn16}"), ("--init-from", "depth': 16", "not --model wrn10-2")),
    (("train", "--out", "{tmp}/r", "--init-from", "{dense10}"), ("--init-from", "10 classes", "16 classes")),
    (("train", "--out", "{tmp}/r", "--init-from", "{ten}"), ("--init-from", "split model")),
    (("plan", "--ckpt", "{ten}", "--workers", "two"), ("--workers", "'two'")),
    (("plan", "--ckpt", "{small}", "--image-size", "32"), ("--image-size 32", "16x16")),
    (("plan", "--ckpt", "{tmp}/missing.pt"), ("missing.pt", "no such file")),
    (("layer-speed", "--groups", "0"), ("--groups", "positive integer")),
    (("infer", "--ckpt", "{ten}"), ("10 classes", "16")),
    (("infer", "--ckpt", "{small}"), ("(3, 16, 16)", "(3, 32, 32)")),
    (("infer", "--ckpt", "{corrupt}"), ("corrupt.pt", "not a splitkern model")),
    (("infer", "--ckpt", "{tmp}"), ("is a folder",)),
    (("export", "--ckpt", "{ten}", "--format", "tflite", "--out", "{tmp}/m"), ("--format", "tflite")),
    (("info", "--model", "{tmp}/missing.pt"), ("missing.pt", "no such file")),
    (("info", "--model", "{small}", "--image-size", "32"), ("--image-size 32", "16x16")),
    (("info", "--model", "{ten}", "--batch-size", "0"), ("--batch-size", "positive")),
    (("bogus",), ("bogus",)),
]


@pytest.mark.parametrize("args, words", BAD_INPUTS, ids=[" ".join(a[:3]) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_error_line_and_exit_code_2(args, words, tmp_path, checkpoints):
    fill = {"tmp": tmp_path, **checkpoints}
    out = cli(*(a.format(**fill) for a in args))
    assert_one_line_error(out, *words)
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_a_refused_spec_reads_no_data_and_keeps_the_run_in_out(tmp_path):
    """The class count of an ImageFolder layout comes from its folders: its (missing) images are never read, and
    an --overwrite that is refused deletes nothing."""
    pytest.importorskip("torchvision")
    for split_dir in ("train", "val"):
        for name in ("cat", "dog", "owl"):
            (tmp_path / "data" / split_dir / name).mkdir(parents=True)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.csv").write_text("a run")
    out = cli("train", "--data", tmp_path / "data", "--model", "resnet18", "--split", "4", "--out", tmp_path / "run",
              "--overwrite")
    assert_one_line_error(out, "--split 4", "classes (3 features)")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["log.csv"]
    out = cli("train", "--data", tmp_path / "data", "--model", "resnet18", "--split", "2", "--out", tmp_path / "run2")
    assert_one_line_error(out, "holds no images")  # the same layout passes the check; loading it finds no images


def test_debug_shows_the_traceback(checkpoints):
    out = cli("--debug", "infer", "--ckpt", checkpoints["corrupt"])
    assert out.returncode != 0 and "Traceback" in out.stderr and "not a splitkern model" in out.stderr


def test_help_shows_every_default_and_every_option_has_help():
    for command in ("train", "plan", "infer", "export", "layer-speed", "plot"):
        sub = next(a for a in _parser()._subparsers._group_actions[0].choices.values()
                   if a.prog == f"splitkern {command}")
        text = sub.format_help()
        for action in sub._actions:
            assert action.help, (command, action.dest)
            shown = action.default is not None and action.default is not False and action.default != () and \
                argparse.SUPPRESS not in (action.help, action.default)
            if shown and "default:" not in action.help:
                assert f"(default: {action.default})" in " ".join(text.split()), (command, action.dest)
    text = " ".join(cli("train", "--help").stdout.split())
    for default in ("(default: 9)", "(default: 0.1)", "(default: cosine)", "(default: (1.0, 1.0, 10.0))",
                    "(default: 0.0)", "(default: cpu)"):
        assert default in text, default


def test_version():
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.startswith(f"splitkern {splitkern.__version__} (torch ")


@pytest.mark.parametrize("epochs", [1, 2, 3, 4, 9, 15])
def test_epochs_are_exactly_what_was_asked(epochs):
    cfg = _train_config(_parser().parse_args(["train", "--out", "x", "--epochs", str(epochs)]))
    assert cfg.stage1_epochs + cfg.stage2_epochs == epochs
    assert 0 <= cfg.warmup_epochs < cfg.stage1_epochs
    assert cfg.stage2_epochs >= (1 if epochs > 1 else 0)


def test_a_short_run_trains_exactly_its_epochs_prints_a_line_per_epoch_and_guards_out(tmp_path):
    args = ("train", "--out", tmp_path / "run", "--model", "wrn10-1", "--split", "2", "--epochs", "2",
            "--batch-size", "256")
    out = cli(*args)
    assert out.returncode == 0, out.stderr[-3000:]
    with (tmp_path / "run" / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted({int(r["epoch"]) for r in rows if r["run"] in ("warmup", "splitnet")}) == [0, 1]
    assert {"train_ce", "r_d", "r_w", "r_e", "lr", "seconds"} <= set(rows[0])
    stage1 = [r for r in rows if r["phase"] == "stage1"]
    assert stage1 and all(float(r["r_d"]) >= 0 and float(r["r_e"]) >= 0 for r in stage1)
    assert all(r["r_d"] == "" for r in rows if r["phase"] != "stage1")
    for row in rows:  # each epoch's line stays on stdout (progress bars erase themselves)
        assert f"{row['run']}/{row['phase']}" in out.stdout
    assert out.stdout.count(" epoch ") >= len(rows)

    again = cli(*args)
    assert_one_line_error(again, "already holds a run", "--resume", "--overwrite")
    assert len((tmp_path / "run" / "log.csv").read_text().splitlines()) == len(rows) + 1  # not appended to


def test_overwrite_deletes_only_the_runs_files(tmp_path):
    for name in ("log.csv", "split.pt"):
        (tmp_path / name).write_text("old")
    (tmp_path / "splitnet").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds a run"):
        prepare_out(tmp_path, resume=False, overwrite=False)
    prepare_out(tmp_path, resume=True, overwrite=False)  # resume keeps everything
    assert (tmp_path / "log.csv").exists()
    prepare_out(tmp_path, resume=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_infer_accepts_a_matching_checkpoint(tmp_path):
    path = splitkern.save(split(randomised("2-2", classes=16)), tmp_path / "ok.pt", input_shape=(3, 32, 32))
    out = cli("infer", "--ckpt", path, "--batch-size", "512")
    assert out.returncode == 0 and "test accuracy" in out.stdout, out.stderr


def test_checked_device_names_the_argument():
    from splitkern.backend import check_device

    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="^device: 'tpu'"):
        check_device("tpu")


def test_export_command_writes_a_checked_model_and_reports_sizes_and_latency(tmp_path, checkpoints):
    out = cli("export", "--ckpt", checkpoints["ten"], "--format", "plain", "--out", tmp_path / "m.pt",
              "--batch-size", "4")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "m.pt").exists()
    for word in ("max abs", "dense", "split", "ms"):
        assert word in out.stdout, (word, out.stdout)


def test_info_lists_the_strategy_of_every_split_layer_per_batch(checkpoints):
    out = cli("info", "--model", checkpoints["ten"], "--batch-size", "1,4")
    assert out.returncode == 0, out.stderr[-3000:]
    model = splitkern.load(checkpoints["ten"])
    names = [n for n, m in model.named_modules() if isinstance(m, splitkern.nn.SplitConv2d | splitkern.nn.SplitLinear)]
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[2:]}
    assert sorted(rows) == sorted(names)
    for name in names:  # the last two columns: the strategies at batch 1 and 4
        assert set(rows[name][-2:]) <= set(splitkern.nn.STRATEGIES), rows[name]
    assert "batch 1" in out.stdout and "batch 4" in out.stdout


def test_alexnet_takes_its_own_learning_rate_and_batch_unless_given():
    from splitkern.cli import MODEL_DEFAULTS, _given_options, apply_model_defaults

    def parsed(*argv):
        args = _parser().parse_args(["train", "--out", "x", *argv])
        args.given = _given_options(argv)
        apply_model_defaults(args)
        return args

    args = parsed("--model", "alexnet")
    assert (args.lr, args.batch_size) == (MODEL_DEFAULTS["alexnet"]["lr"], MODEL_DEFAULTS["alexnet"]["batch_size"])
    args = parsed("--model", "alexnet", "--lr", "0.1", "--batch-size=64")
    assert (args.lr, args.batch_size) == (0.1, 64)
    args = parsed("--model", "wrn16-2")
    assert (args.lr, args.batch_size) == (0.1, 128)


def test_the_summary_says_what_the_parameter_share_and_the_speed_are_of():
    from splitkern.cli import _legend, _summary

    metrics = {"model": "wrn10-2", "spec": "4-4", "data": "synthetic", "groups": [["a"], ["b"]], "params_dense": 1000,
               "params_split": 400, "test_acc": 0.9, "test_acc_before_split": 0.9, "test_acc_at_split": 0.5,
               "inference_ms_dense_b256": 100.0, "inference_ms_split_b256": 80.0, "baselines": {},
               "config": {"device": "cpu"}}
    speed = {"flop_share": 0.5, "dense_ms": 90.0, "split_ms": 60.0}
    text = " ".join(_summary(metrics, "runs/x", speed).split())
    assert "split 400 = 40.0% of dense 1,000 (conv/linear weights and biases" in text
    assert "interleaved" in text and "1.50x dense" in text and "50% of dense's FLOPs, so at most 2.0x" in text
    assert "slower" not in text
    assert "1.25x dense" in _summary(metrics, "runs/x")  # without a measurement: the trainer's, from metrics.json
    metrics["inference_ms_split_b256"] = 120.0
    assert "slower than dense here" in _summary(metrics, "runs/x")
    legend = " ".join(_legend((1.0, 0.5, 10.0)).split())
    assert "loss = CE + 1*R_D + 0.5*R_W + 10*R_E" in legend and "unweighted" in legend and "off-block" in legend
