"""First-image latency of a new worker process: engine set-up + one 512x512, 50-step image,
timed from process start. Run it several times on one data directory: the first run is a
cold node (builds the models, writes the snapshot, fills JAX's compilation cache), the
next ones are new workers on a warm node.

    KERAS_BACKEND=jax python benchmarks/first_image.py DATA_DIR      # the worker's engine
    SDGEN_SNAPSHOT=off KERAS_BACKEND=jax python benchmarks/first_image.py DATA_DIR   # keras path
"""

import json
import os
import sys
import time

T0 = time.perf_counter()
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sdgen.engine.registry import get_engine  # noqa: E402
from sdgen.spool.request import parse_request  # noqa: E402
from sdgen.spool.split import split_request  # noqa: E402

engine = get_engine("keras-cv", sys.argv[1])
imported = time.perf_counter() - T0
t = split_request(
    "20261126-000000-aaaaaa", parse_request("prompt: a lighthouse\nimages: 1\nsteps: 50\nweights: random\nseed: 1\n")
)[0]
prep = engine.prepare(t)
t1 = time.perf_counter()
engine.generate(t, t.images)
print(
    json.dumps(
        {
            "engine": type(engine).__name__,
            "import_and_init_s": round(imported, 1),
            **prep,
            "image_s": round(time.perf_counter() - t1, 2),
            "first_image_s": round(time.perf_counter() - T0, 1),
            "keras_imported": "keras" in sys.modules,
            "compile_cache": engine.compile_cache,
        }
    ),
    flush=True,
)
