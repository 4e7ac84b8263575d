"""Offline analysis of what splitkern compiles: :mod:`splitkern.analysis.kernels` (static kernel report)."""
