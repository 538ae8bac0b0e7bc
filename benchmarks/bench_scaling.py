"""How the training-step cost grows: batch size and width doubling, minclip against PyTorch.

    python benchmarks/bench_scaling.py [--reps 2]

The "tiny-vit" training step (as bench_train_step.py: forward, CLIP loss,
backward, clipping, AdamW), first at batch 16, 32, ..., 256 with the preset's
width 128, then at batch 128 with both towers 32, 64, 128 and 256 wide (4
layers, 4 heads, as the preset). Doubling the batch doubles the work; doubling
the width about quadruples it (the matrix products grow as width²), so a
fixed per-op overhead shows up as a ratio that falls as the step grows.

Results: benchmarks/results/scaling.json and the picture scaling.png
(time per step against batch and against width, log-log, with the ratio).
"""
import os

import common  # first: it fixes the thread counts before NumPy loads
import matplotlib
from bench_train_step import run

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BATCHES = (16, 32, 64, 128, 256)
WIDTHS = (32, 64, 128, 256)


def sweeps(reps):
    """{"batch": [result, ...], "width": [result, ...]}, printing each point as it comes."""
    points = {"batch": [], "width": []}
    print(common.table_header())
    for batch in BATCHES:
        result = run("tiny-vit", reps, batch=batch, memory=False)
        points["batch"].append({"batch": batch, **_summary(result)})
        print(common.format_row(f"tiny-vit, batch {batch}", result), flush=True)
    for width in WIDTHS:
        result = run("tiny-vit", reps, memory=False, vision_width=width, transformer_width=width)
        points["width"].append({"width": width, **_summary(result)})
        print(common.format_row(f"tiny-vit, width {width}, batch 128", result), flush=True)
    return points


def _summary(result):
    keys = ("parameters", "minclip_ms", "torch_ms", "ratio", "minclip_all_ms", "torch_all_ms", "check")
    return {k: result[k] for k in keys}


def draw(points, path):
    """Two panels, time per step (log-log) against batch and against width, the ratio on a second axis."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, axis_name in zip(axes, ("batch", "width")):
        xs = [p[axis_name] for p in points[axis_name]]
        for library, style in (("minclip", "o-"), ("torch", "s--")):
            ax.plot(xs, [p[f"{library}_ms"] for p in points[axis_name]], style, label=library)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("batch size (width 128)" if axis_name == "batch" else "width of both towers (batch 128)")
        ax.set_ylabel("ms per training step")
        ratio_axis = ax.twinx()
        ratio_axis.plot(xs, [p["ratio"] for p in points[axis_name]], "^:", color="gray", label="ratio")
        ratio_axis.set_ylabel("minclip / PyTorch")
        ratio_axis.set_ylim(0, max(2.0, 1.1 * max(p["ratio"] for p in points[axis_name])))
        lines = ax.get_lines() + ratio_axis.get_lines()
        ax.legend(lines, [line.get_label() for line in lines], loc="upper left")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"tiny-vit training step on the CPU, {common.threads_text()}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    reps = common.parse_reps(2)
    print(f"training-step scaling, float32, median of {reps}; {common.threads_text()}")
    points = sweeps(reps)
    common.write_results("scaling", {"reps": reps, **points})
    path = common.results_path("scaling", "png")
    draw(points, path)
    print(f"drawn to {os.path.relpath(path, common.ROOT)}")


if __name__ == "__main__":
    main()
