"""Which precision a policy generates in (`model.generation_dtype`): the detection lives in core.precision,
where eval's answer cache reads it too; these names stay importable from here."""
from saferounds.core.precision import BF16_CPU_FLAGS, _cpu_bf16, cpu_flags, generation_dtype, native_bf16

__all__ = ["BF16_CPU_FLAGS", "cpu_flags", "generation_dtype", "native_bf16", "_cpu_bf16"]
