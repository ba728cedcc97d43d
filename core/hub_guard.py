"""Imports that must not reach the Hugging Face Hub.

bitsandbytes 0.50, imported on a CPU with AVX512-BF16 (peft and transformers import it whenever it is
installed), calls `kernels.get_kernel("kernels-community/quantization-bitsandbytes")` while it loads: a Hub API
call to check the publisher, then a download of compiled code into the process. saferounds does not reach a hub
at run time and runs no code it did not ship, so that import runs with the Hub client switched to offline mode:
`kernels` finds nothing in its local cache and bitsandbytes keeps its own CPU kernels (its fallback). The switch
is on only while that module executes; a model the user names by hub id still downloads as usual.
Torch-free: the finder is installed when `saferounds.core` is first imported, before any model code runs.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
from contextlib import contextmanager

OFFLINE_IMPORTS = frozenset({"bitsandbytes"})
QUIET_LOGGERS = ("bitsandbytes", "kernels")  # their "failed to load the hub kernel" warnings are this guard's doing


@contextmanager
def hub_offline():
    """huggingface_hub in offline mode (requests raise, downloads read the local cache only) for the block."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    before = constants.HF_HUB_OFFLINE
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    constants.HF_HUB_OFFLINE = True
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


class _OfflineLoader(importlib.abc.Loader):
    """The module's own loader, run inside hub_offline()."""

    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        with hub_offline():
            self.inner.exec_module(module)


class OfflineImportFinder(importlib.abc.MetaPathFinder):
    """Finds the named top-level modules as the other finders would, and loads them offline."""

    def __init__(self, names=OFFLINE_IMPORTS):
        self.names = frozenset(names)

    def find_spec(self, name, path=None, target=None):
        if name not in self.names:
            return None
        others = [f for f in sys.meta_path if f is not self and hasattr(f, "find_spec")]
        for finder in others:
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _OfflineLoader(spec.loader)
                return spec
        return None


def install() -> None:
    """Put the finder first on sys.meta_path, once per process."""
    if not any(isinstance(f, OfflineImportFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, OfflineImportFinder())
