"""What this install can run: ``python -m splitkern.info`` or ``splitkern info``."""

from __future__ import annotations

import torch

from splitkern import backend, registry


def report() -> str:
    lines = [f"torch {torch.__version__} (CUDA {torch.version.cuda}), "
             f"CUDA device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}"]
    try:
        import triton
        lines.append(f"triton {triton.__version__}"
                     + (" (interpreter: TRITON_INTERPRET=1)" if backend.triton_interpreted() else ""))
    except ImportError:
        lines.append("triton: not installed")
    ext, why = backend.extension()
    if ext is None:
        lines.append(f"extension splitkern._C: not built ({why})")
    else:
        cuda = (f"CUDA {ext.cuda_runtime_version()}, archs {ext.cuda_archs}" if ext.cuda_runtime_version()
                else "C++ only (built without nvcc)")
        lines.append(f"extension splitkern._C: {cuda}, {len(ext.kernels())} kernels:")
        lines += [f"  {name}: {what}" for name, what in ext.kernel_info()]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for op in registry.OPS:
        for device in devices:
            usable = backend.available_backends(device, op)
            try:
                chosen = backend.select(op, torch.device(device), torch.float32)
            except backend.BackendUnavailableError as exc:
                chosen = f"error: {exc}"
            lines.append(f"{op} on {device} (fp32): usable {usable}, chosen: {chosen}")
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
