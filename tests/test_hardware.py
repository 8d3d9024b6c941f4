import tensorflow as tf

from tf_volpose import hardware


def test_cpu_bf16_check_reads_the_cpu_flags(tmp_path):
    def cpuinfo(flags):
        path = tmp_path / f"cpuinfo-{len(flags)}"
        path.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\n"
                        f"flags\t\t: fpu sse2 avx2 {flags}\nbogomips\t: 5192.24\n")
        return str(path)
    assert hardware.cpu_has_bf16_instructions(cpuinfo("avx512f avx512_bf16 avx512_vnni")) is True
    assert hardware.cpu_has_bf16_instructions(cpuinfo("amx_tile amx_bf16")) is True
    assert hardware.cpu_has_bf16_instructions(cpuinfo("avx512f avx512_vnni")) is False
    assert hardware.cpu_has_bf16_instructions(cpuinfo("")) is False
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert hardware.cpu_has_bf16_instructions(str(tmp_path / "arm")) is None  # not x86: unknown
    assert hardware.cpu_has_bf16_instructions(str(tmp_path / "missing")) is None


def test_bf16_is_emulated_only_on_a_cpu_known_to_lack_the_instructions(monkeypatch):
    def machine(gpus, cpu_has_bf16):
        monkeypatch.setattr(tf.config, "list_physical_devices",
                            lambda kind=None: ["GPU:0"] * gpus if kind == "GPU" else [])
        monkeypatch.setattr(hardware, "cpu_has_bf16_instructions", lambda: cpu_has_bf16)
        return hardware.bf16_is_emulated()
    assert machine(gpus=0, cpu_has_bf16=False) is True
    assert machine(gpus=0, cpu_has_bf16=True) is False
    assert machine(gpus=0, cpu_has_bf16=None) is False  # cannot tell: no warning
    assert machine(gpus=1, cpu_has_bf16=False) is False  # the model runs on the GPU


def test_describe_host_names_the_cpu_and_its_bf16_instructions(tmp_path):
    amx = tmp_path / "amx"
    amx.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n"
                   "model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\n"
                   "flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n"
                   "processor\t: 1\nmodel name\t: another\nflags\t\t: fpu\n")
    host = hardware.describe_host(str(amx))
    assert host["cpu"] == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"  # the first CPU's
    assert host["bf16_instructions"] == ["avx512_bf16", "amx_bf16"]
    assert host["tensorflow"] == tf.__version__
    assert host["gpus"] == len(tf.config.list_physical_devices("GPU"))
    zen3 = tmp_path / "zen3"
    zen3.write_text("model name\t: AMD EPYC 7B13\nflags\t\t: fpu avx2 avx512f\n")
    assert hardware.describe_host(str(zen3))["bf16_instructions"] == []
    # no cpuinfo (another OS): the CPU from Python's platform module, bf16 unknown
    elsewhere = hardware.describe_host(str(tmp_path / "missing"))
    assert elsewhere["bf16_instructions"] is None
    assert elsewhere["cpu"] and elsewhere["cores"] >= 1
