import torch

from splitkern.nn import SplitConv2d, SplitLinear
from tests.helpers import DEVICE, assert_close


def test_torch_export_of_split_layers():
    conv = SplitConv2d.from_dense(torch.nn.Conv2d(6, 6, 3, padding=1), torch.tensor([0, 1, 1, 0, 1, 1]),
                                  torch.tensor([1, 0, 0, 1, 1, 0]))
    model = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.Flatten(), SplitLinear((100, 116), (3, 2)))
    model = model.to(DEVICE)
    x = torch.randn(2, 6, 6, 6, device=DEVICE)
    exported = torch.export.export(model, (x,))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "splitkern.grouped_conv.default" in targets and "splitkern.block_diag_mm.default" in targets
    assert_close(exported.module()(x), model(x))
