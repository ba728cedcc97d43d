"""The neutral base layer: errors, file I/O, record types, version names, small maths, accelerator
placement. No domain logic; imports nothing of reward_models, sampling, eval or pipeline."""

from saferounds.core.hub_guard import install as _install_hub_guard

_install_hub_guard()  # bitsandbytes must not fetch kernels from the Hub when it is imported (core/hub_guard.py)
