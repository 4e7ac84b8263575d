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
        from splitkern.extension.block_diag_mm import CUTLASS_RULE

        lines.append(f"  routing: {CUTLASS_RULE}")
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


def model_report(path, batch_sizes=(1, 32), device="cpu", image_size: int = 32) -> str:
    """The execution strategy (:mod:`splitkern.nn.strategy`) every split layer of the model saved at
    ``path`` takes, per batch size, planned on ``device`` in fp32 from a channels_last input: one line per
    layer (a layer whose input is 1x1 or flat sees a contiguous one)."""
    import splitkern
    from splitkern.nn.strategy import plan_strategies, split_layers

    model = splitkern.load(path).eval().to(device, memory_format=torch.channels_last)
    chosen = {}
    for batch in batch_sizes:
        example = torch.randn(batch, 3, image_size, image_size, device=device)
        chosen[batch] = plan_strategies(model, example.contiguous(memory_format=torch.channels_last))
    layers = split_layers(model)
    if not layers:
        return f"{path}: no split layers (SplitLinear/SplitConv2d)"
    sizes = {name: f"{list(layer.in_sizes)} -> {list(layer.out_sizes)}" for name, layer in layers.items()}
    width = max(len(name) for name in layers)
    size_width = max(len("groups (in -> out)"), *map(len, sizes.values()))
    lines = [f"{path}: strategy per split layer on {device}, fp32, channels_last, {image_size}x{image_size} "
             "(auto: the fastest measured now; this machine's choice)",
             f"{'layer':<{width}}  {'groups (in -> out)':<{size_width}}"
             + "".join(f"  {f'batch {b}':<13}" for b in batch_sizes)]
    for name in layers:
        picks = "".join(f"  {str(chosen[b].get(name)):<13}" for b in batch_sizes)
        lines.append(f"{name:<{width}}  {sizes[name]:<{size_width}}{picks}".rstrip())
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
