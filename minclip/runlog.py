"""What a training run leaves behind: metrics as JSON lines, and plots.

``LOGS/NAME/metrics.jsonl``: one JSON object per training step.
``LOGS/NAME/results.jsonl``: one JSON object per evaluation (per epoch).
``LOGS/NAME/plots/*.png``: loss, learning rate, logit scale and zero-shot
accuracy over the run, redrawn after every epoch.
"""
import json
import os


def append_jsonl(path, record):
    """Add one JSON object as a line (the file is created if needed)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def draw_plots(run_dir):
    """Redraw the run's plots from its metrics and results files.

    Figures are built with ``matplotlib.figure.Figure`` and saved directly, not
    through pyplot: that needs no GUI backend and leaves the caller's one alone
    (switching to "Agg" here would silence a notebook's inline plots).
    """
    from matplotlib.figure import Figure

    steps = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    results = read_jsonl(os.path.join(run_dir, "results.jsonl"))
    plots = os.path.join(run_dir, "plots")
    os.makedirs(plots, exist_ok=True)
    for key, label in (("loss", "training loss"), ("lr", "learning rate"), ("logit_scale", "logit scale (exp)")):
        if not steps:
            break
        fig = Figure(figsize=(5, 3.2), layout="tight")
        ax = fig.subplots()
        ax.plot([s["step"] for s in steps], [s[key] for s in steps])
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        fig.savefig(os.path.join(plots, f"{key}.png"), dpi=100)
    accuracy_keys = sorted({k for r in results for k in r if k.endswith("zeroshot-top1")})
    if results and accuracy_keys:
        fig = Figure(figsize=(5, 3.2), layout="tight")
        ax = fig.subplots()
        for key in accuracy_keys:
            points = [(r["epoch"], r[key]) for r in results if key in r]
            ax.plot(*zip(*points), marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("zero-shot top-1")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        fig.savefig(os.path.join(plots, "zeroshot_accuracy.png"), dpi=100)
