"""Stable Diffusion weight files: where they live, whether they are intact, fetching them.

One cache per user, shared by every data directory: `$KERAS_HOME/datasets` when KERAS_HOME
is set, else `<data>/cache/keras/datasets` when that holds weight files (jobs on hosts
without a shared home), else `$XDG_CACHE_HOME/sdgen/keras/datasets` (~/.cache/sdgen/...).
keras-cv's own loader re-hashes a 3.4 GB file at every
start and deletes it when offline; sdgen verifies each file once, remembers it by size and
mtime, and hands keras-cv the verified paths directly.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sdgen import defaults
from sdgen.exceptions import EngineError


@dataclass(frozen=True)
class WeightFile:
    name: str
    sha256: str
    size: int | None
    url: str


_HF_V1 = "https://huggingface.co/fchollet/stable-diffusion/resolve/main/"
_HF_V2 = "https://huggingface.co/ianstenbit/keras-sd2.1/resolve/main/"

TOKENIZER = WeightFile(
    "bpe_simple_vocab_16e6.txt.gz",
    "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a",
    1_356_917,
    "https://github.com/openai/CLIP/blob/main/clip/bpe_simple_vocab_16e6.txt.gz?raw=true",
)
DECODER = WeightFile(
    "kcv_decoder.h5",
    "ad350a65cc8bc4a80c8103367e039a3329b4231c2469a1093869a345f55b1962",
    198_180_272,
    _HF_V1 + "kcv_decoder.h5",
)

# model -> (tokenizer, text encoder, diffusion model, decoder)
FILES: dict[str, tuple[WeightFile, ...]] = {
    "sd-v1": (
        TOKENIZER,
        WeightFile(
            "kcv_encoder.h5",
            "4789e63e07c0e54d6a34a29b45ce81ece27060c499a709d556c7755b42bb0dc4",
            492_466_864,
            _HF_V1 + "kcv_encoder.h5",
        ),
        WeightFile(
            "kcv_diffusion_model.h5",
            "8799ff9763de13d7f30a683d653018e114ed24a6a819667da4f5ee10f9e805fe",
            3_439_090_152,
            _HF_V1 + "kcv_diffusion_model.h5",
        ),
        DECODER,
    ),
    "sd-v2": (
        TOKENIZER,
        WeightFile(
            "text_encoder_v2_1.h5",
            "985002e68704e1c5c3549de332218e99c5b9b745db7171d5f31fcd9a6089f25b",
            None,
            _HF_V2 + "text_encoder_v2_1.h5",
        ),
        WeightFile(
            "diffusion_model_v2_1.h5",
            "c31730e91111f98fe0e2dbde4475d381b5287ebb9672b1821796146a25c5132d",
            None,
            _HF_V2 + "diffusion_model_v2_1.h5",
        ),
        DECODER,
    ),
}

STAMPS = ".sdgen-verified.json"


def user_cache_dir() -> Path:
    """The per-user weight cache: one copy of the 4 GB for every data directory of a user
    ($XDG_CACHE_HOME/sdgen, else the platform's user cache folder)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec: a relative value is to be ignored
        base = Path(xdg)
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    else:
        base = Path.home() / ".cache"
    return base / "sdgen" / "keras" / "datasets"


def data_cache_dir(data_root: Path) -> Path:
    return Path(data_root) / "cache" / "keras" / "datasets"


def cache_dir(data_root: Path) -> Path:
    """Where the weights are: $KERAS_HOME/datasets when set; else the data directory's own
    cache when it holds weight files (ADSP jobs, whose homes are not shared, find them in
    the shared project folder); else the per-user cache, shared by every data directory
    (a second data directory must not download 4 GB again)."""
    home = os.environ.get("KERAS_HOME")
    if home:
        return Path(home) / "datasets"
    own = data_cache_dir(data_root)
    names = {wf.name for files in FILES.values() for wf in files}
    try:
        if any(entry.name in names for entry in os.scandir(own)):
            return own
    except OSError:  # no such folder (the usual case), or unreadable: not this one
        pass
    return user_cache_dir()


def _sha256(path: Path, progress: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


class WeightCache:
    def __init__(self, directory: Path):
        self.dir = Path(directory)

    def _stamps(self) -> dict:
        try:
            return json.loads((self.dir / STAMPS).read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _save_stamps(self, stamps: dict) -> None:
        tmp = self.dir / f"{STAMPS}.{os.getpid()}.part"
        tmp.write_text(json.dumps(stamps, indent=1))
        os.replace(tmp, self.dir / STAMPS)

    def status(self, wf: WeightFile, verify: bool = True) -> str:
        """'present', 'missing', 'corrupt' or (verify=False, not yet hashed) 'unverified'."""
        path = self.dir / wf.name
        try:
            st = path.stat()
        except FileNotFoundError:
            return "missing"
        if wf.size is not None and st.st_size != wf.size:
            return "corrupt"
        stamp = self._stamps().get(wf.name)
        if stamp == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": wf.sha256}:
            return "present"
        if not verify:
            return "unverified"
        if _sha256(path) != wf.sha256:
            return "corrupt"
        stamps = self._stamps()
        stamps[wf.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": wf.sha256}
        self.dir.mkdir(parents=True, exist_ok=True)
        self._save_stamps(stamps)
        return "present"

    def require(self, model: str) -> dict[str, Path]:
        """Verified paths of every file `model` needs, or a deterministic EngineError."""
        problems = []
        for wf in FILES[model]:
            state = self.status(wf)
            if state != "present":
                problems.append(f"{wf.name} is {state}")
        if problems:
            raise EngineError(
                f"{model} weights not usable in {self.dir}: {', '.join(problems)}; run "
                f"`sdgen weights fetch --model {model}` where there is internet (or copy the files "
                "there), or use `weights: random` to try without them",
                transient=False,
            )
        return {wf.name: self.dir / wf.name for wf in FILES[model]}

    def fetch(self, model: str, report: Callable[[str], None] = print) -> None:
        """Download what is missing or corrupt, with progress, verifying each file."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for wf in FILES[model]:
            if self.status(wf) == "present":
                report(f"{wf.name}: present")
                continue
            part = self.dir / f"{wf.name}.part"
            with (
                urllib.request.urlopen(wf.url, timeout=defaults.WEIGHTS_DOWNLOAD_TIMEOUT_SECONDS) as response,
                open(part, "wb") as out,
            ):
                total = int(response.headers.get("Content-Length") or 0) or wf.size or 0
                done = last = 0
                while chunk := response.read(8 << 20):
                    out.write(chunk)
                    done += len(chunk)
                    if total and done * 10 // total != last:
                        last = done * 10 // total
                        report(f"{wf.name}: {done * 100 // total}% of {total / 1e6:.0f} MB")
            if _sha256(part) != wf.sha256:
                part.unlink()
                raise EngineError(f"{wf.name}: download does not match its sha256; try again")
            os.replace(part, self.dir / wf.name)
            self.status(wf)  # stamp it
            report(f"{wf.name}: fetched and verified")


def random_tokenizer_file(directory: Path) -> Path:
    """A merges file with the shape of CLIP's (48,894 merges, so the start and end token ids
    stay 49406 and 49407 as keras-cv hard-codes), for runs with random weights."""
    path = Path(directory) / "sdgen-random-bpe.txt.gz"
    if path.exists():
        return path
    from itertools import product

    alphabet = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [chr(c) for c in range(0x100, 0x200)]
    merges = [f"{a} {b}" for a, b in product(alphabet, alphabet)][:48_894]
    assert len(merges) == 48_894
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.part")
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        f.write("#version: sdgen random\n" + "\n".join(merges) + "\n")
    os.replace(tmp, path)
    return path
