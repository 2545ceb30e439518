#!/usr/bin/env python
"""Benchmarks, measured side by side in one run: `make bench` or `python scripts/bench.py`.

Writes ``<out>/results.json`` and ``<out>/results.md`` and prints the table.

- training throughput (images/s, peak memory) of a preset's training step on synthetic batches
  (forward, backward and optimizer step; no data loading), fp32 and, on a GPU, bf16 autocast;
- sampling: T-step Euler and RK4 in latent space against one step through the collapsed
  matrix B, the time to build B (factored and, for small latents, dense), and how closely the
  one-step images agree with the T-step ones (relative error);
- every figure is the median of ``--repeats`` timed runs after ``--warmup`` untimed ones,
  synchronised on the device.

Presets: ``--presets mnist_one_step`` (default: the CPU-sized model) and the paper-sized
``mnist_one_step_paper`` / ``celeba_one_step`` (meant for a GPU). ``--tiny`` shrinks every
model to seconds (used by the test). Models are randomly initialised unless ``--ckpt`` is given:
speed does not depend on the weights, agreement hardly does (both paths are exact).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

from lit_linearizer.config import CONFIG_DIR
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


def bench_training(cfg, model, device, precision: str, warmup: int, repeats: int, compiled: bool = False,
                   batch_size: int | None = None) -> dict:
    batch_size = batch_size or int(cfg.data.batch_size)
    shape = tuple(model.image_shape)
    images = torch.rand(batch_size, *shape, device=device) * 2 - 1
    batch = {"image": images, "index": torch.arange(batch_size, device=device)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    # As `model.compile=true` does in training: the step function is compiled, not the modules.
    model_step = torch.compile(model.model_step) if compiled else model.model_step

    def step():
        with autocast:
            loss = model_step(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(step, device, warmup, repeats)
    return {
        "batch_size": batch_size,
        "precision": precision,
        "compiled": compiled,
        "step_ms": 1000 * seconds,
        "images_per_s": batch_size / seconds,
        "peak_memory_mib": peak_memory_mib(device),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


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
        "| preset | precision | compiled | batch | step (ms) | images/s | peak mem (MiB) | params |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for preset, entry in results["presets"].items():
        for train in entry["training"]:
            lines.append(
                f"| {preset} | {train['precision']} | {'yes' if train['compiled'] else 'no'} | "
                f"{train['batch_size']} | {train['step_ms']:.1f} | "
                f"{train['images_per_s']:.1f} | {train['peak_memory_mib']:.0f} | {train['parameters'] / 1e6:.2f} M |"
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
    parser.add_argument("--compile", action="store_true", help="also measure each precision with torch.compile")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default: the preset's)")
    parser.add_argument("--out", default=str(REPO_ROOT / "bench"))
    args = parser.parse_args(argv)

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
            bench_training(cfg, model, device, p, args.warmup, args.repeats, compiled, args.batch_size)
            for p, compiled in variants
        ]
        print(f"[bench] {preset}: sampling", flush=True)
        sampling = bench_sampling(model, device, args.samples, args.steps, args.warmup, args.repeats, args.dense_limit)
        results["presets"][preset] = {"training": training, "sampling": sampling}
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
