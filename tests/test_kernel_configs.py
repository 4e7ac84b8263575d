"""The kernel config table: the shipped JSON is what the dispatcher uses; bad tables are named errors."""

import json
import subprocess
import sys

import pytest

from splitkern.triton import block_diag_mm as tk
from splitkern.triton import configs, grouped_conv, group_weight_reg


def test_shipped_table_is_what_the_launchers_pick():
    raw = json.loads(configs.TABLE.read_text())["configs"]
    for cls, buckets in raw["block_diag_mm"]["forward"].items():
        for bucket, entry in buckets.items():
            assert tk.FORWARD_CONFIGS[cls][int(bucket)] == configs.MMConfig(**entry)
    assert grouped_conv.CONV_CONFIGS["16bit"] == configs.MMConfig(**raw["grouped_conv"]["forward"]["16bit"]["any"])
    assert group_weight_reg.REG_CONFIG == configs.MMConfig(**raw["group_weight_reg"]["both"]["fp32"]["any"])


def test_dump_and_load_round_trip(tmp_path):
    path = tmp_path / "table.json"
    path.write_text(json.dumps(configs.dump(configs.CONFIGS, "test")))
    assert configs.load(path) == configs.CONFIGS


@pytest.mark.parametrize("entry, words", [
    ({"block_m": 16, "block_n": 64, "block_k": 32, "num_warps": 4, "num_stages": 2, "tiles": 3}, "unknown config"),
    ({"block_m": 24, "block_n": 64, "block_k": 32, "num_warps": 4, "num_stages": 2}, "powers of two"),
])
def test_bad_entries_are_named(tmp_path, entry, words):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"configs": {"block_diag_mm": {"weight_grad": {"fp32": {"any": entry}}}}}))
    with pytest.raises(ValueError, match=f"block_diag_mm/weight_grad/fp32/any: .*{words}"):
        configs.load(path)


def test_environment_variable_selects_another_table(tmp_path):
    table = configs.load()
    table["block_diag_mm"]["weight_grad"]["fp32"]["any"] = configs.MMConfig(16, 32, 16, 2, 1)
    path = tmp_path / "other.json"
    path.write_text(json.dumps(configs.dump(table, "test")))
    code = "from splitkern.triton import block_diag_mm as tk; print(tk.WEIGHT_GRAD_CONFIGS['fp32'].block_n)"
    out = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ,
                                                             "SPLITKERN_KERNEL_CONFIGS": str(path)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "32"
