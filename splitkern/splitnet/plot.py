"""``splitkern plot DIR``: assignment heat maps and weights permuted into block-diagonal form."""

from __future__ import annotations

from pathlib import Path

import torch

from splitkern import models
from splitkern.splitnet import convert


def load_stage1(run_dir) -> torch.nn.Module:
    path = Path(run_dir) / "stage1.pt"
    if not path.exists():
        raise ValueError(f"{run_dir}: no stage1.pt (is this a 'splitkern train' output folder?)")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    config = blob["config"]
    classes = blob["state_dict"]["assignments.classes.logits"].shape[1]
    model = models.build(config["model"], classes, config["split"])
    model.load_state_dict(blob["state_dict"])
    return model


def plot(run_dir) -> list[Path]:
    """Write ``assignments.png`` and ``fc_block_diagonal.png`` into ``run_dir``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    model = load_stage1(run_dir)
    keys = list(model.assignments)
    fig, axes = plt.subplots(len(keys), 1, figsize=(10, 1.0 + 0.9 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        probs = model.assignments[key].probs().detach()
        order = torch.sort(probs.argmax(0), stable=True).indices
        ax.imshow(probs[:, order].numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_ylabel(key, rotation=0, ha="right", fontsize=7)
        ax.set_yticks([])
        ax.set_xticks([])
    fig.suptitle("group probabilities per feature (sorted by hard group)", fontsize=9)
    fig.tight_layout()
    first = run_dir / "assignments.png"
    fig.savefig(first, dpi=110)
    plt.close(fig)

    plan = model.split_plan
    last = next(name for name, role in plan.layers.items() if role.out_key == plan.output_key)
    role = plan.layers[last]
    orders = convert.channel_orders(model)
    weight = model.get_submodule(last).weight.detach().abs()[orders[role.out_key]][:, orders[role.in_key]]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.imshow(weight.numpy(), aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_xlabel("input features (grouped)")
    ax.set_ylabel("classes (grouped)")
    ax.set_title("|W| of the logits layer, rows and columns sorted by group", fontsize=9)
    fig.tight_layout()
    second = run_dir / "fc_block_diagonal.png"
    fig.savefig(second, dpi=110)
    plt.close(fig)
    return [first, second]
