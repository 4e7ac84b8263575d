"""Config sweep: time candidate launch configs per op, pass, dtype class and shape class on this GPU.

    python -m splitkern.tune --out DIR [--budget SECONDS] [--tiny]
    python -m splitkern.tune --install DIR/kernel_configs-<gpu>-<date>.json

For every entry of the kernel config table (:mod:`splitkern.triton.configs`) it builds a
representative problem (block_diag_mm: K = N = 4096 in 4 groups, aligned or ragged, M = 16, 32,
64 or 4096; grouped_conv: WRN stage 3, 512 channels at 8x8 in 4 groups, batch 128; the
regulariser: a 512x512x3x3 weight in 4 groups) and times the shipped config and its neighbours
(one tile size, the warps or the stages changed; block_diag_mm's forward also as a persistent
launch), each as the dispatcher launches it (on sm_90, an aligned 16-bit config that is neither swapped nor
persistent runs the TMA kernel). A candidate counts only if it compiles without register spills (``n_spills`` of the
compiled kernel) and computes what the shipped config computes; the fastest median wins.
Entries not reached within ``--budget`` keep the shipped config and say so.

Writes ``kernel_configs-<gpu>-<date>.json`` (the table's format: ``--install`` makes it the
shipped table after you have read it) and ``tune-<gpu>-<date>.csv`` (every candidate's time).
``--install`` first compiles the table with the static kernel report under the Triton installed
where it runs (the pinned one, in this repo's venv) and refuses a table that spills there: the
GPU machine's Triton may allocate registers differently (an H200 sweep under Triton 3.6 picked
configs that spill under 3.8). ``--no-static-check`` skips that.
``--tiny`` runs the same path on tiny problems (the Triton interpreter on CPU: the dry run).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import triton

from splitkern.triton import block_diag_mm as tk
from splitkern.triton import configs, group_weight_reg, grouped_conv
from splitkern.triton.configs import MMConfig


@dataclass
class Problem:
    """One table entry and the launches that time it (``launches(cfg)`` -> [(kernel, grid, args, kwargs)])."""

    op: str
    pass_: str
    dtype_class: str
    shape_class: str
    launches: Callable[[MMConfig], list]
    outputs: list  # tensors the launches write: compared between candidates
    accumulates: bool = False  # outputs are atomically accumulated: zeroed before every run

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.op, self.pass_, self.dtype_class, self.shape_class


def _dtype(dtype_class: str, device: torch.device) -> torch.dtype:
    if dtype_class == "fp32":
        return torch.float32
    return torch.bfloat16 if device.type == "cuda" else torch.float16  # the interpreter has no bf16 dot


def _rand(*shape, dtype, device, scale=1.0):
    return (torch.randn(*shape, device=device) * scale).to(dtype)


def mm_problems(device, tiny: bool) -> list[Problem]:
    from splitkern.layout import block_layout

    sizes = {"aligned": ((8, 16, 8), (16, 8, 8)) if tiny else ((1024,) * 4, (1024,) * 4),
             "ragged": ((5, 9, 3), (7, 2, 6)) if tiny else ((1000, 1100, 900, 1096), (1100, 900, 1096, 1000))}
    rows = {16: 16, 32: 32, 64: 64, 128: 4096} if not tiny else {16: 3, 32: 20, 64: 40, 128: 70}
    problems = []
    for dclass, buckets in tk.FORWARD_CONFIGS.items():
        dtype = _dtype(dclass, device)
        layout = block_layout(*sizes["ragged" if dclass.endswith("ragged") else "aligned"])
        w = _rand(layout.weight_numel, dtype=dtype, device=device, scale=0.02)
        b = _rand(layout.out_features, dtype=dtype, device=device)
        for bucket in buckets:
            m = rows[bucket]
            x = _rand(m, layout.in_features, dtype=dtype, device=device)
            dy = _rand(m, layout.out_features, dtype=dtype, device=device)
            y, dx = torch.empty_like(dy), torch.empty_like(x)

            def launches(cfg, x=x, dy=dy, y=y, dx=dx, b=b, w=w, layout=layout):
                return [tk.mm_launch(x, w, b, y, layout, False, None, None, cfg),
                        tk.mm_launch(dy, w, None, dx, layout, True, None, None, cfg)]
            problems.append(Problem("block_diag_mm", "forward", dclass, str(bucket), launches, [y, dx]))
    for dclass in tk.WEIGHT_GRAD_CONFIGS:
        dtype = _dtype(dclass, device)
        layout = block_layout(*sizes["aligned"])
        m = 70 if tiny else 4096
        x = _rand(m, layout.in_features, dtype=dtype, device=device)
        dy = _rand(m, layout.out_features, dtype=dtype, device=device)
        dw = torch.empty(layout.weight_numel, dtype=dtype, device=device)

        def launches(cfg, x=x, dy=dy, dw=dw, layout=layout):
            return [(tk.grouped_mm_weight_grad_kernel, *tk.weight_grad_launch(dy, x, dw, layout, None, None, cfg))]
        problems.append(Problem("block_diag_mm", "weight_grad", dclass, "any", launches, [dw]))
    return problems


def conv_problems(device, tiny: bool) -> list[Problem]:
    from splitkern.layout import block_layout

    channels, hw, batch = (16, 6, 2) if tiny else (512, 8, 128)
    layout = block_layout((channels // 4,) * 4, (channels // 4,) * 4)
    geometry = grouped_conv._geometry((3, 3), (1, 1), (1, 1), (1, 1))
    problems = []
    tables = (("forward", grouped_conv.CONV_CONFIGS), ("weight_grad", grouped_conv.CONV_WEIGHT_GRAD_CONFIGS))
    for pass_, table in tables:
        for dclass in table:
            dtype = _dtype(dclass, device)

            def act():
                return _rand(batch, channels, hw, hw, dtype=dtype, device=device).contiguous(
                    memory_format=torch.channels_last)
            x, dy = act(), act()
            w = _rand(layout.weight_numel * 9, dtype=dtype, device=device, scale=0.05)
            if pass_ == "forward":
                y, dx = torch.empty_like(dy), torch.empty_like(x)

                def launches(cfg, x=x, dy=dy, w=w, y=y, dx=dx):
                    return [(grouped_conv.grouped_conv_kernel,
                             *grouped_conv.conv_launch(x, w, None, y, layout, geometry, None, None, cfg)),
                            (grouped_conv.grouped_conv_grad_input_kernel,
                             *grouped_conv.conv_grad_input_launch(dy, w, dx, layout, geometry, None, None, cfg))]
                outputs = [y, dx]
            else:
                dw = torch.empty_like(w)

                def launches(cfg, x=x, dy=dy, dw=dw):
                    return [(grouped_conv.grouped_conv_grad_weight_kernel,
                             *grouped_conv.conv_grad_weight_launch(dy, x, dw, layout, geometry, None, None, cfg))]
                outputs = [dw]
            problems.append(Problem("grouped_conv", pass_, dclass, "any", launches, outputs))
    return problems


def reg_problems(device, tiny: bool) -> list[Problem]:
    shape, groups = ((12, 10, 3, 3), 2) if tiny else ((512, 512, 3, 3), 4)
    w = _rand(*shape, dtype=torch.float32, device=device, scale=0.05)
    p = torch.softmax(torch.randn(groups, shape[1], device=device), 0)
    q = torch.softmax(torch.randn(groups, shape[0], device=device), 0)
    a, b, cross_p, cross_q = (torch.zeros_like(t) for t in (p, q, p, q))
    da, db, dw = torch.randn_like(p), torch.randn_like(q), torch.zeros_like(w)

    def launches(cfg):
        return [(group_weight_reg.group_weight_reg_kernel, *group_weight_reg.reg_launch(w, p, q, a, b, cfg)),
                (group_weight_reg.group_weight_reg_backward_kernel,
                 *group_weight_reg.reg_backward_launch(w, p, q, da, db, dw, cross_p, cross_q, cfg))]
    return [Problem("group_weight_reg", "both", "fp32", "any", launches, [a, b, dw, cross_p, cross_q],
                    accumulates=True)]


def problems(device, tiny: bool) -> list[Problem]:
    """Every table entry, the 16-bit ones (what training and inference run) first."""
    found = mm_problems(device, tiny) + conv_problems(device, tiny) + reg_problems(device, tiny)
    return sorted(found, key=lambda p: (p.dtype_class == "fp32", p.op != "block_diag_mm", p.pass_ != "forward"))


def candidates(cfg: MMConfig, problem: Problem) -> list[MMConfig]:
    """The shipped config first, then its neighbours (one parameter changed), without duplicates."""
    found = [cfg]

    def add(**changes):
        other = dataclasses.replace(cfg, **changes)
        if other not in found:
            found.append(other)
    add(block_n=128 if cfg.block_n == 64 else 64)
    add(block_k=64 if cfg.block_k <= 32 else 32)
    add(num_warps=8 if cfg.num_warps == 4 else 4)
    add(num_stages=cfg.num_stages + 1 if cfg.num_stages < 4 else cfg.num_stages - 1)
    if problem.op == "block_diag_mm" and problem.pass_ == "forward":
        if not cfg.swap_ab:
            add(block_m=128 if cfg.block_m == 64 else 64)
        add(persistent=2)
        add(persistent=2, group_m=4)
    return found


def _run(problem: Problem, cfg: MMConfig) -> list:
    if problem.accumulates:
        for t in problem.outputs:
            t.zero_()
    return [kernel[grid](*args, **kwargs) for kernel, grid, args, kwargs in problem.launches(cfg)]


_PAIR_SECONDS = 1e-3  # GPU work one event pair spans: a pair around one small launch times the host, not tiles
_MAX_RUNS_PER_PAIR = 200
_HOST_SECONDS_PER_RUN = 50e-6  # generous host cost of one run's launches, to keep the GPU busy ahead of them


def _event_seconds(problem: Problem, cfg: MMConfig, runs: int) -> float:
    """GPU seconds per run of ``runs`` back-to-back runs between one event pair, queued behind a GPU sleep
    long enough that the GPU never waits for the host's launches."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    cycles_per_second = torch.cuda.get_device_properties(torch.cuda.current_device()).clock_rate * 1e3
    torch.cuda._sleep(int(min(runs * _HOST_SECONDS_PER_RUN * cycles_per_second, 2**31 - 1)))
    start.record()
    for _ in range(runs):
        _run(problem, cfg)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / runs


def _seconds(problem: Problem, cfg: MMConfig, device, repeats: int) -> float:
    """Median seconds of one run of the problem's launches (on CUDA over ``repeats`` event pairs, each
    spanning enough runs for ~1 ms of GPU work)."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        _run(problem, cfg)
        return time.perf_counter() - t0
    one = _event_seconds(problem, cfg, 1)
    runs = max(1, min(_MAX_RUNS_PER_PAIR, math.ceil(_PAIR_SECONDS / max(one, 1e-7))))
    return statistics.median(_event_seconds(problem, cfg, runs) for _ in range(repeats))


def _same(outputs, reference) -> bool:
    for got, want in zip(outputs, reference):
        scale = want.float().abs().max().item() if want.numel() else 0.0
        if not torch.allclose(got.float(), want.float(), rtol=2e-2, atol=2e-2 * max(scale, 1e-6)):
            return False
    return True


def tune(device: torch.device, *, tiny: bool = False, budget: float = 170.0, repeats: int = 10,
         few: bool = False, progress: bool = True):
    """Time every table entry's candidates; returns ``(table, rows)``: winners in ``configs.load``'s
    shape, and one dict per candidate (entry, config, median_ms, status)."""
    from tqdm import tqdm

    table = configs.load(configs.TABLE)
    rows = []
    start = time.perf_counter()
    todo = problems(device, tiny)
    for problem in tqdm(todo, desc="tune", unit="entry", disable=not progress):
        op, pass_, dclass, sclass = problem.key
        shipped = table[op][pass_][dclass][sclass]
        reference, best = None, (float("inf"), shipped)
        found = candidates(shipped, problem)
        if few:  # the shipped config and the most different neighbour (a persistent launch where there is one)
            found = found[:1] + found[-1:]
        for cfg in dict.fromkeys(found):
            row = {"op": op, "pass": pass_, "dtype_class": dclass, "shape_class": sclass, **cfg.to_dict(),
                   "median_ms": "", "status": ""}
            rows.append(row)
            if time.perf_counter() - start > budget:
                row["status"] = "not timed (budget spent)"
                continue
            try:
                compiled = _run(problem, cfg)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                spills = sum(getattr(k, "n_spills", 0) or 0 for k in compiled)
                if spills:
                    row["status"] = f"rejected: {spills} spilled registers"
                    continue
                outputs = [t.clone() for t in problem.outputs]
                if reference is None:
                    reference = outputs
                elif not _same(outputs, reference):
                    row["status"] = "rejected: differs from the shipped config"
                    continue
                seconds = _seconds(problem, cfg, device, repeats)
            except Exception as exc:  # a candidate that does not compile or launch is reported, not fatal
                row["status"] = f"rejected: {type(exc).__name__}: {str(exc)[:120]}"
                continue
            row["median_ms"] = round(seconds * 1e3, 4)
            row["status"] = "ok"
            if seconds < best[0]:
                best = (seconds, cfg)
        table[op][pass_][dclass][sclass] = best[1]
    return table, rows


def _label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).split()[-1]
    return "cpu-interpreter"


def write(table: dict, rows: list[dict], out: Path, device: torch.device) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    stamp = f"{_label(device)}-{datetime.date.today().isoformat()}"
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else "the Triton CPU interpreter (timings mean nothing)")
    source = (f"measured by `python -m splitkern.tune` on {name}, torch {torch.__version__}, "
              f"{datetime.date.today().isoformat()}: the fastest spill-free candidate per entry")
    json_path = out / f"kernel_configs-{stamp}.json"
    json_path.write_text(json.dumps(configs.dump(table, source), indent=1))
    csv_path = out / f"tune-{stamp}.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return json_path, csv_path


def static_problems(path: Path) -> list[str]:
    """What the static kernel report (:mod:`splitkern.analysis.kernels`: sm_80 and sm_90 cubins of every
    variant, with this process's Triton) finds wrong when the table at ``path`` is the one launched."""
    env = {**os.environ, "SPLITKERN_KERNEL_CONFIGS": str(Path(path).resolve())}
    env.pop("TRITON_INTERPRET", None)
    with tempfile.TemporaryDirectory() as out:
        run = subprocess.run([sys.executable, "-m", "splitkern.analysis.kernels", "--out", out], env=env,
                             capture_output=True, text=True)
    found = [line.removeprefix("PROBLEM: ") for line in run.stdout.splitlines() if line.startswith("PROBLEM: ")]
    if run.returncode not in (0, 1) or bool(found) != (run.returncode == 1):
        raise RuntimeError(f"the static kernel report failed (exit {run.returncode}): {run.stderr[-2000:]}")
    return found


def install(path: Path, dest: Path = configs.TABLE, *, static_check: bool = True) -> Path:
    """Make the table at ``path`` the shipped one, after checking it loads, covers every entry and (unless
    ``static_check`` is False) compiles without a problem in :func:`static_problems`."""
    new, shipped = configs.load(path), configs.load(dest)
    missing = [(op, ps, dc, sc) for op, passes in shipped.items() for ps, classes in passes.items()
               for dc, shapes in classes.items() for sc in shapes
               if sc not in new.get(op, {}).get(ps, {}).get(dc, {})]
    if missing:
        raise ValueError(f"{path}: no config for {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    found = static_problems(path) if static_check else []
    if found:
        raise ValueError(f"{path}: the static kernel report finds {len(found)} problems with this table under "
                         f"Triton {triton.__version__}, e.g. {found[:3]}; pick other configs for those entries, or "
                         "install anyway with --no-static-check")
    shutil.copy(path, dest)
    return dest


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m splitkern.tune", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("tune-results"), help="folder for the JSON table and CSV")
    parser.add_argument("--budget", type=float, default=170.0, help="seconds of timing; later entries keep theirs")
    parser.add_argument("--tiny", action="store_true", help="tiny problems (the CPU interpreter dry run)")
    parser.add_argument("--install", type=Path, help="make this measured table the shipped one, then exit")
    parser.add_argument("--no-static-check", action="store_true",
                        help="with --install: skip compiling the table with the static kernel report first")
    args = parser.parse_args(argv)
    if args.install:
        print(f"installed {install(args.install, static_check=not args.no_static_check)}")
        return
    from splitkern import backend

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reason = backend.unsupported_reason("triton", "block_diag_mm", device, torch.float32)
    if reason:
        parser.error(f"the sweep runs the Triton kernels: {reason}")
    if device.type == "cpu" and not args.tiny:
        parser.error("on CPU (the Triton interpreter) only --tiny makes sense: timings there mean nothing")
    table, rows = tune(device, tiny=args.tiny, budget=args.budget, few=args.tiny)
    for path in write(table, rows, args.out, device):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
