"""What this machine computes natively, where that decides which precision to use, and
what it is, for the benchmark's results.

bfloat16 is fast on GPUs and on x86 CPUs with ``avx512_bf16`` or ``amx_bf16``;
elsewhere oneDNN emulates it: ``mixed_bfloat16`` training ran at ~0.4x fp32 with oneDNN
held to AVX-512 without bf16, and at 0.14x on an AVX2-only CPU (README).
"""

import os
import platform

import tensorflow as tf

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 /proc/cpuinfo flags of native bfloat16


def _cpuinfo(cpuinfo_path):
    """The first ``model name`` (str) and ``flags`` (set) of a Linux cpuinfo file; None
    for each that it lacks (another OS or architecture: ARM's cpuinfo has ``Features``)."""
    model = flags = None
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key == "flags" and flags is None:
                    flags = set(value.split())
                if model is not None and flags is not None:
                    break
    except OSError:
        pass
    return model, flags


def cpu_has_bf16_instructions(cpuinfo_path="/proc/cpuinfo"):
    """Whether this x86 CPU computes bfloat16 natively (``avx512_bf16`` or ``amx_bf16``).

    Returns:
      True or False; None where it cannot tell (no ``cpuinfo_path``, or no x86
      ``flags`` line in it, e.g. another OS or architecture).
    """
    _, flags = _cpuinfo(cpuinfo_path)
    return None if flags is None else bool(flags & set(BF16_CPU_FLAGS))


def describe_host(cpuinfo_path="/proc/cpuinfo"):
    """The machine a measurement ran on, for benchmark results: speeds differ several-fold
    between hosts, so a number means little without it.

    Returns:
      ``{"cpu": model name (from cpuinfo, else ``platform.processor()`` or
      ``platform.machine()``), "cores": os.cpu_count(), "bf16_instructions": the
      BF16_CPU_FLAGS it has (a list; None where it cannot tell), "gpus": number of
      visible GPUs, "tensorflow": version}``.
    """
    model, flags = _cpuinfo(cpuinfo_path)
    return {"cpu": model or platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "bf16_instructions": None if flags is None else
            [flag for flag in BF16_CPU_FLAGS if flag in flags],
            "gpus": len(tf.config.list_physical_devices("GPU")),
            "tensorflow": tf.__version__}


# why :func:`bf16_is_emulated` is true, for the tools' notes
BF16_EMULATED_BECAUSE = "no GPU and no avx512_bf16/amx_bf16 instructions on this CPU"


def bf16_is_emulated():
    """True where this process would run bfloat16 on a CPU without bf16 instructions
    (:data:`BF16_EMULATED_BECAUSE`).

    False with a GPU (TensorFlow places the model there) or bf16 instructions;
    False too where the CPU cannot be inspected (nothing to warn about).
    """
    if tf.config.list_physical_devices("GPU"):
        return False
    return cpu_has_bf16_instructions() is False
