"""Old name of :mod:`splitkern.analysis.kernels` (the static kernel report), kept as an alias until 0.3.

``python -m splitkern.kernels`` and ``splitkern kernels`` still work; use ``splitkern report-kernels``.
"""

from splitkern.analysis.kernels import *  # noqa: F401,F403
from splitkern.analysis.kernels import main

if __name__ == "__main__":
    raise SystemExit(main())
