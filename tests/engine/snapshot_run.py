"""Run by tests/engine/test_exported.py in a fresh process with KERAS_BACKEND=jax:

    python tests/engine/snapshot_run.py DATA OUT.npy build   # keras path, then write + use a snapshot
    python tests/engine/snapshot_run.py DATA OUT.npy load    # a new worker: snapshot only

Prints one JSON line: the engine's timings, whether keras was imported, what it describes.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from sdgen.engine.registry import get_engine  # noqa: E402
from sdgen.spool.request import parse_request  # noqa: E402
from sdgen.spool.split import split_request  # noqa: E402

data, out, mode = sys.argv[1:4]
ticket = split_request(
    "20261126-000000-aaaaaa",
    parse_request(
        "prompt: a lighthouse at dawn\nnegative_prompt: fog\nimages: 2\nbatch_size: 2\nsteps: 2\n"
        "width: 128\nheight: 128\nweights: random\nseed: 7\nengine: keras-cv\n"
    ),
)[0]
engine = get_engine("keras-cv", data)
report = {"engine": type(engine).__name__}
if mode == "build":
    # the keras-cv models' own images first (KerasCVEngine, the fused keras path) ...
    from sdgen.engine.sampler import FusedSampler

    builder = engine._builder()
    key = builder._key(ticket)
    builder.models[key] = sd = builder.build(*key)
    builder.samplers[key] = FusedSampler(sd._diffusion_model, sd._decoder, builder.jit)
    keras_images = np.stack([np.asarray(i) for i in builder.generate(ticket, ticket.images)])
    np.save(out.replace(".npy", "-keras.npy"), keras_images)
    # a snapshot that cannot be written (here: a file where its folder goes): this worker
    # generates through the keras models it built, the same images
    blocker = Path(data) / "cache" / "snapshots"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("in the way")
    fallback = np.stack([np.asarray(i) for i in engine.generate(ticket, ticket.images)])
    report["fallback_same_images"] = bool((fallback == keras_images).all())
    report["fallback_keys"] = sorted(map(list, engine.fallback))
    blocker.unlink()
    engine = type(engine)(data)  # a fresh engine, the same built models
    engine.builder = builder
# ... then the snapshot's (written from those same models when building)
report["prepare"] = engine.prepare(ticket)
np.save(out, np.stack([np.asarray(i) for i in engine.generate(ticket, ticket.images)]))
if mode == "build":
    # two tickets of one request (two prompts) as one batch, against each alone
    pair = split_request(
        "20261126-000000-bbbbbb",
        parse_request(
            "prompts: [a lighthouse at dawn, a red barn in snow]\nnegative_prompt: fog\nimages: 1\nsteps: 2\n"
            "width: 128\nheight: 128\nweights: random\nseed: 7\nengine: keras-cv\n"
        ),
    )
    grouped = [np.asarray(ims[0], dtype=int) for ims in engine.generate_group([(t, t.images) for t in pair])]
    alone = [np.asarray(engine.generate(t, t.images)[0], dtype=int) for t in pair]
    report["group_vs_alone_max_diff"] = int(max(np.abs(g - a).max() for g, a in zip(grouped, alone)))
    report["group_prompts_mean_diff"] = float(np.abs(grouped[0] - grouped[1]).mean())
report.update(keras_imported="keras" in sys.modules, describe=engine.describe())
print(json.dumps(report), flush=True)
