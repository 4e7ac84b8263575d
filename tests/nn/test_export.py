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


def test_folded_split_models_and_their_subtrees_export_and_go_plain():
    from splitkern.export import to_plain
    from splitkern.parallel import subtrees
    from splitkern.splitnet import split
    from tests.splitnet.test_wrn_split import randomised

    model = split(randomised("2-2")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        exported = torch.export.export(model, (x,))  # the folded (identity) ChannelPermute included
        assert_close(exported.module()(x), model(x))
        for tree in subtrees(model, x):  # a subtree's permute is a prefix/slice of the folded identity
            assert_close(to_plain(tree.module)(x), tree.module(x))
