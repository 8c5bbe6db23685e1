"""What a run leaves for people to look at: loss curves (PNG) and the code version."""

from __future__ import annotations

from pathlib import Path


def plot_curves(metrics: list[dict], path: Path, stages: dict[str, int] | None = None) -> None:
    """One panel per named loss and the total; `stages` (name -> first step) are marked."""
    if not metrics:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({k for m in metrics for k in m if k.endswith("_loss")})
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4 * (len(names) + 1), 3.2))
    steps = [m["step"] for m in metrics]
    for ax, name in zip(axes, [*names, "loss"], strict=True):
        ax.plot(steps, [m.get(name, float("nan")) for m in metrics])
        for i, (label, at) in enumerate((stages or {}).items()):
            ax.axvline(at, color="grey", linestyle="--", linewidth=0.8)
            ax.text(at, 0.97 - 0.09 * i, f" {label}", transform=ax.get_xaxis_transform(), fontsize=7,
                    va="top")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def code_version() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                              text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
