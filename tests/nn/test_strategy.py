"""Execution strategies of the split layers (splitkern.nn.strategy): same numbers, correct caching, overrides."""

import copy

import pytest
import torch

from splitkern.nn import SplitConv2d, SplitLinear, strategy
from splitkern.nn.strategy import STRATEGIES, input_key, plan_strategies, set_strategy, strategies
from splitkern.models import wrn
from splitkern.splitnet import split
from tests.helpers import DEVICE, assert_close, assert_error_names, random_permutation

# (in_sizes, out_sizes): equal, ragged, with empty groups (no inputs / no outputs), odd-sized, one group
LAYOUTS = {
    "equal": ((4, 4), (6, 6)),
    "ragged": ((3, 7, 2), (5, 1, 4)),
    "empty": ((3, 0, 5), (2, 4, 0)),
    "odd": ((1, 3), (5, 7)),
    "single": ((5,), (3,)),
}


def _ids(sizes):
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))[torch.randperm(sum(sizes))]


def _conv(in_sizes, out_sizes, *, bias=True, permuted=True, stride=1):
    torch.manual_seed(0)
    dense = torch.nn.Conv2d(sum(in_sizes), sum(out_sizes), 3, stride, 1, bias=bias)
    if permuted:
        return SplitConv2d.from_dense(dense, _ids(in_sizes), _ids(out_sizes), len(in_sizes)).to(DEVICE)
    return SplitConv2d(in_sizes, out_sizes, 3, stride, 1, bias=bias, device=DEVICE)


def _linear(in_sizes, out_sizes, *, bias=True, permuted=True):
    torch.manual_seed(0)
    dense = torch.nn.Linear(sum(in_sizes), sum(out_sizes), bias=bias)
    if permuted:
        return SplitLinear.from_dense(dense, _ids(in_sizes), _ids(out_sizes), len(in_sizes)).to(DEVICE)
    return SplitLinear(in_sizes, out_sizes, bias=bias, device=DEVICE)


def _image(channels, channels_last, batch=2):
    x = torch.randn(batch, channels, 7, 5, device=DEVICE)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _run(layer, x, name):
    layer.strategy = name
    with torch.no_grad():
        return layer(x)


def _masked_dense_oracle(layer, x):
    """The layer's function in plain torch: the masked dense weight (original order)."""
    dense = layer.to_dense()
    with torch.no_grad():
        return dense(x)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("permuted", [True, False], ids=["permuted", "grouped"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_conv_strategy_computes_the_layer(layout, bias, permuted, channels_last):
    layer = _conv(*LAYOUTS[layout], bias=bias, permuted=permuted, stride=2 if layout == "odd" else 1)
    x = _image(layer.in_channels, channels_last)
    expected = _masked_dense_oracle(layer, x)
    names = layer.candidates()
    assert ("grouped" in names) == (layout in ("equal", "single"))
    for name in names:
        y = _run(layer, x, name)
        assert_close(y, expected, rtol=1e-5, atol=1e-5)
        assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format), name


@pytest.mark.parametrize("permuted", [True, False], ids=["permuted", "grouped"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_linear_strategy_computes_the_layer(layout, bias, permuted):
    layer = _linear(*LAYOUTS[layout], bias=bias, permuted=permuted)
    x = torch.randn(3, 2, layer.in_features, device=DEVICE)  # leading dims are kept
    expected = _masked_dense_oracle(layer, x)
    for name in layer.candidates():
        assert_close(_run(layer, x, name), expected, rtol=1e-5, atol=1e-5)


def test_auto_chooses_once_per_input_key_and_replans_for_a_new_one():
    layer = _conv(*LAYOUTS["equal"])
    with torch.no_grad():
        layer(_image(8, False, batch=2))
        layer(_image(8, False, batch=2))
        assert len(layer.chosen) == 1
        layer(_image(8, False, batch=3))  # a new batch size
        layer(_image(8, True, batch=3))  # a new memory format
        layer.double()(_image(8, False, batch=3).double())  # a new dtype
    keys = list(layer.chosen)
    assert len(keys) == 4 and len(set(keys)) == 4
    assert {k[3][0] for k in keys} == {2, 3} and {k[1] for k in keys} == {torch.float32, torch.float64}
    assert set(layer.chosen.values()) <= set(layer.candidates())


def test_a_new_device_replans():
    layer = _linear(*LAYOUTS["ragged"]).cpu()
    with torch.no_grad():
        layer(torch.randn(4, layer.in_features))
    key = next(iter(layer.chosen))
    assert key[0] == torch.device("cpu")
    if not torch.cuda.is_available():
        return
    x = torch.randn(4, layer.in_features, device="cuda")
    layer.cuda()
    with torch.no_grad():
        y = layer(x)
    assert {k[0].type for k in layer.chosen} == {"cpu", "cuda"}
    assert_close(y, _masked_dense_oracle(layer, x))


def test_compiled_layer_matches_eager_without_grad():
    layer = _conv(*LAYOUTS["ragged"])
    x = _image(layer.in_channels, True)
    compiled = torch.compile(layer, fullgraph=True)
    with torch.no_grad():
        assert_close(compiled(x), _masked_dense_oracle(layer, x))
    assert not layer.chosen  # compiled: the op, traced


def test_prepared_weights_follow_in_place_updates_and_loads():
    layer = _conv(*LAYOUTS["equal"])
    x = _image(layer.in_channels, False)
    for name in ("grouped", "per_group", "masked_dense"):
        _run(layer, x, name)
        with torch.no_grad():
            layer.weight.mul_(2.0)  # an optimizer step or load_state_dict copies in place
        assert_close(_run(layer, x, name), _masked_dense_oracle(layer, x))
        fresh = _conv(*LAYOUTS["equal"])
        with torch.no_grad():
            fresh.weight.uniform_(-1, 1)
        layer.load_state_dict(fresh.state_dict())
        assert_close(_run(layer, x, name), _masked_dense_oracle(fresh, x))
        layer.set_indices(random_permutation(layer.in_channels), random_permutation(layer.out_channels))
        assert_close(_run(layer, x, name), _masked_dense_oracle(layer, x))


def test_copies_do_not_share_prepared_weights():
    layer = _linear(*LAYOUTS["equal"])
    x = torch.randn(4, layer.in_features, device=DEVICE)
    _run(layer, x, "masked_dense")
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        twin.weight.zero_()
        twin.bias.zero_()
    assert _run(twin, x, "masked_dense").abs().max() == 0
    assert_close(_run(layer, x, "masked_dense"), _masked_dense_oracle(layer, x))


def test_strategy_overrides_are_checked():
    ragged, equal = _conv(*LAYOUTS["ragged"]), _conv(*LAYOUTS["equal"])
    assert_error_names(ValueError, "grouped.*equal groups", setattr, ragged, "strategy", "grouped")
    assert_error_names(ValueError, "unknown strategy", setattr, equal, "strategy", "fastest")
    assert_error_names(TypeError, "strategy must be a str", setattr, equal, "strategy", 1)
    equal.strategy = "grouped"
    assert "strategy=grouped" in repr(equal)
    assert set(STRATEGIES) == {"op", "grouped", "per_group", "masked_dense"}


@pytest.mark.parametrize("name", ["auto", "per_group", "masked_dense"])
def test_strategies_reject_bad_inputs_as_the_op_does(name):
    layer = _conv(*LAYOUTS["ragged"])
    layer.strategy = name
    with torch.no_grad():
        assert_error_names(ValueError, "channels", layer, torch.randn(2, layer.in_channels + 1, 5, 5, device=DEVICE))
        assert_error_names(TypeError, "dtype", layer, torch.randn(2, layer.in_channels, 5, 5, device=DEVICE).double())
        assert_error_names(ValueError, "smaller than the dilated kernel", layer,
                           torch.randn(2, layer.in_channels, 1, 0, device=DEVICE))
        assert_error_names(TypeError, "x must be a torch.Tensor", layer, [1.0])
    linear = _linear(*LAYOUTS["ragged"])
    linear.strategy = name
    with torch.no_grad():
        assert_error_names(ValueError, "x must have shape", linear, torch.randn(2, 3, device=DEVICE))


def _split_wrn(spec="2-2-2", widen=1):
    torch.manual_seed(0)
    model = wrn(16, widen, 10, split=spec)
    for assignment in model.assignments.values():
        assignment.set_hard(torch.randint(0, assignment.groups, (assignment.features,)))
    return model.eval()


def test_model_wide_plan_set_and_list():
    model = split(_split_wrn()).to(DEVICE)
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    with torch.no_grad():
        expected = model(x)  # auto: plans on this call
    chosen = plan_strategies(model, x)
    names = set(strategy.split_layers(model))
    assert set(chosen) == names and set(chosen.values()) <= set(STRATEGIES)
    assert model.training is False
    listed = strategies(model)
    assert all(input_key(x)[:3] == next(iter(keys))[:3] for keys in listed.values())
    for name in ("op", "per_group", "masked_dense"):
        set_strategy(model, name)
        assert strategies(model) == {layer: {"*": name} for layer in names}
        with torch.no_grad():
            assert_close(model(x), expected)
    assert_error_names(TypeError, "example must be a tensor", plan_strategies, model, [x])


@pytest.mark.parametrize("widen", [1, 2])
def test_folding_the_start_permutation_is_exact(widen):
    aware = _split_wrn(widen=widen)
    for bn in aware.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):  # non-trivial statistics, so a misplaced channel shows
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.normal_()
            bn.bias.data.normal_()
    folded, unfolded = split(aware).eval(), split(aware, fold_permutation=False).eval()
    permute = folded.stages[1][0]
    assert permute.is_identity and not unfolded.stages[1][0].is_identity
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), unfolded(x), rtol=1e-5, atol=1e-5)
        trunk = torch.nn.Sequential(folded.conv1, folded.stages[0])
        reference = torch.nn.Sequential(unfolded.conv1, unfolded.stages[0])
        # the trunk itself now writes the grouped order the permute used to produce
        torch.testing.assert_close(trunk(x), unfolded.stages[1][0](reference(x)), rtol=1e-5, atol=1e-5)


def test_an_unfolded_checkpoint_loads_into_a_folded_model():
    aware = _split_wrn()
    unfolded = split(aware, fold_permutation=False).eval()
    folded = split(aware).eval()
    with torch.no_grad():
        for p in unfolded.parameters():
            p.add_(0.01 * torch.randn_like(p))
    folded.load_state_dict(unfolded.state_dict())  # a split.pt written before folding existed
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), unfolded(x))
    assert not folded.stages[1][0].is_identity


def _no_timing(monkeypatch):
    def refuse(*args):
        raise AssertionError("a strategy was timed where the table has the choice")
    monkeypatch.setattr(strategy, "fastest", refuse)


def test_choice_tables_carry_choices_to_another_model_without_timing(monkeypatch, tmp_path):
    import json

    model = split(_split_wrn()).to(DEVICE)
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    chosen = plan_strategies(model, x)
    rows = strategy.choice_table(model)
    assert rows and {r["strategy"] for r in rows} <= set(STRATEGIES)
    assert all(r["device"] == strategy.device_name(DEVICE) and r["shape"][0] == 2 for r in rows)
    rows = json.loads(json.dumps(rows))  # what a file holds
    forced = [{**r, "strategy": "masked_dense"} for r in rows]  # a choice timing would rarely make everywhere

    _no_timing(monkeypatch)
    twin = split(_split_wrn()).to(DEVICE)
    assert strategy.apply_choice_table(twin, forced, example=x) == len(chosen)
    assert set(plan_strategies(twin, x).values()) == {"masked_dense"}

    path = tmp_path / "table.json"
    path.write_text(json.dumps(rows))
    monkeypatch.setenv(strategy.TABLE_ENV, str(path))
    third = split(_split_wrn()).to(DEVICE)
    assert plan_strategies(third, x) == chosen  # the environment's table, no timing
    with torch.no_grad():
        assert_close(third(x), model(x))


def test_a_table_row_for_other_shapes_is_not_taken(monkeypatch):
    layer = _conv(*LAYOUTS["equal"])
    x = _image(layer.in_channels, False)
    with torch.no_grad():
        layer(x)
    row = {**strategy.choice_table(torch.nn.Sequential(layer))[0], "strategy": "per_group"}
    other = {**row, "in_sizes": [2, 6]}  # another layer's sizes
    bigger = {**row, "shape": [9, *row["shape"][1:]]}  # another batch
    assert strategy.table_choice(layer, input_key(x), [other, bigger]) is None
    assert strategy.table_choice(layer, input_key(x), [row]) == "per_group"
    ragged = _conv(*LAYOUTS["ragged"])
    grouped_row = {**strategy._row(ragged, input_key(x)), "strategy": "grouped"}
    assert strategy.table_choice(ragged, input_key(x), [grouped_row]) is None  # not a candidate there


def test_bad_tables_are_named(monkeypatch, tmp_path):
    model = torch.nn.Sequential(_linear(*LAYOUTS["equal"]))
    assert_error_names(ValueError, "rows: a strategy choice table", strategy.apply_choice_table, model, [{"a": 1}])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    monkeypatch.setenv(strategy.TABLE_ENV, str(bad))
    with torch.no_grad():
        assert_error_names(ValueError, "SPLITKERN_STRATEGY_TABLE", model, torch.randn(2, 8, device=DEVICE))
    monkeypatch.setenv(strategy.TABLE_ENV, str(tmp_path / "missing.json"))
    with torch.no_grad():
        assert_error_names(ValueError, "no such file", model, torch.randn(2, 8, device=DEVICE))


def _masked_error(layer, x):
    return (_run(layer, x, "masked_dense") - _masked_dense_oracle(layer, x)).abs().max().item()


def test_prepared_weights_follow_fused_optimizer_steps_and_refresh():
    layer = _linear(*LAYOUTS["equal"])
    x = torch.randn(4, layer.in_features, device=DEVICE)
    _run(layer, x, "masked_dense")
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0, fused=True)
    layer.strategy = "op"
    layer(x).square().sum().backward()
    optimizer.step()  # fused: the version counters stay; the step hook still marks the weights stale
    assert _masked_error(layer, x) < 1e-5
    with torch.no_grad():
        layer.weight.data.mul_(3.0)  # .data: nothing sees it ...
    layer.refresh()  # ... until refresh()
    assert _masked_error(layer, x) < 1e-5
    with torch.no_grad():
        layer.weight.data.mul_(0.5)
    strategy.refresh(torch.nn.Sequential(layer))
    assert _masked_error(layer, x) < 1e-5


def test_inference_mode_layers_and_inputs_run():
    with torch.inference_mode():
        layer = _conv(*LAYOUTS["ragged"])
        x = _image(layer.in_channels, True)
        for name in layer.candidates():
            torch.testing.assert_close(_run(layer, x, name), layer._op_forward(x), rtol=1e-5, atol=1e-5)
    fresh = _conv(*LAYOUTS["ragged"])
    with torch.inference_mode():
        fresh.load_state_dict(layer.state_dict(), assign=True)
        torch.testing.assert_close(_run(fresh, x, "masked_dense"), layer._op_forward(x), rtol=1e-5, atol=1e-5)


def test_jit_trace_and_vmap_record_the_op_on_the_parameters():
    layer = _linear(*LAYOUTS["equal"])
    x = torch.randn(4, layer.in_features, device=DEVICE)
    with torch.no_grad():
        layer(x)  # "auto" has prepared weights now
    traced = torch.jit.trace(layer, x, check_trace=False)
    with torch.no_grad():
        layer.weight.mul_(3.0)
    with torch.no_grad():
        assert_close(traced(x), _masked_dense_oracle(layer, x))  # the trace reads the live parameter
    params = {k: torch.stack([v, 2 * v]) for k, v in layer.named_parameters()}
    with torch.no_grad():
        out = torch.func.vmap(lambda p: torch.func.functional_call(layer, p, (x,)))(params)
    assert out.shape == (2, 4, layer.out_features)
    assert_close(out[0], _masked_dense_oracle(layer, x))


def test_channel_permute_identity_is_decided_when_the_index_is_set():
    from splitkern.splitnet.convert import ChannelPermute

    permute = ChannelPermute(torch.arange(6))
    assert permute.is_identity
    permute.index = torch.tensor([1, 0, 2, 3, 4, 5])
    assert not permute.is_identity
    permute.load_state_dict({"index": torch.arange(6)})
    assert permute.is_identity
    prefix = ChannelPermute(torch.arange(4))  # a subtree's slice of a folded identity
    x = torch.randn(2, 6, 3, 3)
    torch.testing.assert_close(prefix(x), x[:, :4])
    assert copy.deepcopy(prefix).is_identity


@pytest.mark.parametrize("per_group_share, chosen", [(0.95, "grouped"), (0.85, "per_group")])
def test_more_calls_must_beat_the_fastest_one_call_strategy_by_the_margin(monkeypatch, per_group_share, chosen):
    from splitkern.nn import _plan

    times = {"grouped": 1.0, "masked_dense": 2.0, "op": 0.97, "per_group": per_group_share}
    monkeypatch.setattr(_plan, "_times", lambda candidates, x: {name: times[run] for name, run in candidates.items()})
    name, measured = _plan.fastest({name: name for name in times}, torch.zeros(1))
    assert name == chosen and measured == times


def test_candidates_are_timed_in_interleaved_rounds_fast_ones_more_often(monkeypatch):
    from splitkern.nn import _plan

    # each call "takes" the next of its candidate's scripted seconds: a slow one, and a fast one with one noisy call
    script = {"slow": iter([0.5, 0.4, 0.3]), "fast": iter([1e-4, 5e-3] + [2e-4] * 30)}
    order = []

    def seconds(run, x):
        order.append(run)
        return next(script[run])
    monkeypatch.setattr(_plan, "_call_seconds", seconds)
    best = _plan._times({"slow": "slow", "fast": "fast"}, torch.zeros(1))
    assert best == {"slow": 0.4, "fast": 2e-4}  # warm-ups are not counted; the noisy call is outvoted
    assert order[:4] == ["slow", "fast", "slow", "fast"]  # warm-ups, then the first round holds both
    assert order.count("slow") == 2 and order.count("fast") == 1 + _plan._MAX_TIMED_RUNS
