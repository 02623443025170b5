"""Writing a benchmark run's results: results.json, results.md and PNG plots.

Over 400 lines: one function per table or plot of the report, each reading results.json's
figures only, so that a table is changed in one place."""

import json
import statistics
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def write_report(results, out: Path) -> None:
    data = asdict(results)
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "results.md").write_text(markdown(data))
    plot_throughput(data, out / "throughput.png")
    plot_latency(data, out / "latency.png")
    plot_stages(data, out / "stages.png")
    if (out / "profiles").is_dir():
        (out / "profiles" / "summary.md").write_text(summarize_profiles(out / "profiles"))


def summarize_profiles(folder: Path, top: int = 15) -> str:
    """The functions each sampled process spent most of its active time in (inclusive),
    from py-spy's folded stacks, as Markdown."""
    lines = ["# Where the CPU time goes at saturation (py-spy, active samples)", ""]
    for path in sorted(folder.glob("*.txt")):
        inclusive: dict[str, int] = {}
        total = 0
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            total += int(count)
            # py-spy names a frame "function (file:line)"; the line number is dropped so
            # that all calls of a function add up.
            for frame in {frame.rsplit(":", 1)[0] for frame in stack.split(";")}:
                inclusive[frame] = inclusive.get(frame, 0) + int(count)
        lines += [f"## {path.stem} ({total} samples)", "", "| share | function |", "| --- | --- |"]
        ranked = sorted(inclusive.items(), key=lambda item: -item[1])
        # Frames in nearly every sample (the process's main loop) say nothing.
        ranked = [(frame, n) for frame, n in ranked if n < 0.9 * total][:top]
        lines += [f"| {n / total:.0%} | `{frame[:140]}` |" for frame, n in ranked]
        lines.append("")
    return "\n".join(lines)


# The runs that the throughput targets apply to: the pipeline and the plumbing, each with
# one image per upload request (as the seed's clients sent them) and with several.
PIPELINE_RUNS = ("pipeline", "pipeline-multi")
PLUMBING_RUNS = ("plumbing", "plumbing-multi", "plumbing-small")
# Jobs/s the instant model's pipeline must reach (8 images per upload): with the photo mix,
# and with 0.3 MP images.
PLUMBING_TARGETS = {"plumbing-multi": 150, "plumbing-small": 300}
# Core-ms per job outside the model and decoding, with one image per upload and with 8.
PLUMBING_CPU_MS_ONE = 6
PLUMBING_CPU_MS_MANY = 3


def targets(data: dict) -> list[tuple[str, str, str, bool | None]]:
    """(target, measured, required, met) for each target that this run has figures for."""
    ceiling = data["ceiling"]
    runs = data["runs"]
    rows = []
    pipeline = runs.get("pipeline")
    if pipeline and ceiling:
        p50 = pipeline["latency_ms"]["p50"]
        rows.append(
            (
                "light-load p50 ≤ single-image predict + 100 ms",
                f"{p50:.0f} ms",
                f"≤ {ceiling['single_predict_ms'] + 100:.0f} ms",
                p50 <= ceiling["single_predict_ms"] + 100,
            )
        )
    if pipeline:
        p50, p99 = pipeline["latency_ms"]["p50"], pipeline["latency_ms"]["p99"]
        rows.append(
            ("light-load p99 ≤ 2 × p50", f"{p99:.0f} ms", f"≤ {2 * p50:.0f} ms", p99 <= 2 * p50)
        )
    for name in PIPELINE_RUNS:
        run = runs.get(name)
        if not run:
            continue
        label = run["title"].split(" (")[0]
        if ceiling:
            rows.append(
                (
                    f"{label} ≥ 0.90 × ceiling",
                    f"{run['throughput_per_s']:.1f} images/s "
                    f"= {run['throughput_per_s'] / ceiling['images_per_s']:.2f} ×",
                    f"≥ {0.9 * ceiling['images_per_s']:.1f} images/s",
                    run["throughput_per_s"] >= 0.9 * ceiling["images_per_s"],
                )
            )
        for other, factor, other_label in (("seed", 1.2, "seed-style baseline"),):
            target = f"{label} ≥ {factor:g} × {other_label}"
            if other in runs:
                ratio = run["throughput_per_s"] / runs[other]["throughput_per_s"]
                rows.append((target, f"{ratio:.2f} ×", f"≥ {factor:g} ×", ratio >= factor))
            elif other in data["skipped"]:
                rows.append((target, "not measured", f"≥ {factor:g} ×", None))
    rows += runtime_targets(data)
    for name, jobs_per_s in PLUMBING_TARGETS.items():
        if name in runs:
            jobs = runs[name]["throughput_per_s"]
            label = runs[name]["title"].split(" (")[0]
            rows.append(
                (
                    f"{label} ≥ {jobs_per_s} jobs/s",
                    f"{jobs:.0f} jobs/s",
                    f"≥ {jobs_per_s} jobs/s",
                    jobs >= jobs_per_s,
                )
            )
    for name in (*PIPELINE_RUNS, *PLUMBING_RUNS):
        if run := runs.get(name):
            limit = PLUMBING_CPU_MS_MANY if run["images_per_request"] > 1 else PLUMBING_CPU_MS_ONE
            plumbing = plumbing_cpu_ms(run)
            rows.append(
                (
                    f"{run['title']}: CPU per job outside the model and decoding",
                    f"{plumbing:.1f} core-ms",
                    f"≤ {limit} core-ms",
                    plumbing <= limit,
                )
            )
    return rows


# Each peer's row, and the pipeline row with the same images per request.
PEER_COMPARISONS = {
    "ray-package": ("pipeline-package", 1),
    "ray-package-batch": ("pipeline-multi-package", 8),
    "bentoml-package": ("pipeline-package", 1),
    "bentoml-package-batch": ("pipeline-multi-package", 8),
    "mlserver-package": ("pipeline-package", 1),
    "mlserver-package-batch": ("pipeline-multi-package", 8),
}


def peer_label(data: dict, part: str) -> str:
    """The peer's name as its row's title gives it, or its part's name when it did not run."""
    run = data["runs"].get(part)
    return run["title"].split(" peer (")[0] if run else part


def runtime_targets(data: dict) -> list[tuple[str, str, str, bool | None]]:
    runtimes, runs = data.get("runtimes") or {}, data["runs"]
    rows = []
    for name, factor in (("openvino int8", 4.5), ("openvino bf16", 2.5)):
        if name in runtimes:
            ratio = runtimes[name]["x_tensorflow_fp32"]
            target = f"{name} ceiling ≥ {factor:g} × tensorflow fp32"
            rows.append((target, f"{ratio:.2f} ×", f"≥ {factor:g} ×", ratio >= factor))
        elif runtimes:
            rows.append(
                (f"{name} ceiling ≥ {factor:g} × tensorflow fp32", "not measured", "", None)
            )
    if "openvino int8" in runtimes:
        rss = runtimes["openvino int8"]["rss_mib"]
        rows.append(("openvino int8 worker RSS ≤ 400 MiB", f"{rss:.0f} MiB", "≤ 400", rss <= 400))
    ceilings = data.get("ceilings") or {}
    if ceilings and "pipeline-multi-package" in runs:
        best = ceilings["tried"][ceilings["best"]]["cpu_ms_per_image"]
        worker = runs["pipeline-multi-package"]["cpu_ms_per_job"]["worker"]
        rows.append(
            (
                "8 per upload, make run's package: workers' core-ms per image within 10 % "
                f"of the best ceiling's ({ceilings['best']})",
                f"{worker:.1f} core-ms = {worker / best:.2f} ×",
                f"≤ {1.1 * best:.1f} core-ms",
                worker <= 1.1 * best,
            )
        )
    # The peers serve the same package: each compared with the pipeline row that gets the
    # same images per request (bench.peer_runs.PEER_PARTS).
    for peer, (pipeline, per_request) in PEER_COMPARISONS.items():
        label = peer_label(data, peer)
        target = f"make run's package, {per_request} per request: pipeline ≥ 1.5 × {label}"
        if peer in runs and pipeline in runs:
            ratio = runs[pipeline]["throughput_per_s"] / runs[peer]["throughput_per_s"]
            rows.append((target, f"{ratio:.2f} ×", "≥ 1.5 ×", ratio >= 1.5))
        elif peer in data["skipped"]:
            rows.append((target, "not measured", "≥ 1.5 ×", None))
    untraced = [
        runs[part]["throughput_per_s"]
        for part in ("pipeline-multi-package", "pipeline-multi-package-again")
        if part in runs
    ]
    for part, what in (
        ("pipeline-multi-package-traced", "every span exported"),
        ("pipeline-multi-package-sampled", "10 % of jobs"),
    ):
        if untraced and part in runs:
            traced = runs[part]
            ratio = traced["throughput_per_s"] / statistics.mean(untraced)
            # The untraced row measured twice, before and after: their spread is the noise.
            noise = (max(untraced) - min(untraced)) / statistics.mean(untraced)
            rows.append(
                (
                    f"tracing on ({what}) costs nothing measurable: throughput ≥ 0.95 × off "
                    "(the mean of the untraced rows before and after), same run",
                    f"{ratio:.2f} × ({traced.get('spans_received', 0)} spans received; "
                    f"untraced rows differ by {noise:.0%})",
                    "≥ 0.95 ×",
                    ratio >= 0.95,
                )
            )
    if "pipeline-multi-package" in runs and "pipeline-multi" in runs:
        ratio = (
            runs["pipeline-multi-package"]["throughput_per_s"]
            / runs["pipeline-multi"]["throughput_per_s"]
        )
        rows.append(
            (
                "8 per upload: make run's package ≥ 2 × tensorflow fp32",
                f"{ratio:.2f} ×",
                "≥ 2 ×",
                ratio >= 2,
            )
        )
    return rows


def ceiling_lines(data: dict) -> list[str]:
    ceilings = data.get("ceilings") or {}
    if not ceilings:
        return []
    lines = [
        "",
        "make run's package: its ceiling in each way of running it (best in bold):",
        "",
        "| way | images/s | core-ms per image | batch ms p50 | OpenVINO ran | RSS MiB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, figures in ceilings["tried"].items():
        shown = f"**{name}**" if name == ceilings["best"] else name
        lines.append(
            f"| {shown} | {figures['images_per_s']:.1f} | {figures['cpu_ms_per_image']:.1f} | "
            f"{figures['batch_ms_p50']:.0f} | {figures['execution']} | {figures['rss_mib']:.0f} |"
        )
    return lines


def runtime_lines(data: dict) -> list[str]:
    runtimes, packages = data.get("runtimes") or {}, data.get("packages") or {}
    if not runtimes:
        return []
    lines = [
        "",
        f"Runtimes (ResNet50, random weights; make run would serve openvino "
        f"{packages.get('make_run', '?')}):",
        "",
        "| runtime | batch 1 images/s | batch 1 ms | batch N images/s (N processes) "
        "| × tensorflow fp32 | RSS MiB | start s | top-1 agreement | top-5 overlap "
        "| max prob diff |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in runtimes.items():
        # An ONNX package's figures are against ONNX Runtime fp32, Keras' against TensorFlow.
        figures = r.get("faithfulness") or (
            packages.get(name.split()[-1], {}).get("faithfulness")
            if name.startswith("openvino")
            else None
        )
        gate = (
            f"{figures['top1_agreement']:.1%} | {figures['top5_overlap']:.1%} | "
            f"{figures['max_probability_difference']:.4f}"
            if figures
            else "reference | | "
        )
        lines.append(
            f"| {name} | {r['batch_1_images_per_s']:.1f} | {r['batch_1_ms']:.0f} | "
            f"{r['images_per_s']:.1f} (batch {r['batch_size']}, {r['processes']}) | "
            f"{r['x_tensorflow_fp32']:.2f} | {r['rss_mib']:.0f} | {r['start_s']:.1f} | {gate} |"
        )
    for precision, package in packages.items():
        if isinstance(package, dict) and "skipped" in package:
            lines.append(f"| openvino {precision}: SKIPPED, {package['skipped']} |" + " |" * 9)
    return lines


def decoding_lines(data: dict) -> list[str]:
    decoding = data.get("decoding") or {}
    if not decoding:
        return []
    groups = decoding["groups"]
    lines = [
        "",
        f"Decoding: CPU ms per image to the {decoding['size']}x{decoding['size']} model input; "
        "in brackets the largest / mean absolute pixel difference from the full decode:",
        "",
        "| path | " + " | ".join(groups) + " |",
        "| --- |" + " --- |" * len(groups),
    ]
    for path in next(iter(groups.values())):
        cells = []
        for figures in groups.values():
            f = figures[path]
            cells.append(
                f"skipped: {f['skipped']}"
                if "skipped" in f
                else f"{f['cpu_ms']:.2f} ({f['max_abs_difference']} / "
                f"{f['mean_abs_difference']:.2f})"
            )
        lines.append(f"| {path} | " + " | ".join(cells) + " |")
    return lines


def markdown(data: dict) -> str:
    machine = data["machine"]
    lines = [
        f"# Benchmark {data['started_at']}",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores "
        f"(flags {', '.join(machine.get('cpu_flags') or ['-'])}), Python {machine['python']}; "
        f"load average before {machine['load_before']}, after {machine.get('load_after')}.",
        "",
        "Options: " + ", ".join(f"{k}={v}" for k, v in data["options"].items() if k != "out_dir"),
        "",
        "| configuration | throughput | average batch | latency p50 | p90 | p99 | failed "
        "| load (1 min) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    ceiling = data["ceiling"]
    if ceiling:
        lines.append(
            f"| ceiling: predict alone, batch 1, 1 process | "
            f"{ceiling['single_images_per_s']:.1f} images/s | 1 | "
            f"{ceiling['single_predict_ms']:.0f} ms (predict) | | | | {ceiling['load'][0]} |"
        )
        lines.append(
            f"| ceiling: predict alone, batch {ceiling['batch_size']}, "
            f"{ceiling['processes']} process(es), threads {ceiling['threads'] or 'default'} | "
            f"{ceiling['images_per_s']:.1f} images/s | {ceiling['batch_size']} | "
            f"{ceiling['batch_ms_p50']:.0f} ms (predict) | | | | {ceiling['load'][0]} |"
        )
    for run in data["runs"].values():
        latency = run.get("latency_ms") or {}
        average_batch = f"{run['average_batch']:.1f}" if "average_batch" in run else ""
        lines.append(
            f"| {run['title']} | {run['throughput_per_s']:.1f} {run['unit']}/s | {average_batch} | "
            + " | ".join(
                f"{latency[p]:.0f} ms" if p in latency else "" for p in ("p50", "p90", "p99")
            )
            + f" | {run['failed']} | {run['load_before'][0]} → {run['load_after'][0]} |"
        )
    for name, reason in data["skipped"].items():
        lines.append(f"| {name}: SKIPPED, {reason} | | | | | | | |")
    lines += runtime_lines(data)
    lines += ceiling_lines(data)
    lines += decoding_lines(data)
    lines += ["", "| target | measured | required | met |", "| --- | --- | --- | --- |"]
    for target, measured, required, met in targets(data):
        verdict = "not measured" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {target} | {measured} | {required} | {verdict} |")
    lines += cpu_lines(data)
    stage_runs = {name: run for name, run in data["runs"].items() if run.get("stages_ms")}
    if stage_runs:
        names = list(next(iter(stage_runs.values()))["stages_ms"])
        lines += [
            "",
            "Median time per stage at light load (ms, from the jobs' timestamps):",
            "",
            "| configuration | " + " | ".join(names) + " |",
            "| --- |" + " --- |" * len(names),
        ]
        for run in stage_runs.values():
            lines.append(
                f"| {run['title']} | "
                + " | ".join(f"{run['stages_ms'][n]:.1f}" for n in names)
                + " |"
            )
    return "\n".join(lines) + "\n"


# Processes whose CPU is the pipeline's own cost per job: everything but the model's
# workers and the benchmark's uploading clients.
PLUMBING_PROCESSES = ("web", "celery", "bridge", "mariadb", "redis", "kafka", "other")


def plumbing_cpu_ms(run: dict) -> float:
    """A run's CPU per job outside the model and outside decoding (core-ms)."""
    cpu = run["cpu_ms_per_job"]
    return sum(cpu.get(name, 0.0) for name in PLUMBING_PROCESSES) - run["decode_ms_per_job"]


def cpu_lines(data: dict) -> list[str]:
    """The per-stage CPU table: every pipeline row, decoding apart from the rest of Celery."""
    runs = [run for run in data["runs"].values() if run.get("cpu_ms_per_job")]
    if not runs:
        return []
    lines = [
        "",
        "CPU time per job at saturation, by process (core-ms). Celery's decoding is shown "
        "apart from the rest of Celery (the run's images decoded by the benchmark as the "
        "preprocessing does, on its CPU clock, weighted as uploaded); MariaDB, Redis and "
        "Kafka are the stack's servers; \"other\" is the rest of the machine (the kernel's "
        'own work); "plumbing" is all of these but decoding. Not in it: the model\'s '
        "workers, the benchmark's uploading clients, and the broker's JIT compiler threads "
        "(a young JVM compiling its hot code, once):",
        "",
        "| configuration | web | celery (without decoding) | decoding | bridge | MariaDB "
        "| Redis | Kafka | other | plumbing | worker | clients | Kafka's JIT | cores busy |",
        "| --- |" + " --- |" * 13,
    ]
    for run in runs:
        cpu = run["cpu_ms_per_job"]
        decode = run["decode_ms_per_job"]
        figures = [cpu["web"], cpu["celery"] - decode, decode, cpu["bridge"]]
        figures += [cpu.get(name, 0.0) for name in ("mariadb", "redis", "kafka")]
        figures += [cpu["other"], plumbing_cpu_ms(run), cpu["worker"], cpu.get("clients", 0.0)]
        figures.append(cpu.get("kafka JIT", 0.0))
        lines.append(
            f"| {run['title']} | "
            + " | ".join(f"{figure:.1f}" for figure in figures)
            + f" | {run['machine_busy']:.0%} |"
        )
    return lines


def plot_throughput(data: dict, path: Path) -> None:
    labels, values, colours = [], [], []
    ceiling = data["ceiling"]
    if ceiling:
        labels += ["ceiling\nbatch 1", f"ceiling\nbatch {ceiling['batch_size']}"]
        values += [ceiling["single_images_per_s"], ceiling["images_per_s"]]
        colours += ["grey", "grey"]
    for name, run in data["runs"].items():
        if name in PLUMBING_RUNS:
            continue  # jobs/s of an instant model: a different scale, in the table
        labels.append(run["title"].split(" (")[0].replace(" ", "\n", 1))
        values.append(run["throughput_per_s"])
        colours.append("tab:blue" if name in PIPELINE_RUNS else "tab:orange")
    figure, axes = plt.subplots(figsize=(9, 3.5))
    bars = axes.bar(labels, values, color=colours)
    axes.bar_label(bars, fmt="%.1f")
    axes.margins(y=0.12)  # room for the tallest bar's label under the title
    axes.set_ylabel("images/s")
    axes.set_title("Throughput at saturation (plumbing ceiling: see the table)")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def plot_latency(data: dict, path: Path) -> None:
    runs = {name: run for name, run in data["runs"].items() if run.get("latencies_ms")}
    figure, axes = plt.subplots(figsize=(7, 3.5))
    if runs:
        axes.boxplot(
            [run["latencies_ms"] for run in runs.values()],
            tick_labels=[
                run["title"].split(" (")[0].replace(" ", "\n", 1) for run in runs.values()
            ],
            whis=(1, 99),
        )
    axes.set_ylabel("ms, upload accepted → result stored")
    axes.set_title("Latency at light load (one image at a time; whiskers p1–p99)")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def plot_stages(data: dict, path: Path) -> None:
    runs = {name: run for name, run in data["runs"].items() if run.get("stages_ms")}
    figure, axes = plt.subplots(figsize=(7, 3.5))
    stages = ("queued", "to Kafka", "inference", "storing")
    titles = [run["title"].split(" (")[0].replace(" ", "\n", 1) for run in runs.values()]
    bottom = [0.0] * len(runs)
    for stage in stages:
        values = [run["stages_ms"][stage] for run in runs.values()]
        axes.bar(titles, values, bottom=bottom, label=stage)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes.set_ylabel("ms (median)")
    axes.set_title("Time per stage at light load")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
