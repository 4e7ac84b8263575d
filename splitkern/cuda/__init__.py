"""Old name of :mod:`splitkern.extension` (the backend runs C++ on CPU tensors too), kept until 0.3."""

import sys
import warnings

import splitkern.extension as _extension

warnings.warn("splitkern.cuda is now splitkern.extension; the old name goes in splitkern 0.3", DeprecationWarning,
              stacklevel=2)
sys.modules[__name__] = _extension  # splitkern.cuda.<op> then loads splitkern/extension/<op>.py
