"""core.hub_guard: bitsandbytes is imported with the Hub client offline, so it cannot fetch and run a kernel
from the Hub (bitsandbytes 0.50 asks `kernels` for one at import on CPUs with AVX512-BF16)."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from saferounds.core.hub_guard import OfflineImportFinder


def test_a_named_module_executes_with_the_hub_offline_and_others_do_not(tmp_path, monkeypatch):
    from huggingface_hub import constants

    for name in ("guarded_mod", "plain_mod"):
        (tmp_path / f"{name}.py").write_text(
            "from huggingface_hub import constants\nOFFLINE_AT_IMPORT = constants.HF_HUB_OFFLINE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    finder = OfflineImportFinder({"guarded_mod"})
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    for name in ("guarded_mod", "plain_mod"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    guarded, plain = importlib.import_module("guarded_mod"), importlib.import_module("plain_mod")
    assert guarded.OFFLINE_AT_IMPORT is True and plain.OFFLINE_AT_IMPORT is False
    assert constants.HF_HUB_OFFLINE is False  # switched back after the import
    assert guarded.__file__ == str(tmp_path / "guarded_mod.py")  # the real module, found by the usual finders


PROBE = """
import json, sys
{guard}
import kernels
from huggingface_hub import constants
calls = []
real = kernels.get_kernel
def recording(*a, **k):
    calls.append(constants.HF_HUB_OFFLINE)
    return real(*a, **k)
kernels.get_kernel = recording
import bitsandbytes
print(json.dumps(calls))
"""


def _kernel_fetches(guard: bool) -> list[bool]:
    """In a fresh process: HF_HUB_OFFLINE at each kernels.get_kernel call bitsandbytes' import makes."""
    code = PROBE.format(guard="import saferounds.core" if guard else "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in __import__("os").environ.items() if k != "HF_HUB_OFFLINE"})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_bitsandbytes_asks_for_hub_kernels_only_offline():
    pytest.importorskip("kernels", reason="kernels (a transformers dependency) is not installed")
    pytest.importorskip("bitsandbytes")
    from saferounds.core.precision import native_bf16

    guarded = _kernel_fetches(guard=True)
    assert all(guarded), guarded  # every fetch bitsandbytes tried ran offline
    if native_bf16():  # on such a CPU the fetch happens, and without the guard it would go online
        assert guarded and _kernel_fetches(guard=False) == [False] * len(guarded)
