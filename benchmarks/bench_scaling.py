"""How the training-step cost grows with batch, width and image size, minclip against PyTorch.

    python benchmarks/bench_scaling.py [--reps 2] [--against twin|clipmodel]

Two sets of sweeps (``--against`` picks one; both by default):

* ``twin``: the "tiny-vit" training step against OpenAI's model in PyTorch
  (bench_train_step.py), first at batch 16, 32, ..., 256 with the preset's
  width 128, then at batch 128 with both towers 32, 64, 128 and 256 wide.
* ``clipmodel``: the ViT step of bench_reference.py ("vit-256 step": both towers
  256 wide and 4 deep, 32 px in 4 px patches, text context 32) against
  ``transformers.CLIPModel``: batch 16 … 128 at width 256; width 64 … 256 at
  batch 64; images of 16, 32 and 48 px (16, 64 and 144 patches) at batch 64.

Doubling the batch doubles the work; doubling the width about quadruples it
(the matrix products grow as width²); the image size grows the vision
tower's sequence, and its attention as the square of that. A fixed per-op
overhead shows up as a ratio that falls as the step grows.

Results: benchmarks/results/scaling.json and scaling.png (against the twin),
scaling_clipmodel.json and scaling_clipmodel.png (against CLIPModel): time per
step, log-log, with the ratio on a second axis.
"""
import os
import sys

import common  # first: it fixes the thread counts before NumPy loads
import bench_reference
import bench_train_step
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# name -> (title, run(reps, **point), [(axis, values, what each point sets, label of the x axis)])
SWEEPS = {
    "twin": ("tiny-vit training step vs OpenAI's model in PyTorch",
             lambda reps, **point: bench_train_step.run("tiny-vit", reps, memory=False, **point),
             [("batch", (16, 32, 64, 128, 256), lambda b: dict(batch=b), "batch size (width 128)"),
              ("width", (32, 64, 128, 256), lambda w: dict(vision_width=w, transformer_width=w),
               "width of both towers (batch 128)")]),
    "clipmodel": ("ViT training step (4 layers, patch 4, context 32) vs transformers.CLIPModel",
                  lambda reps, **point: bench_reference.run("vit-256 step", reps, memory=False, **point),
                  [("batch", (16, 32, 64, 128), lambda b: dict(batch=b), "batch size (width 256, 32 px)"),
                   ("width", (64, 128, 256), lambda w: dict(batch=64, vision_width=w, transformer_width=w),
                    "width of both towers (batch 64, 32 px)"),
                   ("image size", (16, 32, 48), lambda r: dict(batch=64, image_resolution=r),
                    "image size in px, patch 4 (batch 64, width 256)")]),
}


def sweep(name, reps):
    """{axis: [point result, ...]} of one set of sweeps, printing each point as it comes."""
    _, run, axes = SWEEPS[name]
    points = {}
    print(common.table_header(width=44) + f"{'fastest':>9}")
    for axis, values, setting, _ in axes:
        points[axis] = []
        for value in values:
            result = run(reps, **setting(value))
            points[axis].append({axis: value, **_summary(result)})
            print(common.format_row(f"{name}, {axis} {value}", result, width=44) + f"{result['fastest_ratio']:>9.2f}",
                  flush=True)
    return points


def _summary(result):
    keys = ("batch", "parameters", "config", "minclip_ms", "torch_ms", "ratio", "fastest_ratio", "minclip_all_ms", "torch_all_ms",
            "check")
    return {k: result[k] for k in keys if k in result}


def draw(name, points, path):
    """One panel per axis, time per step (log-log) against it, the ratio on a second axis."""
    title, _, axes = SWEEPS[name]
    fig, panels = plt.subplots(1, len(axes), figsize=(5.5 * len(axes), 4.2))
    for ax, (axis, _, _, label) in zip(panels, axes):
        xs = [p[axis] for p in points[axis]]
        for library, style in (("minclip", "o-"), ("torch", "s--")):
            ax.plot(xs, [p[f"{library}_ms"] for p in points[axis]], style,
                    label=library if library == "minclip" else ("CLIPModel" if name == "clipmodel" else "PyTorch"))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel(label)
        ax.set_ylabel("ms per training step")
        ratio_axis = ax.twinx()
        ratio_axis.plot(xs, [p["ratio"] for p in points[axis]], "^:", color="gray", label="ratio (median)")
        ratio_axis.set_ylabel("minclip / reference")
        ratio_axis.set_ylim(0, max(2.0, 1.1 * max(p["ratio"] for p in points[axis])))
        lines = ax.get_lines() + ratio_axis.get_lines()
        ax.legend(lines, [line.get_label() for line in lines], loc="upper left")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"{title} on the CPU, {common.threads_text()}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    reps = common.parse_reps(2)
    names = [sys.argv[sys.argv.index("--against") + 1]] if "--against" in sys.argv else list(SWEEPS)
    for name in names:
        print(f"training-step scaling against {name}, float32, median of {reps}; {common.threads_text()}")
        points = sweep(name, reps)
        file = "scaling" if name == "twin" else f"scaling_{name}"
        common.write_results(file, {"reps": reps, "against": name, **points})
        path = common.results_path(file, "png")
        draw(name, points, path)
        print(f"drawn to {os.path.relpath(path, common.ROOT)}")


if __name__ == "__main__":
    main()
