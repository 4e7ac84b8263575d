"""Split layers and models survive pickling: torch.save(model), pickle, copy.deepcopy, mp.spawn arguments."""

import copy
import io
import pickle

import pytest
import torch
import torch.multiprocessing as mp

from splitkern.models import alexnet
from splitkern.nn import SplitConv2d, SplitLinear
from splitkern.splitnet import split
from tests.helpers import assert_close
from tests.splitnet.test_wrn_split import randomised


def _via_torch_save(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


ROUND_TRIPS = {"pickle": lambda obj: pickle.loads(pickle.dumps(obj)), "torch.save": _via_torch_save,
               "deepcopy": copy.deepcopy}


def _split_alexnet():
    model = alexnet(10, split="2-2", variant="cifar")
    for assignment in model.assignments.values():
        torch.nn.init.normal_(assignment.logits, std=3.0)
    return split(model).eval()


MODELS = {
    "SplitLinear": lambda: SplitLinear((3, 0, 5), (4, 2, 1), in_index=torch.randperm(8),
                                       out_index=torch.randperm(7)),
    "SplitConv2d": lambda: SplitConv2d.from_dense(torch.nn.Conv2d(6, 5, 3, padding=1),
                                                  torch.tensor([0, 1, 1, 0, 1, 1]), torch.tensor([1, 0, 0, 1, 1])),
    "split WRN": lambda: split(randomised("2-2")).eval(),
    "split-aware WRN": lambda: randomised("2-2"),
    "split AlexNet": _split_alexnet,
}


def _input(name):
    if name == "SplitLinear":
        return torch.randn(4, 8)
    if name == "SplitConv2d":
        return torch.randn(2, 6, 5, 5)
    return torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize("trip", list(ROUND_TRIPS))
@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_computes_the_same_outputs(name, trip):
    model = MODELS[name]()
    x = _input(name)
    with torch.no_grad():
        expected = model(x)
        restored = ROUND_TRIPS[trip](model)
        assert restored is not model
        assert_close(restored(x), expected, rtol=0, atol=0)


def test_restored_layer_still_trains_and_loads_state_dicts():
    layer = pickle.loads(pickle.dumps(MODELS["SplitLinear"]()))
    x = torch.randn(4, 8)
    layer(x).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    other = MODELS["SplitLinear"]()
    other.load_state_dict(layer.state_dict())  # the load hook runs on the restored layer's twin
    assert_close(other(x), layer(x), rtol=0, atol=0)


def _child(rank, model, x, path):
    with torch.no_grad():
        torch.save(model(x), path)


def test_model_as_mp_spawn_argument(tmp_path):
    model = MODELS["split WRN"]()
    x = torch.randn(2, 3, 32, 32)
    path = tmp_path / "out.pt"
    with torch.no_grad():  # first, as a served model: its layers' strategy choices travel with the pickle
        expected = model(x)
    mp.spawn(_child, args=(model, x, str(path)), nprocs=1)
    assert_close(torch.load(path), expected, rtol=0, atol=0)
