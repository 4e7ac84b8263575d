"""The config sweep on tiny problems (the Triton interpreter): every table entry gets a measured or kept
config, rejected candidates never win, and the written table installs."""

import json
import subprocess

import pytest
import torch

from splitkern import backend, tune
from splitkern.triton import configs
from tests.helpers import DEVICE

pytestmark = pytest.mark.skipif(bool(backend.unsupported_reason("triton", "block_diag_mm", DEVICE, torch.float32)),
                                reason="needs the triton backend (a GPU or TRITON_INTERPRET=1)")


@pytest.fixture(scope="module")
def swept():
    return tune.tune(DEVICE, tiny=True, few=True, repeats=1, progress=False)


def entries(table):
    return {(op, ps, dc, sc): cfg for op, passes in table.items() for ps, classes in passes.items()
            for dc, shapes in classes.items() for sc, cfg in shapes.items()}


def test_every_entry_is_timed_and_the_winner_is_its_fastest_candidate(swept):
    table, rows = swept
    shipped = entries(configs.load(configs.TABLE))
    assert entries(table).keys() == shipped.keys()
    for key, winner in entries(table).items():
        mine = [r for r in rows if (r["op"], r["pass"], r["dtype_class"], r["shape_class"]) == key]
        timed = [r for r in mine if r["status"] == "ok"]
        assert timed, key
        fastest = min(timed, key=lambda r: r["median_ms"])
        assert configs.MMConfig(**{k: fastest[k] for k in winner.to_dict()}) == winner
    assert any(r["persistent"] for r in rows if r["status"] == "ok")  # the persistent launch was timed


def test_written_table_loads_and_installs(swept, tmp_path):
    table, rows = swept
    json_path, csv_path = tune.write(table, rows, tmp_path, DEVICE)
    assert "interpreter" in json.loads(json_path.read_text())["source"]
    assert configs.load(json_path) == table and csv_path.read_text().count("\n") == len(rows) + 1
    dest = tmp_path / "installed.json"
    dest.write_text(configs.TABLE.read_text())
    assert configs.load(tune.install(json_path, dest, static_check=False)) == table
    partial = json.loads(json_path.read_text())
    del partial["configs"]["grouped_conv"]
    bad = tmp_path / "partial.json"
    bad.write_text(json.dumps(partial))
    with pytest.raises(ValueError, match="no config for"):
        tune.install(bad, dest, static_check=False)


def test_install_refuses_a_table_the_static_report_finds_problems_with(monkeypatch, tmp_path):
    dest = tmp_path / "installed.json"
    dest.write_text(configs.TABLE.read_text())
    candidate = tmp_path / "measured.json"
    candidate.write_text(configs.TABLE.read_text().replace('"num_stages": 3', '"num_stages": 4', 1))
    checked = []
    monkeypatch.setattr(tune, "static_problems", lambda path: checked.append(path) or ["sm80 k [v]: spills (8 B)"])
    with pytest.raises(ValueError, match="finds 1 problems .* spills"):
        tune.install(candidate, dest)
    assert checked == [candidate] and dest.read_text() == configs.TABLE.read_text()  # nothing installed
    monkeypatch.setattr(tune, "static_problems", lambda path: [])
    assert tune.install(candidate, dest).read_text() == candidate.read_text()


def test_static_problems_reads_the_report_run_on_that_table(monkeypatch, tmp_path):
    seen = {}

    def fake_run(command, env, **kwargs):
        seen.update(command=command, table=env["SPLITKERN_KERNEL_CONFIGS"])
        report = "table\nPROBLEM: sm90 k [v]: spills (4 B stack, 0 B local)\n"
        return subprocess.CompletedProcess(command, 1, stdout=report, stderr="")

    monkeypatch.setattr(tune.subprocess, "run", fake_run)
    assert tune.static_problems(tmp_path / "t.json") == ["sm90 k [v]: spills (4 B stack, 0 B local)"]
    assert seen["command"][1:3] == ["-m", "splitkern.analysis.kernels"] and seen["table"] == str(tmp_path / "t.json")
    monkeypatch.setattr(tune.subprocess, "run",
                        lambda command, **kw: subprocess.CompletedProcess(command, 2, "", "boom"))
    with pytest.raises(RuntimeError, match="exit 2"):
        tune.static_problems(tmp_path / "t.json")


def test_a_candidate_that_computes_something_else_never_wins(monkeypatch):
    monkeypatch.setattr(tune, "_same", lambda outputs, reference: False)
    monkeypatch.setattr(tune, "problems", lambda device, tiny: tune.reg_problems(device, tiny))
    table, rows = tune.tune(DEVICE, tiny=True, repeats=1, progress=False)
    assert table["group_weight_reg"]["both"]["fp32"]["any"] == configs.load()["group_weight_reg"]["both"]["fp32"]["any"]
    assert all(r["status"].startswith("rejected: differs") for r in rows[1:]) and len(rows) > 1


def test_spent_budget_keeps_the_shipped_configs():
    table, rows = tune.tune(DEVICE, tiny=True, budget=0.0, progress=False)
    assert table == configs.load(configs.TABLE)
    assert rows and all(r["status"] == "not timed (budget spent)" for r in rows)
