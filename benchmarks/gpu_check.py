"""GPU readiness check in stages, each written to the results file as it finishes (a stage that
fails is written too, with its error, and the next stage still runs): device facts; layer 1 on
the tiny SD and on the full-size SD 1.5 architecture with random weights (no download), beside
a plain reference loop in the same precision and batching; layer 2 on the device; a whole album
job (Medium, both layers, 4 photos) through the real job runner; peak memory against the plan.

Writes ``gpu_check_<device>_<size>.json`` and ``.md`` to ``--out`` (default
``benchmarks/results``). README targets on one datacenter GPU (Medium, both layers, 4 photos at
512 px): whole job <= 20 s, peak VRAM <= 8 GB, PGD step <= 0.8 x the plain reference.

    bash benchmarks/gpu_check.sh                         # CUDA, 512 px (<= 10 min on one GPU)
    bash benchmarks/gpu_check.sh --device cpu --size 64  # CI: tiny SD only, ~1-2 min

Below 256 px the tiny random SD of the tests stands in for SD 1.5 everywhere and the
full-architecture stage is skipped (it takes hours on a CPU). ``--fail-stage NAME`` raises in
that stage (to test that the results are still written).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.fine_tune_shield import (  # noqa: E402
    build_sd15_random,
    reference_pgd_seconds,
    reset_rss_peak,
    rss_peak_bytes,
)
from dladiff_app.core.presets import Layers, preset  # noqa: E402

STAGES = ("device", "layer1_tiny", "layer1_full", "layer2", "album", "peak_memory")
GIB = 2**30


def face_photos(folder: Path, n: int, side: int) -> list[Path]:
    """n face photos (crops of skimage's astronaut at different offsets), ``side`` px on the
    shorter side, saved as PNG."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    astro = Image.fromarray(data.astronaut())
    paths = []
    for i in range(n):
        crop = astro.crop((60 + 12 * i, 0, 460 + 12 * i, 480))  # 400 x 480, the face inside
        photo = crop.resize((side, side * 6 // 5), Image.Resampling.LANCZOS)
        paths.append(folder / f"photo{i}.png")
        photo.save(paths[-1])
    return paths


class Results:
    """The stages' records, written as JSON and Markdown after every stage."""

    def __init__(self, stem: Path, header: dict[str, Any]) -> None:
        self.stem, self.header = stem, header
        self.stages: dict[str, dict[str, Any]] = {}

    def run(self, name: str, work: Callable[[], dict[str, Any]], device: torch.device,
            fail: str | None) -> dict[str, Any] | None:
        """Run one stage: its figures, its seconds and its peak memory, or its error."""
        from dladiff_app.engine.device import empty_cache, is_out_of_memory

        reset_rss_peak()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        record: dict[str, Any]
        try:
            if fail == name:
                raise RuntimeError(f"failure injected into stage {name} (--fail-stage)")
            record = {"status": "ok", **work()}
        except Exception as exc:  # a stage's failure is a result: written, then the next
            oom = is_out_of_memory(exc)
            record = {"status": "out of memory" if oom else "failed",
                      "error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc(limit=6)}
            if oom:
                empty_cache(device.type)
        record["seconds"] = time.perf_counter() - started
        record["peak_rss_bytes"] = rss_peak_bytes()
        if device.type == "cuda":
            record["peak_vram_bytes"] = int(torch.cuda.max_memory_allocated(device))
        self.stages[name] = record
        self.write()
        print(f"[{name}] {record['status']} in {record['seconds']:.1f} s"
              + (f": {record['error']}" if "error" in record else ""), flush=True)
        return record if record["status"] in ("ok", "skipped") else None

    def skip(self, name: str, reason: str) -> None:
        self.stages[name] = {"status": "skipped", "reason": reason}
        self.write()
        print(f"[{name}] skipped: {reason}", flush=True)

    @property
    def passed(self) -> bool:
        return all(r["status"] in ("ok", "skipped") for r in self.stages.values())

    def write(self) -> None:
        self.stem.parent.mkdir(parents=True, exist_ok=True)
        data = {**self.header, "stages": self.stages, "passed": self.passed}
        self.stem.with_suffix(".json").write_text(json.dumps(data, indent=2, default=str) + "\n")
        self.stem.with_suffix(".md").write_text(markdown(data))


def _fmt(value: Any, spec: str = ".3g") -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(data: dict[str, Any]) -> str:
    lines = [f"# GPU check: {data['device_name']} ({data['device']}), {data['size']} px", "",
             f"Command: `bash benchmarks/gpu_check.sh {data['command']}`; precision "
             f"{data['precision']}; {data['threads']} torch thread(s).", "",
             "| stage | status | seconds | peak VRAM (GiB) | peak RSS (GiB) | figures |",
             "|---|---|---|---|---|---|"]
    for name, r in data["stages"].items():
        figures = r.get("error") or r.get("reason") or "; ".join(
            f"{k} {_fmt(v) if isinstance(v, float) else v}" for k, v in r.items()
            if k in SUMMARY_KEYS)
        vram = r.get("peak_vram_bytes")
        lines.append(f"| {name} | {r['status']} | {_fmt(r.get('seconds'), '.1f')} | "
                     f"{_fmt(vram / GIB if vram else None, '.2f')} | "
                     f"{_fmt(r['peak_rss_bytes'] / GIB if r.get('peak_rss_bytes') else None, '.2f')}"
                     f" | {str(figures).splitlines()[0][:300]} |")
    lines += ["", "All stages passed." if data["passed"] else "Some stage failed: see the JSON "
              "file's tracebacks.", ""]
    return "\n".join(lines)


SUMMARY_KEYS = ("kind", "autocast", "capability", "native_bf16", "memory_gib", "plan",
                "pgd_step_s", "reference_step_s", "ratio", "reference_note", "steps",
                "step_s", "changed", "done", "layers_done", "total_s",
                "planned_activations_gib", "measured_peak_gib", "within_8gb")


def layer1_stage(folder: Path, photos: list[torch.Tensor], info: Any, size: int, steps: int,
                 n_photos: int) -> dict[str, Any]:
    """Our PGD step and the reference's, same model, precision, photos and batching."""
    from dladiff_app.engine.device import is_out_of_memory
    from dladiff_app.engine.shield.layer1 import protect_album_layer1

    # The dual objective and no denoising stage: the very step the reference writes the plain
    # way (two surrogates' denoising losses, one backward). The album stage runs the default
    # attention objective.
    settings = preset("medium").with_overrides(layer1_rounds=1, layer1_pgd_steps=steps,
                                               layer1_denoise_steps=0, layer1_objective="dual",
                                               prior_steps=1)
    dev = torch.device(info.torch_device)
    res = protect_album_layer1(photos[:n_photos], folder, settings, device=info,
                               working_size=size)
    st = res.stats
    pgd_s = st.pgd_seconds / steps
    views = 2 if "mirrored" in st.attacker_views else 1
    out: dict[str, Any] = {"plan": st.memory_plan, "micro_batch": st.micro_batch,
                           "checkpointing": st.gradient_checkpointing,
                           "step_downs": st.step_downs, "pgd_step_s": pgd_s}
    del res
    try:
        ref = reference_pgd_seconds(folder, photos[:n_photos], size, steps, dev, surrogates=2,
                                    views=views, dtype=info.autocast_dtype,
                                    micro_batch=st.micro_batch)
        ref_s = sorted(ref)[len(ref) // 2]
        out.update(reference_step_s=ref_s, ratio=pgd_s / ref_s)
    except Exception as exc:  # the reference may not fit where ours does
        if not is_out_of_memory(exc):
            raise
        out["reference_note"] = f"the reference ran out of memory ({exc})"[:200]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=512, help="working size of layer 1")
    ap.add_argument("--photos", type=int, default=4)
    ap.add_argument("--preset", default="medium")
    ap.add_argument("--reference-steps", type=int, default=3)
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset")
    ap.add_argument("--fail-stage", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--model-dir", type=Path, default=None,
                    help="keep/reuse the random SD folders here (default: a temp folder)")
    args = ap.parse_args(argv)
    wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(wanted) - set(STAGES)
    if unknown:
        ap.error(f"unknown stages {sorted(unknown)}; choose from {', '.join(STAGES)}")

    from dladiff_app.engine.device import resolve_device

    info = resolve_device(args.device)
    dev = torch.device(info.torch_device)
    tiny_only = args.size < 256
    results = Results(args.out / f"gpu_check_{dev.type}_{args.size}", {
        "device": info.torch_device, "device_name": info.name, "size": args.size,
        "precision": str(info.autocast_dtype or torch.float32),
        "threads": torch.get_num_threads(), "photos": args.photos, "preset": args.preset,
        "command": " ".join(argv if argv is not None else sys.argv[1:]),
        "targets": {"total_seconds": 20.0, "peak_vram_bytes": 8 * 10**9,
                    "pgd_ratio_vs_reference": 0.8,
                    "apply_to": "cuda, 512 px, 4 photos, medium, both layers"}})
    results.write()  # the file exists from the start, whatever happens next
    fail = args.fail_stage
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp_name:
        tmp = Path(tmp_name)
        models = args.model_dir or tmp
        photo_paths = face_photos(tmp / "album", args.photos, max(args.size, 256))
        from dladiff_app.core.imageio import load_image

        photos = [torch.from_numpy(load_image(p).pixels).permute(2, 0, 1).contiguous()
                  for p in photo_paths]

        def sd_folder(tiny: bool) -> Path:
            folder = models / ("tiny_sd" if tiny else "sd15_random")
            if not (folder / "model_index.json").is_file():
                if tiny:
                    from tests.fixtures.tiny_sd import build_tiny_sd

                    build_tiny_sd(folder)
                else:
                    build_sd15_random(folder)
            return folder

        def device_facts() -> dict[str, Any]:
            import onnxruntime

            from dladiff_app.engine.shield.memory_plan import free_bytes, plan_layer1

            facts: dict[str, Any] = {"kind": info.kind, "autocast": str(info.autocast_dtype),
                                     "memory_gib": (info.memory_bytes or 0) / GIB,
                                     "torch": torch.__version__,
                                     "onnxruntime_providers": onnxruntime.get_available_providers()}
            if dev.type == "cuda":
                facts["capability"] = ".".join(map(str, torch.cuda.get_device_capability(dev)))
                facts["native_bf16"] = info.autocast_dtype == torch.bfloat16
                facts["emulated_bf16_reported"] = bool(torch.cuda.is_bf16_supported())
            free = free_bytes(dev)
            facts["free_gib"] = None if free is None else free / GIB
            # Nothing is loaded yet: the plan sees the memory left after SD 1.5's UNet + VAE
            # in half precision (1.76 GiB) and the context's share (layer1_memory.md).
            facts["plan"] = plan_layer1(None if free is None else free - 2 * GIB,
                                        photos=args.photos, views_per_photo=2, size=args.size,
                                        element_bytes=2 if info.autocast_dtype else 4
                                        ).describe()
            return facts

        def layer2_on_device() -> dict[str, Any]:
            from dladiff_app.engine.device import to_device
            from dladiff_app.engine.faces.dlib_detect import DlibDetector
            from dladiff_app.engine.faces.dlib_resnet import DlibEncoder
            from dladiff_app.engine.faces.registry import place
            from dladiff_app.engine.shield.layer2 import protect_faces

            pixels = photos[0].permute(1, 2, 0).numpy()
            faces = DlibDetector().detect(pixels)
            enc = place(DlibEncoder.load(), dev, info.autocast_dtype)
            steps = 20
            settings = preset(args.preset)
            image = to_device(photos[0][None], dev)
            started = time.perf_counter()
            res = protect_faces(image, None, faces, [enc], settings, steps=steps)
            changed = float((res.protected - image).abs().max()) * 255
            return {"faces": len(faces), "steps": res.steps_done,
                    "step_s": (time.perf_counter() - started) / steps,
                    "changed": f"max {changed:.0f}/255", "on": str(res.protected.device),
                    "similarity": res.final_similarity}

        def album_job() -> dict[str, Any]:
            from dladiff_app.core.events import Event, PhotoDone, PhotoFailed
            from dladiff_app.core.jobs import ProtectJob
            from dladiff_app.engine.faces.dlib_detect import DlibDetector
            from dladiff_app.engine.faces.dlib_resnet import DlibEncoder
            from dladiff_app.engine.kit import build_kit
            from dladiff_app.engine.runner import run_job

            settings = preset(args.preset).with_overrides(layers=Layers.BOTH)
            kit = build_kit(settings, device=args.device, pipeline_dir=sd_folder(tiny_only),
                            detector=DlibDetector(), encoders=[DlibEncoder.load()],
                            working_size=args.size, cache_dir=tmp / "prior_cache",
                            micro_batch=min(args.photos, 4) if tiny_only else None)
            events: list[Event] = []
            job = ProtectJob(inputs=(tmp / "album",), output_dir=tmp / "out", settings=settings)
            started = time.perf_counter()
            summary = run_job(job, kit, events.append)
            total = time.perf_counter() - started
            session = getattr(kit.layer1, "__self__", None)
            st = getattr(session, "last_stats", None)
            failed = [e.reason for e in events if isinstance(e, PhotoFailed)]
            if summary.done != args.photos:
                raise RuntimeError(f"{summary.done}/{args.photos} photos done: {failed}")
            done = [e.result for e in events if isinstance(e, PhotoDone)]
            return {"done": summary.done, "total_s": total,
                    "layers_done": sorted({"+".join(r.layers_done) for r in done}),
                    "plan": getattr(st, "memory_plan", None),
                    "pgd_step_s": st.pgd_seconds / max(1, settings.layer1_total_pgd)
                    if st else None}

        def peak_memory() -> dict[str, Any]:
            from dladiff_app.engine.shield.memory_plan import activation_bytes

            full = results.stages.get("layer1_full") or results.stages.get("layer1_tiny") or {}
            job = results.stages.get("album", {})
            measured = max((r.get("peak_vram_bytes") or 0) for r in results.stages.values())
            views = 2 * int(full.get("micro_batch") or 1)
            planned = activation_bytes(views, args.size, 2 if info.autocast_dtype else 4,
                                       checkpointing=bool(full.get("checkpointing")))
            # The plan's activations only; the measured peak also holds the weights.
            return {"planned_activations_gib": planned / GIB,
                    "measured_peak_gib": measured / GIB if measured else None,
                    "album_peak_vram_bytes": job.get("peak_vram_bytes"),
                    "within_8gb": bool(measured and measured <= 8 * 10**9)
                    if dev.type == "cuda" else None}

        stages: dict[str, Callable[[], dict[str, Any]]] = {
            "device": device_facts,
            "layer1_tiny": lambda: layer1_stage(sd_folder(True), photos, info, 64,
                                                args.reference_steps, min(2, args.photos)),
            "layer1_full": lambda: layer1_stage(sd_folder(False), photos, info, args.size,
                                                args.reference_steps, args.photos),
            "layer2": layer2_on_device,
            "album": album_job,
            "peak_memory": peak_memory,
        }
        for name in STAGES:
            if name not in wanted:
                continue
            if name == "layer1_full" and tiny_only:
                results.skip(name, f"--size {args.size} is below 256: the tiny SD stands in")
                continue
            results.run(name, stages[name], dev, fail)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    print(f"written: {results.stem}.json, {results.stem}.md")
    return 0 if results.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
