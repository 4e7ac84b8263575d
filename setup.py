"""Build splitkern and its compiled extension splitkern._C.

With nvcc (CUDA_HOME) the extension holds the C++ CPU kernels and the CUDA kernels
(CUDAExtension); without it, the C++ CPU kernels only (CppExtension, as
pytorch/extension-cpp does): `splitkern info` then lists no ":cuda" kernel. If that C++-only
build fails (no compiler), the package installs without the extension and says so.

Environment:
  CUDA_HOME                  CUDA toolkit (default /usr/local/cuda when it exists)
  SPLITKERN_CUBLAS_DIR       folder with include/cublas_api.h and lib/libcublas.so* (default: CUDA_HOME's,
                             else the nvidia-cublas wheel torch depends on); without one the grouped
                             cuBLAS line (ext_block_diag_mm_cublas) is not built
  TORCH_CUDA_ARCH_LIST       archs to build (default "8.0;9.0a")
  SPLITKERN_CPU_ONLY_BUILD   =1 builds the C++ CPU kernels only, even where nvcc is found
  SPLITKERN_SKIP_CUDA_BUILD  =1 builds the pure-Python package only (no extension at all)
  SPLITKERN_CUTLASS_INCLUDE  CUTLASS's include/ folder (default: build/cutlass_include, else the nvidia-cutlass
                             wheel's)
  SPLITKERN_SKIP_CUTLASS     =1 leaves out the CUTLASS sm90 grouped GEMMs (csrc/cutlass/*_sm90.cu: about a
                             minute of nvcc each on 2 cores); they are built when the nvidia-cutlass
                             headers are installed and the arch list holds 9.0a
"""

import concurrent.futures
import glob
import os
import subprocess
import sys

from setuptools import find_packages, setup

DEFAULT_ARCHS = "8.0;9.0a"


def _cuda_home():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home and os.path.exists("/usr/local/cuda/bin/nvcc"):
        home = "/usr/local/cuda"
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return home
    return None


def _find_cublas(cuda_home):
    """``(folder, library)``: a folder with cuBLAS's headers (include/) and its shared library
    (lib/ or lib64/), or None."""
    candidates = [os.environ.get("SPLITKERN_CUBLAS_DIR"), cuda_home]
    try:
        import nvidia  # the nvidia-* wheels torch's CUDA build depends on (namespace package)

        candidates += [os.path.join(p, sub) for p in nvidia.__path__ for sub in ("cu13", "cublas")]
    except ImportError:
        pass
    for folder in filter(None, candidates):
        libs = sorted(glob.glob(os.path.join(folder, "lib*", "libcublas.so*")))
        if os.path.exists(os.path.join(folder, "include", "cublas_api.h")) and libs:
            return folder, libs[0]
    return None


def _cublas_build_args(cuda_home):
    """Compile/link arguments for csrc/cuda/*cublas*: cuBLAS's headers in a folder of their own (the
    wheel's include/ also holds CUDA runtime headers that must not shadow the toolkit's), and the
    library by file name (the wheel ships only libcublas.so.N)."""
    found = _find_cublas(cuda_home)
    if found is None:
        print("splitkern: no cuBLAS headers + library found, not building the grouped cuBLAS line")
        return {}
    folder, lib = found
    headers = os.path.join("build", "cublas_include")
    os.makedirs(headers, exist_ok=True)
    for name in ("cublas_api.h", "cublas_v2.h", "cublas.h", "cublasLt.h", "cusparse.h", "cusolverDn.h",
                 "cusolver_common.h"):
        src, dst = os.path.join(folder, "include", name), os.path.join(headers, name)
        if os.path.lexists(dst):
            os.remove(dst)
        if os.path.exists(src):
            os.symlink(os.path.abspath(src), dst)
    return {"include_dirs": [os.path.abspath(headers)], "define_macros": [("SPLITKERN_WITH_CUBLAS", "1")],
            "extra_link_args": [f"-L{os.path.dirname(lib)}", f"-l:{os.path.basename(lib)}"]}


def _link_args():
    # A compiler that links libstdc++ statically (CXX=/opt/gcc/bin/g++ on the GPU image) puts a second
    # copy of it in _C.so; exported, it mixes with the process's own libstdc++ and every TORCH_CHECK
    # message that formats a number lost it (seen here) or segfaulted (seen on an H200). Keep any
    # static archive's symbols private to the extension.
    return ["-Wl,--exclude-libs,ALL"] if sys.platform.startswith("linux") else []


def cpu_extension(name="splitkern._C"):
    """The extension with the C++ CPU kernels only (csrc/*.cpp; no nvcc needed)."""
    from torch.utils.cpp_extension import CppExtension

    return CppExtension(name, sources=sorted(glob.glob("csrc/*.cpp")), extra_link_args=_link_args(),
                        extra_compile_args={"cxx": ["-O3"]})


def cutlass_include():
    """The CUTLASS C++ headers: ``SPLITKERN_CUTLASS_INCLUDE``, else build/cutlass_include (a copy carried to a
    machine without the wheel, see benchmarks/gpu_session.sh), else the installed nvidia-cutlass wheel's
    (cutlass_library/source/include); None when none has cutlass/cutlass.h."""
    candidates = [os.environ.get("SPLITKERN_CUTLASS_INCLUDE"), os.path.join("build", "cutlass_include")]
    try:
        import cutlass_library

        candidates.append(os.path.join(os.path.dirname(cutlass_library.__file__), "source", "include"))
    except ImportError:
        pass
    for include in filter(None, candidates):
        if os.path.exists(os.path.join(include, "cutlass", "cutlass.h")):
            return os.path.abspath(include)
    return None


CUTLASS_SOURCES = sorted(glob.glob("csrc/cutlass/*_sm90.cu"))
CUTLASS_OBJECTS = [os.path.join("build", "cutlass", os.path.basename(src).replace(".cu", ".o"))
                   for src in CUTLASS_SOURCES]


def _cutlass_wanted(archs: str) -> bool:
    if os.environ.get("SPLITKERN_SKIP_CUTLASS") == "1":
        print("splitkern: SPLITKERN_SKIP_CUTLASS=1, not building the CUTLASS sm90 kernels")
        return False
    if "9.0a" not in archs.replace(" ", ";").split(";"):
        print(f"splitkern: TORCH_CUDA_ARCH_LIST={archs!r} has no 9.0a, not building the CUTLASS sm90 kernels")
        return False
    if cutlass_include() is None:
        print("splitkern: no nvidia-cutlass headers (pip install nvidia-cutlass), not building the CUTLASS kernels")
        return False
    return True


def _cutlass_command(home, source, obj):
    """nvcc for one CUTLASS translation unit: sm_90a only (wgmma and TMA exist nowhere else), torch's
    headers and C++ ABI, position-independent code to link into _C."""
    import torch
    from torch.utils.cpp_extension import include_paths

    includes = [cutlass_include(), os.path.abspath("csrc/cutlass"), *include_paths(device_type="cuda")]
    return [os.path.join(home, "bin", "nvcc"), "-std=c++20", "-O3", "-DNDEBUG", "-lineinfo",
            "-gencode=arch=compute_90a,code=sm_90a", "--expt-relaxed-constexpr", "-diag-suppress", "2908",
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", "-Xcompiler", "-fPIC",
            *(f"-I{path}" for path in includes), "-c", source, "-o", obj]


def build_cutlass_objects(home, jobs: int = 2) -> None:
    """Compile csrc/cutlass/*_sm90.cu into build/cutlass/*.o (those older than their sources or headers),
    ``jobs`` at a time; _C links them (CUDAExtension would build them for every arch in the list)."""
    headers = glob.glob("csrc/cutlass/*.h") + glob.glob("csrc/cutlass/*.cuh")
    # the objects hold torch's and CUTLASS's code: another torch, CUTLASS or command rebuilds them all
    stamp_path = os.path.join("build", "cutlass", "stamp")
    stamp = repr([_cutlass_command(home, src, obj) for src, obj in zip(CUTLASS_SOURCES, CUTLASS_OBJECTS)]
                 + [__import__("torch").__version__])
    same = os.path.exists(stamp_path) and open(stamp_path).read() == stamp
    stale = [(src, obj) for src, obj in zip(CUTLASS_SOURCES, CUTLASS_OBJECTS)
             if not same or not os.path.exists(obj)
             or os.path.getmtime(obj) < max(os.path.getmtime(f) for f in [src, *headers])]
    os.makedirs(os.path.join("build", "cutlass"), exist_ok=True)

    def compile_one(pair):
        src, obj = pair
        print(f"splitkern: nvcc (CUTLASS, sm_90a) {src}", flush=True)
        done = subprocess.run(_cutlass_command(home, src, obj), capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"nvcc failed on {src}:\n{done.stdout[-4000:]}{done.stderr[-8000:]}")

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(compile_one, stale))
    with open(stamp_path, "w") as f:
        f.write(stamp)


def cuda_extension(home, name="splitkern._C"):
    """The extension with the C++ CPU kernels and the CUDA kernels (csrc/cuda/*.cu, built by nvcc), plus the
    CUTLASS sm90 kernels (csrc/cutlass/, objects from :func:`build_cutlass_objects`) when wanted.
    ``CUDA_HOME`` must already name ``home`` when torch.utils.cpp_extension is first imported."""
    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    from torch.utils.cpp_extension import CUDAExtension

    cublas = _cublas_build_args(home)
    cutlass = _cutlass_wanted(archs)
    return CUDAExtension(
        name,
        sources=sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu"))
        + (sorted(glob.glob("csrc/cutlass/*.cpp")) if cutlass else []),
        define_macros=[("SPLITKERN_CUDA_ARCHS", '"%s"' % archs), ("SPLITKERN_WITH_CUDA", "1")]
        + cublas.get("define_macros", []),
        include_dirs=cublas.get("include_dirs", []),
        extra_objects=[os.path.abspath(obj) for obj in CUTLASS_OBJECTS] if cutlass else [],
        extra_link_args=cublas.get("extra_link_args", []) + _link_args(),
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"]},
    )


def _with_cutlass_objects(build_ext, home):
    """``build_ext`` that compiles the CUTLASS objects an extension links (if any) while the rest of the
    extension compiles, and links once both are done (on a many-core build machine the two overlap)."""

    class CutlassBuild(build_ext):
        def build_extensions(self):
            if not any(obj.endswith("_sm90.o") for ext in self.extensions for obj in ext.extra_objects):
                return super().build_extensions()
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                cutlass = pool.submit(build_cutlass_objects, home, int(os.environ.get("MAX_JOBS", "2")))
                link = self.compiler.link_shared_object

                def link_after_cutlass(*args, **kwargs):
                    cutlass.result()  # raises the CUTLASS build's error, if any
                    return link(*args, **kwargs)
                self.compiler.link_shared_object = link_after_cutlass
                try:
                    super().build_extensions()
                finally:
                    self.compiler.link_shared_object = link
                cutlass.result()

    return CutlassBuild


def _optional(build_ext):
    """``build_ext`` that installs without the extension, saying so, when the C++-only build fails (no
    C++ compiler or Python headers): splitkern then runs on its reference and Triton backends, and
    ``splitkern info`` says the extension is not built. A CUDA build that fails stays an error."""

    class OptionalBuild(build_ext):
        def run(self):
            try:
                super().run()
            except Exception as exc:  # any compiler or linker failure
                print(f"splitkern: WARNING: could not build the C++ extension splitkern._C ({exc}); installing "
                      "without it (set SPLITKERN_SKIP_CUDA_BUILD=1 to skip the attempt)")

    return OptionalBuild


def _extensions():
    if os.environ.get("SPLITKERN_SKIP_CUDA_BUILD") == "1":
        print("splitkern: SPLITKERN_SKIP_CUDA_BUILD=1, not building splitkern._C")
        return [], {}
    home = _cuda_home()
    cpu_only = home is None or os.environ.get("SPLITKERN_CPU_ONLY_BUILD") == "1"
    if not cpu_only:
        os.environ["CUDA_HOME"] = home  # torch.utils.cpp_extension reads it once, when first imported
    from torch.utils.cpp_extension import BuildExtension

    build_ext = BuildExtension.with_options(use_ninja=True)
    if not cpu_only:
        return [cuda_extension(home)], {"build_ext": _with_cutlass_objects(build_ext, home)}
    print("splitkern: " + ("SPLITKERN_CPU_ONLY_BUILD=1" if home else "no CUDA toolchain (CUDA_HOME/nvcc) found")
          + ", building the C++ CPU kernels only")
    return [cpu_extension()], {"build_ext": _optional(build_ext)}


ext_modules, cmdclass = _extensions()

setup(
    name="splitkern",
    version="0.2.1",
    description="Ragged block-diagonal kernels and layers for SplitNet",
    packages=find_packages(include=["splitkern", "splitkern.*"]),
    package_data={"splitkern": ["py.typed"], "splitkern.triton": ["kernel_configs.json"]},
    python_requires=">=3.10",
    # what the default `splitkern train` and `splitkern plot` need; TensorBoard and ONNX are opt-in extras
    install_requires=["torch>=2.6", "numpy", "tqdm", "matplotlib"],
    extras_require={"triton": ["triton>=3.2"], "tensorboard": ["tensorboard"], "vision": ["torchvision"],
                    "onnx": ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={"console_scripts": ["splitkern=splitkern.cli:main"]},
)
