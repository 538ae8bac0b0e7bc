"""Run the whole benchmark suite and check it against the speed targets.

    python benchmarks/run_all.py [--threads 2] [--keep-openblas-env] [--tokenizer] [--targets-only]

Runs, each in its own process: bench_train_step.py, bench_inference.py,
bench_reference.py (against transformers.CLIPModel and open_clip's
ModifiedResNet), bench_scaling.py (against the twin and against CLIPModel),
bench_components.py and bench_fast_paths.py (``--tokenizer``
adds bench_tokenizer.py), then prints one table of the targeted numbers with
their targets (the median ratio decides; the ratio of the fastest calls is
printed beside it), and writes benchmarks/results/summary.json (the machine,
every number, the wall time of each benchmark and of the whole run).

Threads: both libraries get ``--threads`` (default 2). OpenBLAS tuning
variables (OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE), which some machines set
for older OpenBLAS builds and which slow a current NumPy, are removed for the
run by re-executing this script without them (recorded in the summary);
``--keep-openblas-env`` keeps them. Tests and CI never change them.
``--targets-only`` runs nothing: it prints the table of targets from the
results already in benchmarks/results/ (for a benchmark rerun on its own).
"""
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OPENBLAS_TUNING = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
REMOVED = "MINCLIP_BENCH_REMOVED_ENV"        # what the re-executed run was started without

SUITE = [("train_step", "bench_train_step.py", ["--reps", "3"]),
         ("inference", "bench_inference.py", ["--reps", "3"]),
         ("reference", "bench_reference.py", ["--reps", "3"]),
         ("scaling", "bench_scaling.py", ["--reps", "2"]),
         ("components", "bench_components.py", ["--reps", "5"]),
         ("fast_paths", "bench_fast_paths.py", ["--reps", "7"])]

# (what, results file, case, value, target): ratios minclip / reference, medians on the same machine.
# Against the libraries a user would pick (issue 15): CLIPModel and open_clip; the rest against the twin.
TARGETS = [("ViT step vs CLIPModel", "reference", "vit-256 step", "ratio", 1.1),
           ("ViT-B/32 image vs CLIPModel", "reference", "vit-b-32 image", "ratio", 1.0),
           ("ResNet tower step vs open_clip", "reference", "rn tower step", "ratio", 1.5),
           ("RN50 image vs open_clip", "reference", "rn50 image", "ratio", 1.2),
           ("training step, tiny-vit", "train_step", "tiny-vit", "ratio", 1.3),
           ("training step, tiny-rn", "train_step", "tiny-rn", "ratio", 1.3),
           ("training step, vit-256x6", "train_step", "vit-256x6", "ratio", None),
           ("inference, ViT-B/32 encode_image", "inference", "vit-b-32 image", "ratio", 1.2),
           ("inference, RN50 encode_image", "inference", "rn50 image", "ratio", 1.5),
           ("inference, encode_text", "inference", "text", "ratio", None),
           ("peak memory, ViT step vs CLIPModel", "reference", "vit-256 step", "memory", 1.2),
           ("peak memory, tower step vs open_clip", "reference", "rn tower step", "memory", 1.2),
           ("peak memory, tiny-vit step", "train_step", "tiny-vit", "memory", 1.2),
           ("peak memory, tiny-rn step", "train_step", "tiny-rn", "memory", 1.2),
           ("peak memory, vit-256x6 step", "train_step", "vit-256x6", "memory", 1.2)]


def without_openblas_tuning():
    """Re-execute this script without the OpenBLAS tuning variables, if any is set."""
    present = {k: os.environ[k] for k in OPENBLAS_TUNING if k in os.environ}
    if present and "--keep-openblas-env" not in sys.argv:
        env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_TUNING}
        env[REMOVED] = json.dumps(present)
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def run_benchmark(script, args, env):
    """Run one benchmark in its own process, its output passed through; returns its wall seconds."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, os.path.join(HERE, script), *args], env=env)
    if done.returncode != 0:
        raise SystemExit(f"{script} failed (exit {done.returncode}); stopping the suite")
    return time.perf_counter() - start


def target_rows(results_path):
    """One row per target: the measured value, the target, and whether it is met."""
    loaded = {}
    rows = []
    for what, name, case, kind, target in TARGETS:
        if name not in loaded:
            with open(results_path(name)) as f:
                loaded[name] = {r["case"]: r for r in json.load(f)["results"]}
        result = loaded[name].get(case)
        if result is None or (kind == "memory" and "memory" not in result):
            continue
        fastest = None
        if kind == "ratio":
            value, fastest = result["ratio"], result.get("fastest_ratio")
            detail = f"{result['minclip_ms']:.0f} ms vs {result['torch_ms']:.0f} ms"
        else:
            memory = result["memory"]
            value = memory["ratio"]
            detail = f"{memory['minclip']['rss_mib']:.0f} MiB vs {memory['torch']['rss_mib']:.0f} MiB"
        rows.append({"what": what, "value": value, "fastest": fastest, "target": target, "detail": detail,
                     "met": None if target is None else value <= target})
    return rows


def print_targets(rows, threads_text):
    print(f"\n=== targets (ratio minclip / reference: median, fastest calls; {threads_text})")
    for row in rows:
        verdict = "" if row["met"] is None else ("met" if row["met"] else "MISSED")
        target = "" if row["target"] is None else f"<= {row['target']}"
        fastest = "" if row["fastest"] is None else f"{row['fastest']:.2f}"
        print(f"{row['what']:<38}{row['value']:>7.2f}{fastest:>7}  {target:<8}{verdict:<8}{row['detail']}")


def main():
    without_openblas_tuning()
    threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "2"
    env = {**os.environ, "MINCLIP_BENCH_THREADS": threads}
    suite = SUITE + ([("tokenizer", "bench_tokenizer.py", [])] if "--tokenizer" in sys.argv else [])
    if "--targets-only" in sys.argv:
        suite = []
    start = time.perf_counter()
    walls = {}
    for name, script, args in suite:
        print(f"\n=== {script} {' '.join(args)}", flush=True)
        walls[name] = round(run_benchmark(script, args, env), 1)
    total = round(time.perf_counter() - start, 1)

    sys.path.insert(0, HERE)
    os.environ["MINCLIP_BENCH_THREADS"] = threads
    import common                                     # after the run, with the run's thread count
    rows = target_rows(common.results_path)
    print_targets(rows, common.threads_text())
    if not suite:
        return
    print(f"\nwhole suite: {total:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in walls.items())})")
    removed = json.loads(os.environ.get(REMOVED, "{}"))
    common.write_results("summary", {"wall_s": total, "benchmark_wall_s": walls, "targets": rows,
                                     "openblas_tuning_removed": removed})

if __name__ == "__main__":
    main()
