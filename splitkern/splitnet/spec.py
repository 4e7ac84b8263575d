"""Split specs: how many groups each split level has (docs/design.md §1.3)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SplitSpec:
    """Groups per split level, lowest level first, logits last: ``"2-4-8"`` -> (2, 4, 8).

    ``"4"`` splits the logits only; ``"4-4"`` the last stage and the logits; ``"2-2-2"``
    three levels. In a tree each level's group count is a multiple of the one below:
    child groups map to their parents evenly and consecutively.
    """

    groups: tuple[int, ...]

    @classmethod
    def parse(cls, spec) -> "SplitSpec":
        if isinstance(spec, SplitSpec):
            return spec
        if isinstance(spec, int) and not isinstance(spec, bool):
            spec = str(spec)
        if isinstance(spec, str):
            try:
                groups = tuple(int(part) for part in spec.strip().split("-"))
            except ValueError:
                raise ValueError(f"split spec {spec!r} must be dash-separated group counts like '2-4-8'") from None
        elif isinstance(spec, (tuple, list)) and all(isinstance(g, int) for g in spec):
            groups = tuple(spec)
        else:
            raise TypeError(f"split spec must be a string like '2-4-8', an int or a tuple of ints, got {spec!r}")
        if not groups or any(g < 2 for g in groups):
            raise ValueError(f"split spec {spec!r}: every level needs at least 2 groups")
        for lower, upper in zip(groups, groups[1:]):
            if upper % lower:
                raise ValueError(f"split spec {spec!r}: {upper} groups cannot be a tree over {lower} "
                                 f"(each level must be a multiple of the level below)")
        return cls(groups)

    @property
    def levels(self) -> int:
        return len(self.groups)

    def check_levels(self, available: tuple[str, ...], model: str) -> None:
        if self.levels > len(available):
            raise ValueError(f"split spec {self}: {model} has only {len(available)} split levels "
                             f"({', '.join(available)}), got {self.levels}")

    def __str__(self) -> str:
        return "-".join(map(str, self.groups))
