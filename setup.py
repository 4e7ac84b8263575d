"""Build splitkern; compiles the C++/CUDA extension splitkern._C when nvcc is found.

Environment:
  CUDA_HOME                  CUDA toolkit (default /usr/local/cuda when it exists)
  TORCH_CUDA_ARCH_LIST       archs to build (default "8.0;9.0a")
  SPLITKERN_SKIP_CUDA_BUILD  =1 builds the pure-Python package only
"""

import glob
import os

from setuptools import find_packages, setup

DEFAULT_ARCHS = "8.0;9.0a"


def _cuda_home():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home and os.path.exists("/usr/local/cuda/bin/nvcc"):
        home = "/usr/local/cuda"
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return home
    return None


def _extensions():
    if os.environ.get("SPLITKERN_SKIP_CUDA_BUILD") == "1":
        print("splitkern: SPLITKERN_SKIP_CUDA_BUILD=1, not building splitkern._C")
        return [], {}
    home = _cuda_home()
    if home is None:
        print("splitkern: no CUDA toolchain (CUDA_HOME/nvcc) found, not building splitkern._C")
        return [], {}
    os.environ["CUDA_HOME"] = home  # read by torch.utils.cpp_extension at import
    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    define = [("SPLITKERN_CUDA_ARCHS", '"%s"' % archs)]
    ext = CUDAExtension(
        "splitkern._C",
        sources=sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu")),
        define_macros=define,
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"]},
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="splitkern",
    version="0.1.0",
    description="Ragged block-diagonal kernels and layers for SplitNet",
    packages=find_packages(include=["splitkern", "splitkern.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.6", "numpy", "tqdm"],
    extras_require={"triton": ["triton>=3.2"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={"console_scripts": ["splitkern=splitkern.cli:main"]},
)
