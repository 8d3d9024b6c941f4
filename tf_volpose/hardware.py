"""What this machine computes natively, where that decides which precision to use.

bfloat16 is fast on GPUs and on x86 CPUs with ``avx512_bf16`` or ``amx_bf16``;
elsewhere oneDNN emulates it and ``mixed_bfloat16`` training or a ``bf16`` export
runs at ~0.4x fp32 (measured here with oneDNN held to AVX-512 without bf16, README).
"""

import tensorflow as tf


def cpu_has_bf16_instructions(cpuinfo_path="/proc/cpuinfo"):
    """Whether this x86 CPU computes bfloat16 natively (``avx512_bf16`` or ``amx_bf16``).

    Returns:
      True or False; None where it cannot tell (no ``cpuinfo_path``, or no x86
      ``flags`` line in it, e.g. another OS or architecture).
    """
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return None


def bf16_is_emulated():
    """True where this process would run bfloat16 on a CPU without bf16 instructions.

    False with a GPU (TensorFlow places the model there) or bf16 instructions;
    False too where the CPU cannot be inspected (nothing to warn about).
    """
    if tf.config.list_physical_devices("GPU"):
        return False
    return cpu_has_bf16_instructions() is False
