#!/usr/bin/env python
"""Our training step beside the reference code's (github assafshocher/Linearizer), in one process.

The reference is not part of this repository: fetch it into an ignored folder (``bench/reference``, the
default of ``--reference-dir``) and this script imports it from there. Its MNIST model is built as its
``one_step`` code builds it (InverseUnet g with 2 layers, the time-dependent LoRA operator with 8 features,
Adam, latent noise 0.3). Its loss uses piq's LPIPS, which needs downloaded VGG weights: it is replaced by
MSE here, which **flatters the reference** (LPIPS runs a VGG per image; MSE costs nothing).

Ours is ``--preset`` (default ``mnist_one_step_refsize``: the reference's parameter count). For both, the
script states parameters and FLOPs per image (``torch.utils.flop_counter``), times one training step each
per round, round-robin (medians of ``--repeats``), and reports ours / reference images per second, raw and
at equal FLOPs per image (images/s x FLOPs per image, i.e. achieved FLOP/s).

    python scripts/bench_reference.py --device cuda --batch-size 256 --compile --precisions 32-true bf16-mixed
    python scripts/bench_reference.py --device cpu --batch-size 8 --repeats 3     # a CPU check, minutes
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", REPO_ROOT / "scripts" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def reference_step(reference_dir: Path, device: torch.device, batch_size: int):
    """The reference's MNIST training step (its own functions, imported from ``reference_dir``), MSE for LPIPS."""
    for path in (reference_dir, reference_dir / "one_step"):
        sys.path.insert(0, str(path))
    sys.modules.setdefault("piq", types.SimpleNamespace(LPIPS=lambda **kwargs: None))  # not installed; not used
    import one_step.train_one_step as reference
    from one_step.modules.one_step_linearizer import OneStepLinearizer
    from one_step.utils.model_utils import get_g, get_linear_network

    reference.calculate_lpips = lambda x, y: F.mse_loss(x, y)  # flatters the reference: no VGG pass
    operator = get_linear_network("TimeDependentLoRALinearLayer", linear_lora_features=8, in_ch=1, img_size=32)
    linearizer = OneStepLinearizer(gx=get_g("InverseUnet", 2, 1, 32), linear_network=operator).to(device)
    matcher = reference.FlowMatcher(linearizer)
    optimizer = torch.optim.Adam(linearizer.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0)
    images = torch.rand(batch_size, 1, 32, 32, device=device) * 2 - 1
    linearizer.train()

    def step():
        optimizer.zero_grad()
        matcher.training_losses(x1=images, x0=None, noise_level=0.3).backward()
        optimizer.step()

    return step, sum(p.numel() for p in linearizer.parameters())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-dir", default=str(REPO_ROOT / "bench" / "reference"))
    parser.add_argument("--preset", default="mnist_one_step_refsize")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=256, help="both models (the reference trains at 256)")
    parser.add_argument("--precisions", nargs="+", default=["32-true"], help="ours (the reference runs fp32)")
    parser.add_argument("--compile", action="store_true", help="also ours compiled as one graph, fused AdamW")
    parser.add_argument("--compile-mode", default=None, help='e.g. "reduce-overhead" (CUDA graphs)')
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "reference_side_by_side"))
    args = parser.parse_args(argv)

    bench = load_bench()
    device = torch.device(args.device)
    torch.manual_seed(0)
    reference_dir = Path(args.reference_dir)
    if not (reference_dir / "one_step").is_dir():
        raise SystemExit(f"no reference code in {reference_dir}: fetch github assafshocher/Linearizer there")

    steps, info = {}, {}
    step, parameters = reference_step(reference_dir, device, args.batch_size)
    steps["reference"] = step
    info["reference"] = {"parameters": parameters, "flops_per_image": bench.count_flops(step) / args.batch_size,
                         "precision": "32-true", "note": "LPIPS replaced by MSE (flatters the reference)"}
    cfg, model = bench.build(args.preset, False, device, None)
    batch = bench.synthetic_batch(model, device, args.batch_size)
    flops = bench.count_flops(bench.make_step(model, batch, device, "32-true")) / args.batch_size
    variants = [(p, False, "default") for p in args.precisions]
    if args.compile:
        variants += [(p, True, "fused") for p in args.precisions]
    for precision, compiled, optimizer in variants:
        name = f"ours {precision}" + (" compiled+fused" if compiled else "")
        steps[name] = bench.make_step(bench.copy.deepcopy(model), batch, device, precision, compiled,
                                      args.compile_mode, optimizer)
        info[name] = {"parameters": sum(p.numel() for p in model.parameters()), "flops_per_image": flops,
                      "precision": precision, "compiled": compiled, "optimizer": optimizer}

    for name, step in steps.items():
        started = time.perf_counter()
        for _ in range(max(args.warmup, 2)):
            step()
        bench.synchronize(device)
        info[name]["warmup_s"] = time.perf_counter() - started
        print(f"[reference] warmed up {name} ({info[name]['warmup_s']:.1f} s)", flush=True)
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            bench.synchronize(device)
            times[name].append(time.perf_counter() - started)
    ref = info["reference"]
    for name in steps:
        seconds = statistics.median(times[name])
        entry = info[name]
        entry.update(step_ms=1000 * seconds, images_per_s=args.batch_size / seconds, times_ms=[1e3 * t for t in
                                                                                                 times[name]])
        entry["achieved_tflops"] = entry["images_per_s"] * entry["flops_per_image"] / 1e12
    for name in steps:
        entry = info[name]
        entry["images_per_s_vs_reference"] = entry["images_per_s"] / ref["images_per_s"]
        entry["at_equal_flops_vs_reference"] = entry["achieved_tflops"] / ref["achieved_tflops"]
    results = {
        "environment": {"device": str(device), "device_name": torch.cuda.get_device_name(device)
                        if device.type == "cuda" else bench.cpu_name(), "threads": torch.get_num_threads(),
                        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                        "command": " ".join(["python scripts/bench_reference.py",
                                             *(argv if argv is not None else sys.argv[1:])])},
        "batch_size": args.batch_size, "preset": args.preset, "runs": info,
    }
    lines = [f"{results['environment']['device_name']}, {results['environment']['threads']} thread(s), "
             f"batch {args.batch_size}, median of {args.repeats} round-robin rounds, {results['environment']['date']}",
             "", "| run | params | GFLOP/image | step (ms) | images/s | vs reference | at equal FLOPs/image |",
             "|---|---|---|---|---|---|---|"]
    for name, entry in info.items():
        lines.append(f"| {name} | {entry['parameters'] / 1e6:.2f} M | {entry['flops_per_image'] / 1e9:.2f} | "
                     f"{entry['step_ms']:.1f} | {entry['images_per_s']:.1f} | "
                     f"{entry['images_per_s_vs_reference']:.2f}x | {entry['at_equal_flops_vs_reference']:.2f}x |")
    table = "\n".join(lines) + "\n\n(The reference's LPIPS is replaced by MSE: this flatters the reference.)\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(table)
    print(table)
    return results


if __name__ == "__main__":
    main()
