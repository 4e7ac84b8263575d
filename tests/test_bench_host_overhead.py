"""benchmarks/bench_host_overhead.py on a few calls: its CSV, its Markdown table, and a later run's
table beside the ``-before`` baseline. Times nothing that is asserted."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_host_overhead as bench  # noqa: E402
import common  # noqa: E402


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    threads = torch.get_num_threads()
    yield tmp_path
    torch.set_num_threads(threads)  # main() runs on one thread


def test_split_layers_are_built_from_dense_ones_with_permuted_groups():
    for case in bench.HOST_CASES:
        dense, split = bench.layers(case)
        assert split.in_index is not None and split.out_index is not None  # the groups are a permutation
        for mode in bench.MODES:
            for line in bench.LINES:
                y = bench.make_runner(case, line, mode)()
                assert y.shape == dense(bench.example(case, False)).shape
        x = bench.example(case, False)
        with torch.no_grad():  # the split layer computes the dense layer's product with the off-group weights zeroed
            torch.testing.assert_close(split(x), split.to_dense()(x))


def test_a_run_writes_its_table_and_a_later_run_shows_the_baseline_beside_its_own(results):
    few = ["--case", "linear", "--mode", "fwd", "--mode", "fwd+bwd", "--rounds", "1", "--calls", "3", "--warmup", "2"]
    bench.main(few + ["--suffix", "before"])
    before = list(results.glob("host_overhead-cpu-*-before.csv"))
    assert len(before) == 1
    rows = bench.read_csv(before[0])
    assert [(r["line"], r["mode"]) for r in rows] == [("dense", "fwd"), ("split", "fwd"), ("dense", "fwd+bwd"),
                                                      ("split", "fwd+bwd")]
    assert all(float(r["median_us"]) > 0 for r in rows) and rows[0]["ratio"] == "1.0"
    header = before[0].read_text().splitlines()[0]
    assert "1 thread(s)" in header and "splitkern commit" in header and "load average" in header
    assert "before (" not in before[0].with_suffix(".md").read_text()

    bench.main(few)
    table = next(p for p in results.glob("host_overhead-cpu-*.md") if "before" not in p.name).read_text()
    assert f"before ({before[0].name})" in table
    assert "| linear-64-M1-G4 | fwd+bwd |" in table and "<= 2.0x" in table


def test_profiled_lines_get_event_kernel_and_host_time_and_the_gpu_targets(monkeypatch):
    """The CUDA columns (event time, the profiler's kernel time, host = event - kernels) and the GPU table,
    with the CUDA timing stubbed: the row assembly is what CI can check."""
    monkeypatch.setattr(bench, "PROFILE", True)
    monkeypatch.setattr(bench, "_cuda_profile", lambda fn: (120.0, 100.0, 1, "grouped_mm_kernel 100.0us"))
    rows = bench.time_case(bench.HOST_CASES[0], "fwd", bench.LINES, rounds=1, calls=2, warmup=1)
    assert [(r["line"], r["event_us"], r["kernel_us"], r["host_us"], r["launches"]) for r in rows] == [
        ("dense", 120.0, 100.0, 20.0, 1), ("split", 120.0, 100.0, 20.0, 1)]
    assert rows[1]["top_kernels"] == "grouped_mm_kernel 100.0us"
    big = [dict(rows[0], case="linear-4096-M4096-G4", event_us=300.0, kernel_us=160.0, host_us=140.0),
           dict(rows[1], case="linear-4096-M4096-G4", event_us=75.0, kernel_us=66.0, host_us=9.0),
           dict(rows[1], case="linear-4096-M32-G4", event_us=104.0, kernel_us=5.0, host_us=99.0)]
    table = bench.markdown(big, (None, {}))
    assert "| linear-4096-M4096-G4 | fwd | split | 75.0 | 66.0 | 9.0 | 1 | 1.14x | 4.00 | event <= 1.2x kernels, " \
           "dense / split >= 2.2 | yes |" in table
    assert "| linear-4096-M32-G4 | fwd | split | 104.0 | 5.0 | 99.0 | 1 | 20.80x | - | host <= 15 µs | no |" in table
