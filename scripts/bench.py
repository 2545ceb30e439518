#!/usr/bin/env python
"""Benchmarks, measured side by side in one run: `make bench` or `python scripts/bench.py`.

Writes ``<out>/results.json`` and ``<out>/results.md`` and prints the table.

- training throughput (images/s, peak memory) of a preset's training step on synthetic batches
  (forward, backward and optimizer step; no data loading), fp32 and, on a GPU, bf16 autocast;
- sampling: T-step Euler and RK4 in latent space against one step through the collapsed
  matrix B, the time to build B (factored and, for small latents, dense), and how closely the
  one-step images agree with the T-step ones (relative error);
- counts per training step: FLOPs (``torch.utils.flop_counter``: matmuls and convolutions, forward and
  backward), the achieved FLOP/s and its fraction of a stated peak (``--peak-tflops``; the CPU default is
  indicative only), and the ops the profiler sees (aten ops that call no other aten op, plus the fused
  kernels of a compiled graph; on a GPU also the CUDA kernels launched);
- ``--levers``: variants of the training step (compiled as one graph, foreach and fused AdamW,
  channels-last), each with its predicted effect, timed round-robin in one process against the eager
  baseline and reported as ratios;
- every figure is the median of ``--repeats`` timed runs after ``--warmup`` untimed ones,
  synchronised on the device.

Presets: ``--presets mnist_one_step`` (default: the CPU-sized model) and the paper-sized
``mnist_one_step_paper`` / ``celeba_one_step`` (meant for a GPU). ``--tiny`` shrinks every
model to seconds (used by the test). Models are randomly initialised unless ``--ckpt`` is given:
speed does not depend on the weights, agreement hardly does (both paths are exact).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch._inductor.config
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict
from torch.utils.flop_counter import FlopCounterMode

from lit_linearizer.config import CONFIG_DIR
from lit_linearizer.modules.compiled_step import CompiledStep
from lit_linearizer.sampling import collapse, integrate

REPO_ROOT = Path(__file__).resolve().parent.parent

TINY = [
    "model.network.num_steps=1",
    "model.network.hidden_channels=8",
    "model.operator.hidden=16",
    "model.operator.basis_size=16",
    "model.operator.rank=4",
    "data.batch_size=8",
]


# Dense peak TFLOP/s from the vendors' data sheets (no sparsity), by device name and precision. fp32 is the
# non-tensor-core rate (PyTorch's default: TF32 is off for matmuls; cuDNN may use it for convolutions).
PEAK_TFLOPS = {
    ("H200", "32-true"): 67.0,
    ("H200", "bf16-mixed"): 989.0,
    ("H100", "32-true"): 67.0,
    ("H100", "bf16-mixed"): 989.0,
    ("A100", "32-true"): 19.5,
    ("A100", "bf16-mixed"): 312.0,
}
# CPU: an indicative figure, not a measured one: two 256-bit FMA pipes (32 fp32 FLOP per cycle) at 2.5 GHz
# per thread. The VM does not report its clock; pass --peak-tflops for a real machine.
CPU_PEAK_TFLOPS_PER_THREAD = 32 * 2.5e9 / 1e12

# What each lever is expected to do to (step time, ops per step) against the eager baseline, written down
# before measuring; the measured ratios are reported beside them. Speed-up = baseline time / variant time.
LEVERS = {
    "eager": "baseline: eager step, PyTorch's default AdamW (a per-parameter loop on CPU, foreach on CUDA)",
    "foreach_adamw": "AdamW(foreach=True): ~11 optimizer ops per parameter become ~11 per step; "
    "predicted ops/step x0.6, speed-up 1.05x on CPU (the optimizer is a small share of the time)",
    "fused_adamw": "AdamW(fused=True): one kernel per parameter; predicted ops/step x0.5, speed-up 1.05x",
    "channels_last": "model and batch channels-last; predicted 0.9x on CPU (the flows' squeeze/reshape "
    "and flatten force copies), ops/step up",
    "compiled": "torch.compile(model_step, fullgraph=True), inductor: elementwise ops fused; predicted "
    "ops/step x0.3, speed-up 1.3x on CPU",
    "compiled_fused_adamw": "compiled step + fused AdamW: predicted ops/step x0.15, speed-up 1.35x",
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def cpu_name() -> str:
    """The CPU model (``platform.processor()`` is empty on most Linux machines)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def build(preset: str, tiny: bool, device: torch.device, ckpt: str | None):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={preset}", *(TINY if tiny else [])], return_hydra_config=False)
    with open_dict(cfg):
        cfg.paths.root_dir = str(REPO_ROOT)  # the hydra: resolvers have no runtime here
        cfg.paths.output_dir = str(REPO_ROOT / "bench")
    if ckpt:
        from lit_linearizer.checkpoints import load_module

        model = load_module(ckpt)
    else:
        model = instantiate(cfg.model, _recursive_=False)
    return cfg, model.to(device)


def synthetic_batch(model, device, batch_size: int, channels_last: bool = False) -> dict:
    images = torch.rand(batch_size, *tuple(model.image_shape), device=device) * 2 - 1
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return {"image": images, "index": torch.arange(batch_size, device=device)}


def make_step(model, batch, device, precision: str, compiled: bool = False, mode: str | None = None,
              optimizer: str = "default", notices: list | None = None):
    """One training step as a closure: forward (compiled as ``model.compile=true`` does), backward, AdamW."""
    model.train()
    if model.noise.generator is None:
        model.noise.start(device, 0)  # as fit does: training noise from the module's generator
    kwargs = {"foreach": False} if optimizer == "loop" else {"foreach": True} if optimizer == "foreach" else \
        {"fused": True} if optimizer == "fused" else {}
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4, **kwargs)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    notice = notices.append if notices is not None else None
    model_step = CompiledStep(model, mode=mode, notice=notice) if compiled else model.model_step

    def step():
        with autocast:
            loss = model_step(batch)["loss"]
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    step.compiled = model_step if compiled else None
    return step


def count_flops(step) -> int:
    """FLOPs of one call of ``step`` (run eagerly: the counter sees aten calls; compiling changes no math)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def count_ops(step, device) -> dict:
    """What the profiler sees in one call of ``step``: aten ops that call no other aten op (each a kernel or
    a view), the fused kernels of compiled graphs (inductor's C++/Triton kernels), and on a GPU the kernels."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        step()
        synchronize(device)
    events = prof.events()
    aten = sum(
        1 for e in events
        if e.name.startswith("aten::") and not any(c.name.startswith("aten::") for c in e.cpu_children)
    )
    fused = sum(1 for e in events if "cpp_fused" in e.name or e.name.startswith("triton_"))
    counts = {"aten_ops": aten, "fused_kernels": fused, "ops": aten + fused}
    if device.type == "cuda":
        counts["cuda_kernels"] = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    return counts


def peak_tflops(device: torch.device, precision: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "given (--peak-tflops)"
    if device.type == "cpu":
        threads = torch.get_num_threads()
        source = f"indicative CPU figure: {threads} thread(s) x 32 FLOP/cycle x 2.5 GHz"
        return CPU_PEAK_TFLOPS_PER_THREAD * threads, source
    name = torch.cuda.get_device_name(device)
    for (key, prec), value in PEAK_TFLOPS.items():
        if key in name and prec == precision:
            return value, f"{key} data sheet, dense {prec}"
    return None, "unknown device: pass --peak-tflops"


def throughput(seconds: float, batch_size: int, flops: int, peak: float | None) -> dict:
    achieved = flops / seconds / 1e12
    return {
        "step_ms": 1000 * seconds,
        "images_per_s": batch_size / seconds,
        "achieved_tflops": achieved,
        "fraction_of_peak": achieved / peak if peak else None,
    }


def bench_training(cfg, model, device, precision: str, warmup: int, repeats: int, compiled: bool = False,
                   batch_size: int | None = None, peak: float | None = None, mode: str | None = None) -> dict:
    batch_size = batch_size or int(cfg.data.batch_size)
    batch = synthetic_batch(model, device, batch_size)
    notices: list = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = make_step(model, batch, device, precision, compiled, mode, notices=notices)
    seconds = timed(step, device, max(warmup, 2 if compiled else 0), repeats)  # compiled: eager step, compile
    flops = count_flops(make_step(model, batch, device, precision)) if not compiled else None
    peak_tf, peak_source = peak_tflops(device, precision, peak)
    result = {
        "batch_size": batch_size,
        "precision": precision,
        "compiled": compiled,
        "compile_mode": mode,
        "parameters": sum(p.numel() for p in model.parameters()),
        "flops_per_step": flops,
        "peak_tflops": peak_tf,
        "peak_source": peak_source,
        "peak_memory_mib": peak_memory_mib(device),
        **count_ops(step, device),
    }
    if compiled:
        result["fullgraph"] = bool(step.compiled.fullgraph)
        result["compile_notices"] = notices
    result.update(throughput(seconds, batch_size, flops or 0, peak_tf) if flops else
                  {"step_ms": 1000 * seconds, "images_per_s": batch_size / seconds})
    return result


def bench_levers(cfg, model, device, precision: str, warmup: int, repeats: int, batch_size: int | None = None,
                 peak: float | None = None, levers: list[str] | None = None, mode: str | None = None) -> dict:
    """Each lever against the eager baseline, timed round-robin in one process (one step of each per round),
    so that load on a shared machine falls on all of them alike; medians and ratios to the baseline."""
    batch_size = batch_size or int(cfg.data.batch_size)
    levers = levers or list(LEVERS)
    steps, notices = {}, {}
    for name in ["eager", *[lever for lever in levers if lever != "eager"]]:
        copy_ = copy.deepcopy(model)
        channels_last = name == "channels_last"
        if channels_last:
            copy_ = copy_.to(memory_format=torch.channels_last)
        optimizer = "fused" if "fused" in name else "foreach" if name == "foreach_adamw" else "default"
        notices[name] = []
        batch = synthetic_batch(copy_, device, batch_size, channels_last)
        steps[name] = make_step(copy_, batch, device, precision, compiled=name.startswith("compiled"), mode=mode,
                                optimizer=optimizer, notices=notices[name])
    flops = count_flops(make_step(copy.deepcopy(model), synthetic_batch(model, device, batch_size), device, precision))
    compile_s = {}
    for name, step in steps.items():  # warm up; a compiled step compiles here (its first step runs eagerly)
        started = time.perf_counter()
        for _ in range(max(warmup, 2)):
            step()
        synchronize(device)
        compile_s[name] = time.perf_counter() - started
    ops = {name: count_ops(step, device) for name, step in steps.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - started)
    peak_tf, peak_source = peak_tflops(device, precision, peak)
    base = statistics.median(times["eager"])
    results = {}
    for name, step in steps.items():
        seconds = statistics.median(times[name])
        results[name] = {
            "prediction": LEVERS.get(name, ""),
            **throughput(seconds, batch_size, flops, peak_tf),
            "speedup_vs_eager": base / seconds,
            # The median over rounds of (eager / this) within a round: steadier than the ratio of medians
            # when the machine's load changes between rounds.
            "speedup_paired": statistics.median(e / t for e, t in zip(times["eager"], times[name])),
            "ops_ratio_vs_eager": ops[name]["ops"] / ops["eager"]["ops"],
            "warmup_s": compile_s[name],
            "times_ms": [1000 * t for t in times[name]],
            **ops[name],
        }
        if step.compiled is not None:
            results[name]["fullgraph"] = bool(step.compiled.fullgraph)
            results[name]["compile_notices"] = notices[name]
    return {"precision": precision, "batch_size": batch_size, "flops_per_step": flops,
            "flops_per_image": flops / batch_size, "peak_tflops": peak_tf, "peak_source": peak_source,
            "repeats": repeats, "levers": results}


@torch.no_grad()
def bench_sampling(model, device, num_samples: int, steps: int, warmup: int, repeats: int, dense_limit: int) -> dict:
    model.eval()
    shape = tuple(model.image_shape)
    features = int(torch.tensor(shape).prod())
    noise = torch.randn(num_samples, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    operator = model.operator
    results: dict = {"num_samples": num_samples, "steps": steps, "latent_features": features}

    def multi_step(method):
        z = integrate(operator, model.g_y(noise).flatten(1), steps, method)
        return model.g_x.inverse(z.view(-1, *shape))

    # The latent part alone: what the collapse replaces. g_y and g_x^-1 run once on both paths, so
    # the end-to-end speed-up is bounded by the cost of the two networks.
    latent = model.g_y(noise).flatten(1)

    # The lambdas below run inside timed(), in their own iteration: binding the loop variables late is safe.
    for method in ("euler", "rk4"):
        reference = multi_step(method)
        results[f"{method}_{steps}_step_s"] = timed(lambda: multi_step(method), device, warmup, repeats)  # noqa: B023
        build = timed(lambda: collapse(operator, steps, method), device, warmup, repeats)  # noqa: B023
        results[f"build_B_factored_{method}_s"] = build
        B = collapse(operator, steps, method)
        generator = model.generator(B)
        one = generator(noise)
        results[f"one_step_{method}_s"] = timed(lambda: generator(noise), device, warmup, repeats)  # noqa: B023
        speedup = results[f"{method}_{steps}_step_s"] / results[f"one_step_{method}_s"]
        results[f"speedup_one_vs_{method}_{steps}"] = speedup
        latent_steps = timed(lambda: integrate(operator, latent, steps, method), device, warmup, repeats)  # noqa: B023
        results[f"latent_{method}_{steps}_step_s"] = latent_steps
        results[f"latent_one_step_{method}_s"] = timed(lambda: B(latent), device, warmup, repeats)  # noqa: B023
        results[f"latent_speedup_one_vs_{method}_{steps}"] = (
            results[f"latent_{method}_{steps}_step_s"] / results[f"latent_one_step_{method}_s"]
        )
        results[f"agreement_{method}_rel_error"] = float((one - reference).norm() / reference.norm())
        results[f"B_factored_numel_{method}"] = B.numel()
    results["B_dense_numel"] = features * features
    if features <= dense_limit:
        results["build_B_dense_rk4_s"] = timed(lambda: collapse(operator, steps, "rk4", factored=False), device, 0, 1)
        dense = collapse(operator, steps, "rk4", factored=False)
        factored = collapse(operator, steps, "rk4")
        results["dense_vs_factored_B_rel_error"] = float(
            (dense.matrix() - factored.matrix()).norm() / dense.matrix().norm()
        )
    return results


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [
        f"Device: {env['device_name']} | torch {env['torch']} | {env['cpu_count']} CPU threads | {env['date']}",
        "",
        "| preset | precision | compiled | batch | step (ms) | images/s | peak mem (MiB) | params | "
        "GFLOP/step | achieved TFLOP/s | of peak | ops/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for preset, entry in results["presets"].items():
        for train in entry["training"]:
            flops = train.get("flops_per_step")
            fraction = train.get("fraction_of_peak")
            lines.append(
                f"| {preset} | {train['precision']} | {'yes' if train['compiled'] else 'no'} | "
                f"{train['batch_size']} | {train['step_ms']:.1f} | "
                f"{train['images_per_s']:.1f} | {train['peak_memory_mib']:.0f} | {train['parameters'] / 1e6:.2f} M | "
                f"{flops / 1e9:.2f} | {train['achieved_tflops']:.4f} | {fraction:.2%} | {train['ops']} |"
                if flops else
                f"| {preset} | {train['precision']} | yes | {train['batch_size']} | {train['step_ms']:.1f} | "
                f"{train['images_per_s']:.1f} | {train['peak_memory_mib']:.0f} | {train['parameters'] / 1e6:.2f} M | "
                f"(as eager) | | | {train['ops']} |"
            )
    peaks = {t["peak_source"] for e in results["presets"].values() for t in e["training"] if "peak_source" in t}
    if peaks:
        lines += ["", "Peak: " + "; ".join(sorted(peaks)) + ". FLOPs count matmuls and convolutions only."]
    for preset, entry in results["presets"].items():
        levers = entry.get("levers")
        if not levers:
            continue
        lines += [
            "",
            f"Levers, {preset}, {levers['precision']}, batch {levers['batch_size']}: "
            f"{levers['flops_per_step'] / 1e9:.2f} GFLOP/step ({levers['flops_per_image'] / 1e9:.3f} per image); "
            f"round-robin, median of {levers['repeats']}.",
            "",
            "| lever | step (ms) | speed-up vs eager | paired speed-up | ops/step (aten + fused) | ops vs eager | "
            "of peak | warm-up (s) | prediction |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, lever in levers["levers"].items():
            graph = "" if "fullgraph" not in lever else " (one graph)" if lever["fullgraph"] else " (graph breaks)"
            fraction = f"{lever['fraction_of_peak']:.2%}" if lever["fraction_of_peak"] is not None else "n/a"
            lines.append(
                f"| {name}{graph} | {lever['step_ms']:.1f} | {lever['speedup_vs_eager']:.2f}x | "
                f"{lever['speedup_paired']:.2f}x | "
                f"{lever['ops']} ({lever['aten_ops']} + {lever['fused_kernels']}) | "
                f"{lever['ops_ratio_vs_eager']:.2f}x | {fraction} | {lever['warmup_s']:.1f} | {lever['prediction']} |"
            )
    if env["device"] == "cpu":
        lines += ["", "(CPU peak memory is the process's peak RSS, cumulative over the presets measured before.)"]
    lines += [
        "",
        "| preset | samples | T | Euler T-step (s) | RK4 T-step (s) | one step (s) | speed-up vs RK4 | "
        "latent only: RK4 T-step / B (s) | latent speed-up | build B factored (s) | "
        "build B dense (s) | agreement (rel. err., RK4) | B numel factored / dense |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for preset, entry in results["presets"].items():
        s = entry["sampling"]
        if s is None:
            continue
        t = s["steps"]
        dense_build = f"{s['build_B_dense_rk4_s']:.3f}" if "build_B_dense_rk4_s" in s else "n/a (N too large)"
        lines.append(
            f"| {preset} | {s['num_samples']} | {t} | {s[f'euler_{t}_step_s']:.3f} | {s[f'rk4_{t}_step_s']:.3f} | "
            f"{s['one_step_rk4_s']:.4f} | {s[f'speedup_one_vs_rk4_{t}']:.1f}x | "
            f"{s[f'latent_rk4_{t}_step_s']:.4f} / {s['latent_one_step_rk4_s']:.5f} | "
            f"{s[f'latent_speedup_one_vs_rk4_{t}']:.0f}x | "
            f"{s['build_B_factored_rk4_s']:.4f} | "
            f"{dense_build} | {s['agreement_rk4_rel_error']:.1e} | "
            f"{s['B_factored_numel_rk4'] / s['B_dense_numel']:.2%} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["mnist_one_step"])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--precisions", nargs="+", default=None, help="default: 32-true, plus bf16-mixed on a GPU")
    parser.add_argument("--samples", type=int, default=64, help="images per sampling batch")
    parser.add_argument("--steps", type=int, default=100, help="T of the multi-step samplers")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dense-limit", type=int, default=4096, help="build dense B only up to this N")
    parser.add_argument("--ckpt", default=None, help="benchmark a trained checkpoint instead of a random model")
    parser.add_argument("--tiny", action="store_true", help="shrink every model (smoke test)")
    parser.add_argument("--no-training", action="store_true", help="measure sampling only")
    parser.add_argument("--no-sampling", action="store_true", help="measure training only")
    parser.add_argument("--compile", action="store_true", help="also measure each precision with torch.compile")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default: the preset's)")
    parser.add_argument("--levers", nargs="*", default=None, choices=list(LEVERS),
                        help=f"levers timed round-robin against the eager step (default: all of {list(LEVERS)})")
    parser.add_argument("--no-levers", action="store_true", help="skip the levers")
    parser.add_argument("--compile-mode", default=None, help='torch.compile mode, e.g. "reduce-overhead" (CUDA graphs)')
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak TFLOP/s for the fraction of peak (default: data sheet / CPU estimate)")
    parser.add_argument("--out", default=str(REPO_ROOT / "bench"))
    args = parser.parse_args(argv)
    # Inductor's CPU kernels show in the profile (ops per step) only when generated with this on; it adds one
    # profiler record per kernel call, which the compiled rows pay.
    torch._inductor.config.cpp.enable_kernel_profile = True

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    precisions = args.precisions or (["32-true", "bf16-mixed"] if device.type == "cuda" else ["32-true"])
    torch.manual_seed(0)
    results = {
        "environment": {
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
            "device": str(device),
            "torch": torch.__version__,
            "cpu_count": torch.get_num_threads(),
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d"),
            "command": " ".join(["python scripts/bench.py", *(argv if argv is not None else sys.argv[1:])]),
        },
        "presets": {},
    }
    for preset in args.presets:
        print(f"[bench] {preset}: {'sampling only' if args.no_training else 'training'}", flush=True)
        cfg, model = build(preset, args.tiny, device, args.ckpt)
        variants = [(p, False) for p in precisions] + ([(p, True) for p in precisions] if args.compile else [])
        training = [] if args.no_training else [
            bench_training(cfg, model, device, p, args.warmup, args.repeats, compiled, args.batch_size,
                           args.peak_tflops, args.compile_mode)
            for p, compiled in variants
        ]
        levers = None
        if not (args.no_training or args.no_levers):
            print(f"[bench] {preset}: levers", flush=True)
            levers = bench_levers(cfg, model, device, precisions[-1], args.warmup, args.repeats, args.batch_size,
                                  args.peak_tflops, args.levers, args.compile_mode)
        sampling = None
        if not args.no_sampling:
            print(f"[bench] {preset}: sampling", flush=True)
            sampling = bench_sampling(model, device, args.samples, args.steps, args.warmup, args.repeats,
                                      args.dense_limit)
        results["presets"][preset] = {"training": training, "levers": levers, "sampling": sampling}
        del model
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (out / "results.md").write_text(table)
    print(table)
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return results


if __name__ == "__main__":
    main()
