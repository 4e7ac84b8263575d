"""Benchmark rows report the FLOP bound and the share of the dense FLOP rate a line reaches (speedup / bound)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_block_diag_mm  # noqa: E402
import bench_grouped_conv  # noqa: E402
import common  # noqa: E402


def _row(line, ms, bound=None):
    return common.Row("op", "case", line, "float32", 1, 1, 1, 4, "fwd", ms, 1.0, None, bound=bound)


def test_the_rate_share_is_the_speedup_over_the_bound():
    rows = [_row("dense", 8.0, bound=1.0), _row("split", 4.0, bound=4.0), _row("untimed-bound", 2.0)]
    common.add_speedups(rows)
    assert [r.speedup for r in rows] == [1.0, 2.0, 4.0]
    assert [r.of_dense_rate for r in rows] == [1.0, 0.5, None]


def test_gemm_and_conv_cases_give_the_dense_flops_of_their_layout():
    for bench in (bench_block_diag_mm, bench_grouped_conv):
        for case in bench.CASES:
            for mode in bench.MODES:
                *_, useful, _, dense = bench.describe(case, mode)
                lay = case.layout
                assert dense / useful == pytest.approx(lay.in_features * lay.out_features / lay.weight_numel)
