"""Static kernel report: ``splitkern report-kernels`` / ``python -m splitkern.analysis.kernels``.

Compiles every Triton kernel variant the dispatcher can launch for real GPU targets
(sm_80, sm_90) without a GPU, and reads the cubins with the cuobjdump shipped with
Triton; also reads the compiled extension's cubins. Per kernel and config it
reports registers per thread, stack/local bytes (spills), shared memory, whether
tensor-core instructions are present (HMMA on sm_80, HGMMA = wgmma on sm_90) and an
occupancy estimate. :func:`problems` lists what the CI test fails on.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import functools
import multiprocessing
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

# Per-arch limits: (max dynamic shared memory per block, shared memory per SM,
# registers per SM, max threads per SM, max blocks per SM, tensor-core SASS opcode).
ARCHS = {
    "sm80": dict(cc=80, smem_block=166912, smem_sm=167936, regs_sm=65536, threads_sm=2048, blocks_sm=32,
                 mma="HMMA"),
    "sm90": dict(cc=90, smem_block=232448, smem_sm=233472, regs_sm=65536, threads_sm=2048, blocks_sm=32,
                 mma="HGMMA"),
}


@dataclass
class KernelReport:
    arch: str
    kernel: str
    variant: str
    num_warps: int
    num_stages: int
    registers: int
    stack_bytes: int
    local_bytes: int
    shared_bytes: int
    tensor_cores: bool
    needs_tensor_cores: bool
    blocks_per_sm: int
    error: str = ""
    wgmma_tma: bool = False  # the SASS holds wgmma (HGMMA) and TMA loads (UTMALDG)
    needs_wgmma_tma: bool = False  # a CUTLASS sm90 kernel or a Triton TMA one: both are its reason to exist


def cuobjdump() -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


@functools.lru_cache(maxsize=None)
def _variants():
    """Every Triton launch variant of every registered op (``splitkern.triton.<op>.static_variants()``)."""
    from splitkern import registry

    return tuple(variant for op in registry.OPS.values() for variant in op.static_variants())


def _source(kernel, args, kwargs):
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend

    fn = kernel if isinstance(kernel, JITFunction) else JITFunction(kernel.fn)  # interpreter-decorated
    names = fn.arg_names
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, value) in enumerate(zip(names, args)):
        kind, attr = native_specialize_impl(CUDABackend, value, False, True, True)
        signature[name] = kind
        if kind == "constexpr":
            constexprs[name] = attr
        elif attr:
            attrs[(i,)] = CUDABackend.parse_attr(attr)
    options = {}
    for name, value in kwargs.items():
        if name in names:
            signature[name] = "constexpr"
            constexprs[name] = value
        else:
            options[name] = value
    missing = [n for n in names if n not in signature]
    if missing:
        raise TypeError(f"{fn.__name__}: no value for {missing}")
    return fn, ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs), options


def parse_res_usage(text: str) -> dict[str, dict[str, int]]:
    """``cuobjdump -res-usage`` output -> {function: {REG, STACK, SHARED, LOCAL}} (last arch wins)."""
    usage, current = {}, None
    for line in text.splitlines():
        match = re.match(r"\s*Function (\S+):", line)
        if match:
            current = match.group(1)
            continue
        if current and "REG:" in line:
            usage[current] = {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", line)}
            current = None
    return usage


def blocks_per_sm(arch: str, registers: int, num_warps: int, shared: int) -> int:
    """Resident blocks per SM from registers (256-register warp granularity), shared memory, threads."""
    lim = ARCHS[arch]
    regs_per_warp = -(-max(registers, 1) * 32 // 256) * 256
    by_regs = (lim["regs_sm"] // regs_per_warp) // num_warps
    by_threads = lim["threads_sm"] // (32 * num_warps)
    by_smem = lim["smem_sm"] // shared if shared else lim["blocks_sm"]
    return max(0, min(by_regs, by_threads, by_smem, lim["blocks_sm"]))


def for_arch(label: str, arch: str) -> bool:
    """Whether variant ``label`` is compiled for ``arch``: a label ending in ``-sm90`` (a TMA kernel) only there."""
    return not label.endswith("-sm90") or arch == "sm90"


def compile_one(index: int, arch: str) -> KernelReport:
    """Compile variant ``index`` for ``arch`` and read its cubin. A ``-tma-`` variant must show wgmma and TMA
    loads (HGMMA + UTMALDG), as a CUTLASS sm90 GEMM must."""
    import triton
    from triton.backends.compiler import GPUTarget

    kernel, label, args, kwargs, needs_tc = _variants()[index]
    fn, src, options = _source(kernel, args, kwargs)
    warps, stages = options.get("num_warps", 4), options.get("num_stages", 3)
    report = KernelReport(arch, fn.__name__, label, warps, stages, 0, 0, 0, 0, False, needs_tc, 0,
                          needs_wgmma_tma="-tma-" in label)
    try:
        compiled = triton.compile(src, target=GPUTarget("cuda", ARCHS[arch]["cc"], 32), options=options)
    except Exception as exc:  # a compile error is a finding, not a crash of the report
        report.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        return report
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        res = subprocess.run([cuobjdump(), "-res-usage", str(cubin)], capture_output=True, text=True,
                             check=True).stdout
        sass = subprocess.run([cuobjdump(), "-sass", str(cubin)], capture_output=True, text=True,
                              check=True).stdout
    usage = next(iter(parse_res_usage(res).values()))
    report.registers = usage.get("REG", 0)
    report.stack_bytes = usage.get("STACK", 0)
    report.local_bytes = usage.get("LOCAL", 0)
    report.shared_bytes = int(compiled.metadata.shared) + usage.get("SHARED", 0)
    report.tensor_cores = re.search(rf"\b{ARCHS[arch]['mma']}\b", sass) is not None
    report.wgmma_tma = bool(_wgmma_tma_functions(sass))
    report.blocks_per_sm = blocks_per_sm(arch, report.registers, warps, report.shared_bytes)
    return report


def _compile_star(job):
    return compile_one(*job)


def triton_reports(archs=tuple(ARCHS), jobs: int = 2, progress: bool = True) -> list[KernelReport]:
    work = [(i, arch) for arch in archs for i, (_, label, *_) in enumerate(_variants()) if for_arch(label, arch)]
    ctx = multiprocessing.get_context("spawn")  # a clean process: no TRITON_INTERPRET from the caller
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_child_init) as pool:
        results = pool.map(_compile_star, work)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(work), desc="compiling kernels", unit="kernel")
        return list(results)


def _child_init():
    import os

    os.environ.pop("TRITON_INTERPRET", None)


def _mma_functions(sass: str) -> set[tuple[str, str]]:
    """(arch, function) pairs whose SASS has tensor-core instructions (HMMA: mma.sync/wmma, HGMMA: wgmma)."""
    found, arch, function = set(), "unknown", None
    for line in sass.splitlines():
        if match := re.search(r"arch = sm_(\d+)", line):
            arch = f"sm{match.group(1)}"
        elif match := re.search(r"Function : (\S+)", line):
            function = match.group(1)
        elif function and re.search(r"\bH(G)?MMA\b", line):
            found.add((arch, function))
    return found


def _wgmma_tma_functions(sass: str) -> set[tuple[str, str]]:
    """(arch, function) pairs whose SASS has both wgmma (HGMMA) and TMA loads (UTMALDG)."""
    seen: dict[tuple[str, str], set[str]] = {}
    arch, function = "unknown", None
    for line in sass.splitlines():
        if match := re.search(r"arch = sm_(\d+)", line):
            arch = f"sm{match.group(1)}"
        elif match := re.search(r"Function : (\S+)", line):
            function = match.group(1)
        elif function and (match := re.search(r"\b(HGMMA|UTMALDG)\b", line)):
            seen.setdefault((arch, function), set()).add(match.group(1))
    return {key for key, found in seen.items() if found == {"HGMMA", "UTMALDG"}}


def is_cutlass_sm90_gemm(function: str) -> bool:
    """A CUTLASS sm90 GEMM kernel (``cutlass::device_kernel<GemmUniversal<...Sm90...>>``), by mangled name."""
    return "device_kernel" in function and "GemmUniversal" in function and "Sm90" in function


def extension_reports() -> list[KernelReport]:
    """Resource usage and tensor-core use of every kernel in the compiled extension (empty if not built).

    Its 16-bit GEMM kernels (``grouped_gemm_kernel<__half|__nv_bfloat16, ...>``) need tensor
    cores; wmma compiles to HMMA on sm_90 too (not Hopper's HGMMA). The CUTLASS sm90 GEMMs need
    HGMMA and TMA loads; their dynamic shared memory (not in the cubin) is bounded at compile
    time (a static_assert in csrc/cutlass/gemm_sm90.cuh).
    """
    try:
        from splitkern import _C
    except ImportError:
        return []
    res = subprocess.run([cuobjdump(), "-res-usage", _C.__file__], capture_output=True, text=True).stdout
    sass = subprocess.run([cuobjdump(), "-sass", _C.__file__], capture_output=True, text=True).stdout
    mma, wgmma_tma = _mma_functions(sass), _wgmma_tma_functions(sass)
    reports = []
    for chunk in res.split("Fatbin elf code:")[1:]:
        arch = re.search(r"arch = sm_(\d+)", chunk)
        name = f"sm{arch.group(1)}" if arch else "unknown"
        for fn, usage in parse_res_usage(chunk).items():
            cutlass = is_cutlass_sm90_gemm(fn)
            sixteen_bit_gemm = cutlass or ("grouped_gemm_kernel" in fn and ("__half" in fn or "bfloat16" in fn))
            reports.append(KernelReport(name, fn, "extension", 0, 0, usage.get("REG", 0), usage.get("STACK", 0),
                                        usage.get("LOCAL", 0), usage.get("SHARED", 0), (name, fn) in mma,
                                        sixteen_bit_gemm, 0, wgmma_tma=(name, fn) in wgmma_tma,
                                        needs_wgmma_tma=cutlass))
    return reports


def problems(reports: list[KernelReport]) -> list[str]:
    """What CI fails on: compile errors, spills, missing tensor cores, shared memory over the limit."""
    found = []
    for r in reports:
        where = f"{r.arch} {r.kernel} [{r.variant}]"
        if r.error:
            found.append(f"{where}: compile error: {r.error}")
            continue
        if r.stack_bytes or r.local_bytes:
            found.append(f"{where}: spills ({r.stack_bytes} B stack, {r.local_bytes} B local)")
        if r.needs_tensor_cores and not r.tensor_cores:
            found.append(f"{where}: no {ARCHS.get(r.arch, {}).get('mma', 'MMA')} tensor-core instructions")
        if r.needs_wgmma_tma and not r.wgmma_tma:
            found.append(f"{where}: an sm90 TMA GEMM (CUTLASS or Triton) without wgmma (HGMMA) and TMA (UTMALDG) "
                         "instructions")
        limit = ARCHS.get(r.arch, {}).get("smem_block")
        if limit and r.shared_bytes > limit:
            found.append(f"{where}: {r.shared_bytes} B shared memory > {limit} B per block")
    return found


def write_csv(reports: list[KernelReport], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for arch in sorted({r.arch for r in reports}):
        path = out_dir / f"kernels-{arch}.csv"
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(asdict(reports[0])))
            writer.writeheader()
            writer.writerows(asdict(r) for r in reports if r.arch == arch)
        paths.append(path)
    return paths


def format_table(reports: list[KernelReport]) -> str:
    head = f"{'arch':<5} {'kernel':<30} {'variant':<36} {'warps':>5} {'stg':>3} {'regs':>4} " \
           f"{'stack':>5} {'smem':>7} {'TC':>3} {'blk/SM':>6}"
    lines = [head, "-" * len(head)]
    for r in reports:
        tc = "yes" if r.tensor_cores else "no"
        lines.append(f"{r.arch:<5} {r.kernel:<30} {r.variant:<36} {r.num_warps:>5} {r.num_stages:>3} "
                     f"{r.registers:>4} {r.stack_bytes:>5} {r.shared_bytes:>7} {tc:>3} {r.blocks_per_sm:>6}"
                     + (f"  ERROR {r.error}" if r.error else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="splitkern report-kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", choices=list(ARCHS), help="default: all")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="CSV folder")
    args = parser.parse_args(argv)
    reports = triton_reports(tuple(args.arch or ARCHS), jobs=args.jobs) + extension_reports()
    print(format_table(reports))
    for path in write_csv(reports, args.out):
        print(f"wrote {path}")
    found = problems(reports)
    for line in found:
        print("PROBLEM:", line)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
