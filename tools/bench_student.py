"""Where a mini DataComp student's training time goes on this CPU, and how fast it could go.

One run measures, side by side on the same machine (CPUs differ: read the flags it prints):

- the student's FLOP per sample (forward + backward, counted by ``torch.utils.flop_counter``);
- one training step as ``open_clip_train`` runs it (forward, CLIP loss, backward, AdamW), split by phase,
  with and without gradient checkpointing (DataComp's ``train.py`` passes ``--grad-checkpointing``; on one
  process it recomputes the forward pass and changes no number), at 1 and 2 torch threads;
- the data side of a step (JPEG decode, open_clip's train transform, tokenizer) from a pool shard;
- a single-thread fp32 matmul of the model's own shapes, the reference for the achieved GFLOP/s;
- with ``--e2e``, whole ``open_clip_train`` runs of the student (the real loader, one worker) for each variant,
  samples/s from wall time.

    python tools/bench_student.py --build OUT [--e2e] [--json bench_student.json]

OUT is a ``minicomp build`` (``--quick`` is enough): its first pool shard feeds the data side and ``--e2e``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

BATCH = 128


def cpu_flags() -> str:
    """The CPU model and the vector extensions that decide fp32 matmul speed."""
    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"{model}; {' '.join(wanted) or 'no avx2'}; {os.cpu_count()} logical CPUs"


def build_student(folder: str):
    """The student exactly as ``minicomp run`` builds it (its config registered with open_clip)."""
    from datacomp_plugins.apps.minicomp import openclip, student

    path = student.write_model_config(Path(folder))
    open_clip = openclip.register([str(path)])
    model, preprocess_train, _ = open_clip.create_model_and_transforms(student.STUDENT_MODEL, pretrained=None,
                                                                         output_dict=True)
    tokenizer = open_clip.get_tokenizer(student.STUDENT_MODEL)
    return open_clip, model, preprocess_train, tokenizer


def shard_samples(tar_path: str, n: int) -> list[tuple[bytes, str]]:
    """The first ``n`` (jpg bytes, caption) pairs of a webdataset shard."""
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar_path) as tar:
        for info in tar:
            key, _, ext = info.name.rpartition(".")
            if ext in ("jpg", "txt"):
                members.setdefault(key, {})[ext] = tar.extractfile(info).read()
            if len(members) > n and all(len(v) == 2 for v in list(members.values())[:n]):
                break
    pairs = [(m["jpg"], m["txt"].decode()) for m in members.values() if len(m) == 2]
    return pairs[:n]


def time_data(pairs: list[tuple[bytes, str]], preprocess, tokenizer, repeat: int) -> dict[str, float]:
    """Microseconds per sample for each part of the loader's work, one process, best of ``repeat``."""
    from PIL import Image

    def best(fn) -> float:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times) / len(pairs) * 1e6

    images = [Image.open(io.BytesIO(data)).convert("RGB") for data, _ in pairs]
    return {
        "decode_us": best(lambda: [Image.open(io.BytesIO(d)).convert("RGB") for d, _ in pairs]),
        "transform_us": best(lambda: [preprocess(im) for im in images]),
        "tokenize_us": best(lambda: tokenizer([c for _, c in pairs])),
    }


def flops_per_sample(model, images, tokens, loss_fn) -> dict[str, float]:
    """FLOP per sample of forward and of forward + backward (matmuls and convolutions, as counted by torch)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.set_grad_checkpointing(False)
    with FlopCounterMode(display=False) as forward:
        out = model(images, tokens)
    with FlopCounterMode(display=False) as total:
        out = model(images, tokens)
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        loss.backward()
    model.zero_grad(set_to_none=True)
    del out, loss
    torch.set_grad_enabled(True)
    return {"forward": forward.get_total_flops() / len(images), "train": total.get_total_flops() / len(images)}


def time_steps(model, images, tokens, loss_fn, steps: int, variants: list[tuple[int, bool]],
               rounds: int = 3) -> dict[tuple[int, bool], dict[str, float]]:
    """Milliseconds per step of each phase for each (threads, checkpointing) variant: median over ``rounds``
    rounds of ``steps`` steps, the variants taking turns within a round, so that a machine whose load changes
    during the run slows every variant alike."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
    phases = {v: {"forward": [], "backward": [], "optimizer": [], "step": []} for v in variants}
    for _ in range(rounds):
        for threads, checkpointing in variants:
            torch.set_num_threads(threads)
            model.set_grad_checkpointing(checkpointing)
            for i in range(steps + 1):
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                out = model(images, tokens)
                loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
                t1 = time.perf_counter()
                loss.backward()
                t2 = time.perf_counter()
                opt.step()
                t3 = time.perf_counter()
                if i >= 1:  # the first step after a switch warms caches and thread pools
                    for name, value in (("forward", t1 - t0), ("backward", t2 - t1), ("optimizer", t3 - t2),
                                        ("step", t3 - t0)):
                        phases[(threads, checkpointing)][name].append(value * 1e3)
    return {v: {name: statistics.median(values) for name, values in p.items()} for v, p in phases.items()}


def gemm_shapes(model, images, tokens, top: int) -> list[tuple[int, int, int]]:
    """The (m, k, n) of the ``top`` costliest matrix products of one forward pass, convolutions as im2col.

    Read from the model's own layers with forward hooks, so the reference matmuls follow the student's
    architecture (ResNet or ViT) instead of a formula for one of them.
    """
    import torch

    found: dict[tuple[int, int, int], int] = {}

    def hook(module, inputs, output) -> None:
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            mnk = (output.shape[0] * output.shape[2] * output.shape[3],
                   module.in_channels // module.groups * kh * kw, module.out_channels)
        else:
            mnk = (inputs[0].numel() // module.in_features, module.in_features, module.out_features)
        found[mnk] = found.get(mnk, 0) + 1

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.no_grad():
            model(images, tokens)
    finally:
        for handle in handles:
            handle.remove()
    return sorted(found, key=lambda mkn: -found[mkn] * mkn[0] * mkn[1] * mkn[2])[:top]


def matmul_reference(shapes: list[tuple[int, int, int]], repeat: int = 20) -> dict[str, float]:
    """Single-thread fp32 GFLOP/s of (m x k) @ (k x n) for the model's shapes, best of ``repeat``."""
    import torch

    torch.set_num_threads(1)
    result = {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        result[f"{m}x{k}x{n}"] = 2 * m * k * n / best / 1e9
    return result


def e2e(build: Path, samples: int, variants: dict[str, dict]) -> dict[str, dict]:
    """Whole open_clip_train runs of the student on the build's first shards: samples/s from wall time."""
    from datacomp_plugins.apps.minicomp import openclip, student

    shards = sorted(str(p) for p in (build / "shards").glob("*.tar"))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = student.write_model_config(Path(tmp))
        for name, v in variants.items():
            argv = openclip.train_argv(train_data="::".join(shards), num_samples=samples, epochs=1,
                                       batch_size=BATCH, lr=1e-3, warmup=10, model=student.STUDENT_MODEL,
                                       logs=tmp, name=name, seed=0, distributed_flags=False,
                                       extra=["--grad-checkpointing"] if v["checkpointing"] else [])
            log = Path(tmp) / f"{name}.log"
            start = time.perf_counter()
            openclip.train(argv, [str(config)], 0, log, threads=v["threads"], what=f"student ({name})")
            wall = time.perf_counter() - start
            results[name] = {**v, "seconds": wall, "samples_per_s": samples / wall}
            print(f"  e2e {name}: {samples / wall:.0f} samples/s ({wall:.1f} s for {samples})", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", type=Path, required=True, help="a minicomp build (OUT); --quick is enough")
    parser.add_argument("--steps", type=int, default=4, help="timed training steps per variant and round")
    parser.add_argument("--e2e", action="store_true", help="also time whole open_clip_train runs (minutes)")
    parser.add_argument("--e2e_samples", type=int, default=2560, help="samples per open_clip_train run")
    parser.add_argument("--json", type=Path, help="write every number here as JSON")
    args = parser.parse_args(argv)
    shard = args.build / "shards" / "00000000.tar"
    if not shard.is_file():
        parser.error(f"--build {args.build}: no shards/00000000.tar; expected a minicomp build folder")

    import torch

    report: dict = {"cpu": cpu_flags(), "torch": torch.__version__, "batch": BATCH}
    print(f"cpu: {report['cpu']}; torch {torch.__version__}", flush=True)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        open_clip, model, preprocess, tokenizer = build_student(tmp)
    from open_clip.loss import ClipLoss

    loss_fn = ClipLoss()
    pairs = shard_samples(str(shard), BATCH)
    from PIL import Image

    images = torch.stack([preprocess(Image.open(io.BytesIO(d)).convert("RGB")) for d, _ in pairs])
    tokens = tokenizer([c for _, c in pairs])

    flops = flops_per_sample(model, images, tokens, loss_fn)
    report["flop_per_sample"] = flops
    print(f"FLOP per sample: forward {flops['forward'] / 1e6:.1f} M, forward + backward {flops['train'] / 1e6:.1f} M")

    report["data_us_per_sample"] = data = time_data(pairs, preprocess, tokenizer, repeat=5)
    per_sample = sum(data.values())
    print(f"data side (one process): {per_sample:.0f} us/sample ({', '.join(f'{k} {v:.0f}' for k, v in data.items())})"
          f" = at most {1e6 / per_sample:.0f} samples/s from one loader worker")

    shapes = gemm_shapes(model, images, tokens, top=4) + [(1024, 1024, 1024)]
    report["matmul_gflops_1thread"] = mm = matmul_reference(shapes)
    print("single-thread fp32 matmul (GFLOP/s): " + ", ".join(f"{k} {v:.1f}" for k, v in mm.items()))

    report["steps"] = {}
    variants = [(1, True), (1, False), (2, True), (2, False)]
    timed = time_steps(model, images, tokens, loss_fn, args.steps, variants)
    for (threads, checkpointing), t in timed.items():
        name = f"threads={threads} grad_checkpointing={'on' if checkpointing else 'off'}"
        gflops = flops["train"] * BATCH / (t["step"] / 1e3) / 1e9
        t.update({"samples_per_s": BATCH / (t["step"] / 1e3), "gflops": gflops})
        report["steps"][name] = t
        print(f"step, {name}: {t['step']:.0f} ms (forward {t['forward']:.0f}, backward {t['backward']:.0f}, "
              f"AdamW {t['optimizer']:.0f}) = {t['samples_per_s']:.0f} samples/s, {gflops:.1f} GFLOP/s", flush=True)
    with open("/proc/loadavg") as handle:
        report["loadavg_after"] = handle.read().split()[:3]
    print(f"load average at the end: {' '.join(report['loadavg_after'])} (other work slows every number above)")

    if args.e2e:
        variants = {"as_datacomp": {"threads": 1, "checkpointing": True},
                    "no_checkpointing": {"threads": 1, "checkpointing": False},
                    "no_checkpointing_2threads": {"threads": 2, "checkpointing": False}}
        report["e2e"] = e2e(args.build, args.e2e_samples, variants)
    if args.json:
        tmp_path = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp_path.write_text(json.dumps(report, indent=2))
        os.replace(tmp_path, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
