"""Old name of :mod:`splitkern.analysis.kernels` (the static kernel report), kept as an alias until 0.3.

``python -m splitkern.kernels`` and ``splitkern kernels`` still work; use ``splitkern report-kernels``.
"""

import sys

import splitkern.analysis.kernels as _report

if __name__ == "__main__":
    raise SystemExit(_report.main())
sys.modules[__name__] = _report  # every name, private ones included
