import pytest
import torch

from splitkern.parallel import DeviceParallel, StreamParallel
from tests.parallel.test_distributed import MODELS, example_batch, make_split_model


@pytest.mark.parametrize("name", MODELS)
def test_device_parallel_matches_the_split_model(name):
    model = make_split_model(name)
    x = example_batch()
    expected = model(x)
    parallel = DeviceParallel(model, ["cpu", "cpu", "cpu"], example=x)
    torch.testing.assert_close(parallel(x), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("devices, placement, words", [
    (["tpu"], None, "unknown device|only 'cpu'"),
    (["cuda:7"], None, "does not exist"),
    ([], None, "at least one device"),
    (["cpu", "cpu"], [0, 2], "worker ids"),
])
def test_device_parallel_bad_arguments(devices, placement, words):
    with pytest.raises(ValueError, match=words):
        DeviceParallel(make_split_model("wrn-2-4-8"), devices, placement=placement)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_stream_parallel_without_cuda_is_an_error():
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        StreamParallel(make_split_model("wrn-4"))


@pytest.mark.gpu
@pytest.mark.parametrize("capture", [False, True])
@pytest.mark.parametrize("name", MODELS)
def test_stream_parallel_matches_sequential(name, capture):
    model = make_split_model(name).cuda()
    x = example_batch().cuda()
    expected = model(x)
    parallel = StreamParallel(model, capture=capture, example=x)
    for _ in range(2):  # second call replays the graph
        torch.testing.assert_close(parallel(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("capture", [False, True])
def test_stream_parallel_waits_for_every_stream(monkeypatch, capture):
    """A GPU sleep before the trunk and before each subtree: a missing fork (side stream not
    waiting for the trunk) or join (logits read before a side stream is done) reads stale
    memory, which holds the previous input's values, so the logits come out wrong."""
    model = make_split_model("wrn-2-4-8").cuda()
    parallel = StreamParallel(model, capture=capture)
    trunk, branch = parallel.set.trunk, parallel.set.branch
    cycles = 20_000_000  # about 10 ms per sleep

    def slow_trunk(x):
        torch.cuda._sleep(cycles)
        return trunk(x)

    def slow_branch(i, features):
        torch.cuda._sleep(cycles)
        return branch(i, features)

    monkeypatch.setattr(parallel.set, "trunk", slow_trunk)
    monkeypatch.setattr(parallel.set, "branch", slow_branch)
    for seed in range(3):
        x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(seed)).cuda()
        torch.testing.assert_close(parallel(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("capture", [False, True])
def test_stream_parallel_on_a_gpu_that_is_not_current(capture):
    torch.cuda.set_device(0)
    model = make_split_model("wrn-2-4-8").to("cuda:1")
    x = example_batch().to("cuda:1")
    parallel = StreamParallel(model, capture=capture)
    for _ in range(2):
        torch.testing.assert_close(parallel(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_stream_parallel_checks_its_input():
    parallel = StreamParallel(make_split_model("wrn-4").cuda())
    with pytest.raises(ValueError, match="x is on cpu"):
        parallel(example_batch())
    with pytest.raises(TypeError, match="x must be a tensor"):
        parallel([1.0])


@pytest.mark.gpu
def test_device_parallel_on_gpus():
    devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    model = make_split_model("wrn-2-4-8")
    x = example_batch()
    expected = model(x)
    torch.testing.assert_close(DeviceParallel(model, devices)(x).cpu(), expected, rtol=1e-5, atol=1e-5)


def test_device_parallel_compiles():
    model = make_split_model("wrn-2-4-8")
    x = example_batch()
    compiled = torch.compile(DeviceParallel(model, ["cpu", "cpu"], example=x))
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_readme_parallel_snippet_runs():
    """The README's 'Running subtrees in parallel' code block, executed as written."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Running subtrees in parallel"):]
    code = section[section.index("```python\n") + len("```python\n"):]
    code = code[:code.index("```")]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    model, y = namespace["model"], namespace["y"]
    assert y.shape == (8, 100)
    with torch.no_grad():  # on a GPU machine the snippet moved the model to cuda (StreamParallel)
        want = model(namespace["x"].to(next(model.parameters()).device))
    torch.testing.assert_close(y, want, rtol=0, atol=1e-6)
