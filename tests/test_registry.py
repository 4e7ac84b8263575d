"""The op registry (splitkern/registry.py): the one table ops, backend, extension, info and the kernel
report read; a toy op added with one registry row and its own files; no import cycle."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from splitkern import backend, registry
from splitkern.registry import Kernel, Op

PACKAGE = Path(__file__).resolve().parent.parent / "splitkern"
TOY = Op("toy_scale", (Kernel("toy_scale", "(Tensor x, float alpha) -> Tensor"),),
         modules={"reference": "tests.toy_op.reference"}, public="tests.toy_op.ops")


@pytest.fixture
def toy():
    """The toy op registered for one test (its torch custom op, once defined, stays for the process)."""
    registry.register(TOY)
    try:
        yield TOY
    finally:
        registry.unregister(TOY.name)


def test_the_toy_op_runs_through_the_registry_alone(toy):
    toy_scale = toy.function()
    x = torch.randn(3, 5, requires_grad=True)
    y = toy_scale(x, 2.5)
    torch.testing.assert_close(y, 2.5 * x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 2.5))
    assert str(torch.ops.splitkern.toy_scale.default._schema) == "splitkern::toy_scale(Tensor x, float alpha) -> Tensor"
    torch.library.opcheck(torch.ops.splitkern.toy_scale.default, (torch.randn(4, 2), 3.0))


def test_the_backend_offers_a_toy_op_only_the_backends_its_row_names(toy, monkeypatch):
    assert backend.available_backends("cpu", "toy_scale") == ["reference"]
    assert backend.select("toy_scale", torch.device("cpu"), torch.float32) == "reference"
    assert backend.implementation("toy_scale", torch.device("cpu"), torch.float32).__name__ == "tests.toy_op.reference"
    assert "has no triton implementation" in backend.unsupported_reason("triton", "toy_scale", torch.device("cpu"),
                                                                        torch.float32)
    monkeypatch.setenv("SPLITKERN_BACKEND", "triton")  # forced: refused for this op, never a silent fallback
    backend.reload_environment()
    with pytest.raises(backend.BackendUnavailableError, match="toy_scale: forced backend 'triton'"):
        toy.function()(torch.ones(2), 2.0)


def test_info_and_the_kernel_report_read_the_registry(toy):
    from splitkern import info

    assert "toy_scale on cpu (fp32): usable ['reference'], chosen: reference" in info.report()
    assert toy.static_variants() == ()  # no Triton module: nothing for the static report to compile
    builtin = {op.name for op in registry.OPS.values() if op.name != "toy_scale"}
    assert builtin == {"block_diag_mm", "grouped_conv", "group_weight_reg"}


def test_ops_binds_each_registered_builtin_op():
    import splitkern.ops

    assert splitkern.ops.__all__ == sorted(registry.OPS)
    for name, op in registry.OPS.items():
        assert getattr(splitkern.ops, name) is op.function()
        for kernel in op.kernels:
            if kernel.public:
                schema = str(getattr(torch.ops.splitkern, kernel.name).default._schema)
                assert schema == f"splitkern::{kernel.name}{kernel.schema}"


def test_the_extension_ops_take_their_schemas_from_the_registry():
    ext, why = backend.extension()
    assert ext is not None, why  # CI builds the extension
    for op in registry.OPS.values():
        for kernel in op.kernels:
            schema = str(getattr(torch.ops.splitkern, f"ext_{kernel.name}").default._schema)
            assert schema == f"splitkern::ext_{kernel.name}{kernel.extension_schema()}"
            assert "SymInt" not in schema
            if kernel.emulated:
                emulated = getattr(torch.ops.splitkern_emulated, kernel.name).default._schema
                assert str(emulated) == f"splitkern_emulated::{kernel.name}{kernel.extension_schema()}"


def test_the_cuda_backend_name_is_an_alias_of_extension(monkeypatch):
    assert "extension" in backend.available_backends("cpu") and "cuda" not in backend.available_backends("cpu")
    with backend.use_backend("cuda") as name:
        assert name == "extension" and backend.forced_backend() == "extension"
    monkeypatch.setenv("SPLITKERN_BACKEND", "cuda")
    backend.reload_environment()
    assert backend.forced_backend() == "extension"
    with pytest.raises(ValueError, match="unknown backend 'cuda2'"):
        backend.use_backend("cuda2").__enter__()


@pytest.mark.parametrize("row, message", [
    (dict(name="block_diag_mm", kernels=(Kernel("x_new", "(Tensor x) -> Tensor"),)), "already registered"),
    (dict(name="other", kernels=(Kernel("block_diag_mm", "(Tensor x) -> Tensor"),)), "kernel names"),
])
def test_register_refuses_a_taken_name(row, message):
    with pytest.raises(ValueError, match=message):
        registry.register(Op(**row))
    assert "other" not in registry.OPS


@pytest.mark.parametrize("row, message", [
    (dict(name="bad name", kernels=(Kernel("k", "(Tensor x) -> Tensor"),)), "identifier"),
    (dict(name="no_kernels", kernels=()), "at least one"),
    (dict(name="gpu_only", kernels=(Kernel("k", "(Tensor x) -> Tensor"),), modules={"triton": "m"}), "reference"),
    (dict(name="odd", kernels=(Kernel("k", "(Tensor x) -> Tensor"),), modules={"reference": "m", "tpu": "m"}),
     "unknown backends"),
])
def test_an_op_row_is_checked_when_made(row, message):
    with pytest.raises(ValueError, match=message):
        Op(**row)


def test_register_takes_only_op_rows():
    with pytest.raises(TypeError, match="splitkern.registry.Op"):
        registry.register("block_diag_mm")
    with pytest.raises(ValueError, match="unknown op 'nope'"):
        registry.get("nope")


def _module_level_imports(path: Path, modules) -> set[str]:
    """The splitkern modules ``path`` imports at module level (not inside functions): ``from X import Y``
    counts as importing X.Y when that is a module, else X."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("splitkern")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("splitkern"):
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                      for a in node.names}
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_level_import_cycle_between_ops_backend_registry_and_extension():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in _module_level_imports(p, modules) if m in modules and m != name}
             for name, p in modules.items()}
    seams = {"splitkern.registry", "splitkern.backend", "splitkern.extension", "splitkern.ops",
             "splitkern.ops._dispatch", "splitkern.info"}

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in graph[start])

    assert graph["splitkern.registry"] == set()
    cycles = [m for m in seams if reaches(m, m)]
    assert cycles == []


@pytest.mark.parametrize("first", ["splitkern.registry", "splitkern.backend", "splitkern.extension",
                                   "splitkern.ops", "splitkern.info"])
def test_each_seam_imports_first_in_a_fresh_interpreter(first):
    code = f"import {first}; import splitkern; print(sorted(splitkern.registry.OPS))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "'block_diag_mm'" in out.stdout


def test_every_kernel_the_extension_registers_has_a_registry_schema():
    """_C registers implementations by name (gemm::Passes builds them): a name the registry does not define
    would be an implementation nothing can call."""
    ext, why = backend.extension()
    assert ext is not None, why
    dangling = [entry for entry in torch._C._dispatch_find_dangling_impls() if "splitkern" in entry]
    assert dangling == []


def test_the_old_package_and_module_names_still_import():
    """splitkern.cuda (now splitkern.extension, with a DeprecationWarning) and splitkern.kernels (now
    splitkern.analysis.kernels) stay importable, submodules and private names included, until 0.3."""
    import splitkern.analysis.kernels as report

    code = ("import splitkern.cuda.block_diag_mm as m; import splitkern.kernels as k; "
            "print(m.block_diag_mm_cublas.__name__, callable(k._variants))")
    out = subprocess.run([sys.executable, "-W", "always::DeprecationWarning", "-c", code], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "block_diag_mm_cublas True" in out.stdout, out.stderr
    assert "DeprecationWarning: splitkern.cuda is now splitkern.extension" in out.stderr
    import splitkern.kernels

    assert splitkern.kernels is report
