"""Launch configs of the Triton kernels: one table, ``kernel_configs.json``, read here once.

Schema: ``configs[op][pass][dtype_class][shape_class] -> MMConfig fields``. Passes:
``forward`` (block_diag_mm's forward and input gradient share it), ``weight_grad``,
``both`` (the regulariser). Dtype classes: ``16bit`` / ``16bit-aligned`` / ``16bit-ragged`` /
``fp32``; shape classes: batch buckets (``"16"``: M <= 16, ...) or ``"any"``. The shipped table
holds configs picked with the static kernel report; ``python -m splitkern.tune`` on a GPU times
candidates and writes measured winners in the same format (``--install`` puts one here).
``SPLITKERN_KERNEL_CONFIGS=FILE`` reads another table instead (the sweep uses it).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

TABLE = Path(__file__).with_name("kernel_configs.json")


@dataclass(frozen=True)
class MMConfig:
    """Tile shape and launch parameters of one kernel variant."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    swap_ab: bool = False  # small M: features fill the MMA rows, the batch its columns
    persistent: int = 0  # > 0: that many programs per SM walk the tile table (block_diag_mm only)
    group_m: int = 8  # persistent order: row tiles that share each weight tile in turn (L2 reuse)

    def to_dict(self) -> dict:
        return asdict(self)


def parse(entry: dict, where: str) -> MMConfig:
    known = {f.name for f in fields(MMConfig)}
    unknown = set(entry) - known
    if unknown:
        raise ValueError(f"{where}: unknown config fields {sorted(unknown)}; known {sorted(known)}")
    cfg = MMConfig(**entry)
    sizes = (cfg.block_m, cfg.block_n, cfg.num_warps)
    if any(s < 1 or s & (s - 1) for s in sizes) or cfg.block_k < 0 or cfg.num_stages < 1:
        raise ValueError(f"{where}: block sizes and warps must be powers of two, stages >= 1, got {cfg}")
    return cfg


def load(path: str | os.PathLike | None = None) -> dict:
    """``{op: {pass: {dtype_class: {shape_class: MMConfig}}}}`` from ``path`` (default: the shipped table)."""
    path = Path(path or os.environ.get("SPLITKERN_KERNEL_CONFIGS") or TABLE)
    raw = json.loads(path.read_text())
    if "configs" not in raw:
        raise ValueError(f"{path}: not a kernel config table (no 'configs')")
    return {op: {ps: {dc: {sc: parse(entry, f"{path}: {op}/{ps}/{dc}/{sc}") for sc, entry in shapes.items()}
                      for dc, shapes in classes.items()}
                 for ps, classes in passes.items()}
            for op, passes in raw["configs"].items()}


def dump(table: dict, source: str) -> dict:
    """The JSON form of a ``load``-shaped table."""
    return {"source": source,
            "configs": {op: {ps: {dc: {sc: cfg.to_dict() for sc, cfg in shapes.items()}
                                  for dc, shapes in classes.items()}
                             for ps, classes in passes.items()}
                        for op, passes in table.items()}}


CONFIGS = load()
