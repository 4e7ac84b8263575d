"""splitkern.export: split models as plain torch.nn, TorchScript, torch.export (.pt2) and ONNX."""

import os
import re
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import splitkern
from splitkern.export import FORMATS, check_export, export, export_report, load_export, to_plain
from splitkern.models import build
from splitkern.nn import SplitConv2d, SplitLinear
from splitkern.splitnet import count_parameters, split
from tests.helpers import assert_close, random_permutation

TINY = ("wrn10-2", "alexnet")  # AlexNet thinned (hidden units) to keep the test fast; both 32x32


def _ids(assignment, kind: str, key: str) -> torch.Tensor:
    """Hard group ids of ``kind``: equal-sized groups, ragged groups, or ragged with group 1 emptied."""
    d, groups = assignment.features, assignment.groups
    if kind == "equal":
        return torch.arange(d) % groups
    ids = torch.randint(0, groups, (d,))
    ids[:groups] = torch.arange(groups)  # every group non-empty...
    if kind == "empty" and key.endswith("_in"):  # ...except group 1 of every split level's entry features
        ids[ids == 1] = 0
    return ids


def split_model(name: str, kind: str, classes: int = 10) -> torch.nn.Module:
    """A small split model (spec 2-2) in eval mode with random BN statistics."""
    model = build(name, classes, "2-2", width=64 if name == "alexnet" else None)
    for key, assignment in model.assignments.items():
        assignment.set_hard(_ids(assignment, kind, key))
    result = split(model)
    with torch.no_grad():
        for bn in result.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.normal_()
                bn.running_var.uniform_(0.5, 2.0)
                bn.bias.normal_()
    return result.eval()


def split_layers(model):
    return [m for m in model.modules() if isinstance(m, (SplitLinear, SplitConv2d))]


def splitkern_modules(model):
    return [f"{name}: {type(m).__module__}.{type(m).__qualname__}" for name, m in model.named_modules()
            if type(m).__module__.split(".")[0] == "splitkern"]


def images(n=3, size=32):
    return torch.randn(n, 3, size, size)


@pytest.mark.parametrize("kind", ["equal", "ragged", "empty"])
@pytest.mark.parametrize("name", TINY)
def test_to_plain_equals_the_split_model(name, kind):
    model = split_model(name, kind)
    sizes = [(layer.in_sizes, layer.out_sizes) for layer in split_layers(model)]
    if kind == "equal":
        assert all(len(set(i)) == 1 and len(set(o)) == 1 for i, o in sizes)
    elif kind == "ragged":
        assert any(len(set(i)) > 1 for i, _ in sizes) and all(0 not in i + o for i, o in sizes)
    else:  # groups without inputs, and (WRN) a group without outputs
        assert any(0 in i for i, _ in sizes)
        assert name == "alexnet" or any(0 in o for _, o in sizes)
    x = images()
    plain = to_plain(model)
    assert not splitkern_modules(plain)
    assert not plain.training
    with torch.no_grad():
        assert_close(plain(x), model(x))
    layers = {type(m).__name__ for m in plain.modules()}
    assert layers & {"Conv2d", "Linear"} and not layers & {"SplitConv2d", "SplitLinear", "ChannelPermute"}
    if kind == "equal" and name == "wrn10-2":  # one grouped conv per split conv
        assert any(isinstance(m, torch.nn.Conv2d) and m.groups == 2 for m in plain.modules())


def test_to_plain_copies_and_keeps_the_split_model():
    model = split_model("wrn10-2", "ragged").train()
    x = images()
    plain = to_plain(model)
    assert model.training and all(m.training for m in model.modules())
    with torch.no_grad():
        for p in plain.parameters():
            p.zero_()
    assert model.fc.weight.abs().sum() > 0
    assert not torch.equal(model.eval()(x), plain(x))


@pytest.mark.parametrize("bias", [True, False])
def test_single_layers_with_geometry_and_empty_groups(bias):
    in_sizes, out_sizes = (3, 0, 2, 4, 1), (2, 3, 0, 1, 2)  # group 1: no inputs, group 2: no outputs
    perm_in, perm_out = random_permutation(sum(in_sizes)), random_permutation(sum(out_sizes))
    conv = SplitConv2d(in_sizes, out_sizes, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1), bias=bias,
                       in_index=perm_in, out_index=perm_out).to(perm_in.device)
    linear = SplitLinear(in_sizes, out_sizes, bias=bias, in_index=perm_in, out_index=perm_out).to(perm_in.device)
    with torch.no_grad():
        for layer in (conv, linear):
            if bias:
                layer.bias.normal_()
    for layer, x in ((conv, torch.randn(2, 10, 9, 7)), (linear, torch.randn(2, 5, 10))):
        x = x.to(perm_in.device)
        plain = to_plain(layer)
        assert not splitkern_modules(plain)
        with torch.no_grad():
            assert_close(plain(x), layer(x))
    if bias:  # the group without inputs outputs its bias
        zero_in = perm_out[2:5]  # original positions of group 1's outputs (grouped 2..4)
        with torch.no_grad():
            assert_close(to_plain(linear)(torch.randn(4, 10))[:, zero_in], linear.bias[2:5].expand(4, 3))


def _check_roundtrip(fmt, tmp_path):
    model = split_model("wrn10-2", "empty")
    example = images(1)
    with warnings.catch_warnings():  # the batch dimension must stay dynamic, even from a batch of one
        warnings.filterwarnings("error", message="(?s).*(exporting for batch|tracing instead)")
        path = export(model, fmt, tmp_path / f"model.{fmt}", example)
    assert path.is_file() and path.stat().st_size > 0
    error = check_export(fmt, path, model, example)
    assert 0 <= error <= 1e-4
    loaded = load_export(fmt, path)  # the format's own loader; other batch sizes
    for n in (5, 2):
        x = images(n)
        with torch.no_grad():
            assert_close(loaded(x), model(x))


@pytest.mark.parametrize("fmt", ["plain", "pt2"])
def test_torch_formats_round_trip(fmt, tmp_path):
    _check_roundtrip(fmt, tmp_path)


def test_onnx_round_trips(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    _check_roundtrip("onnx", tmp_path)
    proto = onnx.load(str(tmp_path / "model.onnx"))
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= 17
    assert not any(node.domain.startswith("splitkern") for node in proto.graph.node)


def test_alexnet_exports_round_trip(tmp_path):
    model = split_model("alexnet", "ragged")
    example = images(2)
    for fmt in ("plain", "pt2"):
        assert check_export(fmt, export(model, fmt, tmp_path / f"a.{fmt}", example), model, example) <= 1e-4


_WITHOUT_SPLITKERN = textwrap.dedent("""
    import sys

    class NoSplitkern:
        def find_spec(self, name, path=None, target=None):
            if name == "splitkern" or name.startswith("splitkern."):
                raise ImportError("splitkern is blocked in this test: " + name)

    sys.meta_path.insert(0, NoSplitkern())
    import torch

    fmt, path, inputs, outputs = sys.argv[1:]
    model = torch.jit.load(path) if fmt == "plain" else torch.export.load(path).module()
    with torch.no_grad():
        torch.save(model(torch.load(inputs)), outputs)
    loaded = sorted(k for k in sys.modules if k == "splitkern" or k.startswith("splitkern."))
    assert not loaded, loaded
""")


@pytest.mark.parametrize("fmt", ["plain", "pt2"])
def test_export_loads_and_runs_without_splitkern(fmt, tmp_path):
    model = split_model("wrn10-2", "ragged")
    x = images(4)
    path = export(model, fmt, tmp_path / f"model.{fmt}", images(2))
    torch.save(x, tmp_path / "x.pt")
    script = tmp_path / "run.py"
    script.write_text(_WITHOUT_SPLITKERN)
    done = subprocess.run([sys.executable, str(script), fmt, str(path), str(tmp_path / "x.pt"),
                           str(tmp_path / "y.pt")], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    with torch.no_grad():
        assert_close(torch.load(tmp_path / "y.pt"), model(x))


def test_blocker_really_blocks_splitkern(tmp_path):
    """The subprocess above would fail if anything in it imported splitkern."""
    script = tmp_path / "probe.py"
    script.write_text(_WITHOUT_SPLITKERN.split("import torch")[0] + "import splitkern\n")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "splitkern is blocked" in done.stderr


def test_export_report(tmp_path):
    model = split_model("wrn10-2", "ragged", classes=5)
    ckpt = splitkern.save(model, tmp_path / "split.pt")
    out = tmp_path / "exported.pt2"
    text = export_report(ckpt, "pt2", out, image_size=16, batch_size=2, repeats=2)
    assert out.is_file()
    split_count = count_parameters(model)
    dense_count = count_parameters(build("wrn10-2", 5))
    assert split_count < dense_count
    rows = {}
    for line in text.splitlines():
        match = re.match(r"(exported|split|dense)\b.*?\s([\d,]+)\s+([\d.]+)$", line)
        if match:
            rows[match[1]] = (int(match[2].replace(",", "")), float(match[3]))
    assert rows["exported"][0] == split_count and rows["split"][0] == split_count
    assert rows["dense"][0] == dense_count
    assert all(ms > 0 for _, ms in rows.values())
    error = float(re.search(r"max abs error vs split model: (\S+)", text)[1])
    assert error <= 1e-4


def test_bad_arguments(tmp_path):
    model = split_model("wrn10-2", "ragged")
    x = images(2)
    with pytest.raises(ValueError, match="fmt"):
        export(model, "tflite", tmp_path / "m", x)
    with pytest.raises(TypeError, match="fmt"):
        export(model, None, tmp_path / "m", x)
    with pytest.raises(TypeError, match="example"):
        export(model, "plain", tmp_path / "m", x.numpy())
    with pytest.raises(TypeError, match="out"):
        export(model, "plain", 3, x)
    with pytest.raises(TypeError, match="model"):
        to_plain("split.pt")
    with pytest.raises(ValueError, match="not a split model"):
        export(build("wrn10-2", 10).eval(), "plain", tmp_path / "m", x)
    with pytest.raises(RuntimeError):  # a wrong input shape fails before anything is written
        export(model, "plain", tmp_path / "wrong.pt", torch.randn(2, 5, 32, 32))
    assert not (tmp_path / "wrong.pt").exists()
    with pytest.raises(ValueError, match="fmt"):
        export_report(tmp_path / "split.pt", "tensorrt", tmp_path / "m")
    dense = splitkern.save(build("wrn10-2", 10), tmp_path / "dense.pt")
    with pytest.raises(ValueError, match="dense model"):
        export_report(dense, "plain", tmp_path / "m.pt")
    assert set(FORMATS) == {"plain", "onnx", "pt2"}


def test_check_export_rejects_a_different_model(tmp_path):
    model, other = split_model("wrn10-2", "ragged"), split_model("wrn10-2", "ragged")
    x = images(2)
    path = export(model, "plain", tmp_path / "m.pt", x)
    with pytest.raises(ValueError, match="differs from the model"):
        check_export("plain", path, other, x)


def test_missing_onnx_packages_give_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript raises ImportError
    with pytest.raises(ImportError, match=re.escape("pip install splitkern[onnx]")):
        export(split_model("wrn10-2", "equal"), "onnx", tmp_path / "m.onnx", images(2))
