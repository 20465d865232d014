"""GPU benchmark of sdgen's keras-cv engine: the fused loop against keras-cv's stock loop,
side by side in one process, random weights (no downloads), images/s per batch size.

    KERAS_BACKEND=jax python benchmarks/engine_bench.py --batches 1,4,8,16 --out bench.json

On a GPU machine without TensorFlow, put a TensorFlow import shim (a stand-in `tensorflow`
package whose every name is an inert placeholder, recorded in `_tfshim.TOUCHED`) first on
PYTHONPATH; the script then checks that keras-cv touched no fake TensorFlow after import
(docs/benchmarks.md, "Without TensorFlow").
Prints one line per (sampler, batch) and a summary with the card name and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batches", default="1,4,8,16")
    p.add_argument("--stock-batches", default="1,8", help="stock keras-cv loop (slow): fewer sizes")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="engine_bench.json")
    p.add_argument(
        "--engine",
        choices=("keras", "snapshot"),
        default="keras",
        help="snapshot: the JAX worker's engine (exported.py), fused loop only",
    )
    a = p.parse_args()

    t0 = time.perf_counter()
    from sdgen.engine.kerascv import KerasCVEngine, keras
    from sdgen.spool.request import parse_request
    from sdgen.spool.split import split_request

    touched_at_import = None
    try:
        import _tfshim  # only present on the GPU machine

        touched_at_import = len(_tfshim.TOUCHED)
    except ImportError:
        pass

    if a.engine == "snapshot":
        from sdgen.engine.exported import ExportedEngine

        engine, a.stock_batches = ExportedEngine(tempfile.mkdtemp()), ""
    else:
        engine = KerasCVEngine(tempfile.mkdtemp())
    info = engine.describe()
    gpu = "cpu"
    if keras.backend.backend() == "jax":
        import jax

        dev = jax.devices()[0]
        gpu = getattr(dev, "device_kind", str(dev))
        info["jax"] = jax.__version__
    print(f"env {json.dumps(info)} gpu={gpu} import={time.perf_counter() - t0:.1f}s", flush=True)

    def ticket(batch: int):
        text = (
            f"prompt: a photograph of an astronaut riding a horse\nimages: {batch}\n"
            f"batch_size: {batch}\nsteps: {a.steps}\nwidth: {a.size}\nheight: {a.size}\n"
            "weights: random\nseed: 1\n"
        )
        return split_request("20261126-000000-aaaaaa", parse_request(text))[0]

    def peak_gib():
        try:
            import jax

            return round(jax.devices()[0].memory_stats()["peak_bytes_in_use"] / 2**30, 2)
        except Exception:  # noqa: BLE001
            return None

    results = []

    def generate(t, sampler):
        if a.engine == "snapshot":
            return engine.generate(t, t.images)
        return engine.generate(t, t.images, sampler=sampler)

    for sampler, batches in (("fused", a.batches), ("stock", a.stock_batches)):
        for batch in [int(b) for b in batches.split(",") if b]:
            t = ticket(batch)
            t1 = time.perf_counter()
            prep = engine.prepare(t)
            generate(t, sampler)  # warm: compiles this path and shape
            warm_s = time.perf_counter() - t1
            times = []
            for _ in range(a.repeats):
                t1 = time.perf_counter()
                generate(t, sampler)
                times.append(time.perf_counter() - t1)
            best = min(times)
            row = {
                "sampler": sampler,
                "batch": batch,
                "images_per_s": round(batch / best, 3),
                "s_per_call": round(best, 3),
                "warmup_s": round(warm_s, 1),
                "prepare": prep,
                "peak_gpu_gib": peak_gib(),
            }
            results.append(row)
            print(json.dumps(row), flush=True)

    ratios = {}
    for row in results:
        if row["sampler"] == "stock":
            fused = next((r for r in results if r["sampler"] == "fused" and r["batch"] == row["batch"]), None)
            if fused:
                ratios[row["batch"]] = round(fused["images_per_s"] / row["images_per_s"], 2)
    summary = {
        "gpu": gpu,
        "engine": a.engine,
        "env": info,
        "size": a.size,
        "steps": a.steps,
        "results": results,
        "fused_over_stock": ratios,
    }
    if touched_at_import is not None:
        import _tfshim

        summary["tfshim_touched_after_import"] = len(_tfshim.TOUCHED) - touched_at_import
        assert summary["tfshim_touched_after_import"] == 0, _tfshim.TOUCHED[touched_at_import:]
    print("summary", json.dumps({"gpu": gpu, "fused_over_stock": ratios}), flush=True)
    with open(a.out, "w") as f:
        json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
