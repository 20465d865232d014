"""First-image latency of a new worker process: build + compile + one image, run twice on
the same data directory (the second run finds JAX's persistent compilation cache warm).

    KERAS_BACKEND=jax python benchmarks/first_image.py DATA_DIR
"""

import json
import os
import sys
import time

T0 = time.perf_counter()
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sdgen.engine.kerascv import KerasCVEngine  # noqa: E402
from sdgen.spool.request import parse_request  # noqa: E402
from sdgen.spool.split import split_request  # noqa: E402

imported = time.perf_counter() - T0
engine = KerasCVEngine(sys.argv[1])
t = split_request("20261126-000000-aaaaaa", parse_request(
    "prompt: a lighthouse\nimages: 1\nsteps: 50\nweights: random\nseed: 1\n"))[0]
prep = engine.prepare(t)
engine.generate(t, t.images)
print(json.dumps({"import_s": round(imported, 1), **prep, "first_image_s": round(time.perf_counter() - T0, 1),
                  "compile_cache": engine.compile_cache}), flush=True)
