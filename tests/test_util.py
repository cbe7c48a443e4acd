"""Small shared helpers (nas.util): the machine's CPU features read from /proc/cpuinfo."""

from __future__ import annotations

from nas.util import cpu_features, describe_cpu, parse_cpuinfo

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni vaes vpclmulqdq
processor\t: 1
model name\t: AMD EPYC
flags\t\t: fpu avx2
"""
SAPPHIRE = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: avx avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
ALDER = """model name\t: 12th Gen Intel(R) Core(TM) i7-1265U
flags\t\t: avx avx2 avx_vnni
"""


def test_cpu_features_are_read_from_the_flags():
    assert parse_cpuinfo(EPYC) == {"cpu": "AMD EPYC", "avx2": True, "avx512": False, "vnni": False, "bf16": False,
                                   "amx": False}
    assert parse_cpuinfo(SAPPHIRE) == {"cpu": "Intel(R) Xeon(R) Platinum 8480+", "avx2": True, "avx512": True,
                                       "vnni": True, "bf16": True, "amx": True}
    assert parse_cpuinfo(ALDER)["vnni"] is True and parse_cpuinfo(ALDER)["avx512"] is False  # AVX-VNNI, 256-bit
    unknown = parse_cpuinfo("Processor\t: ARMv8\nFeatures\t: fp asimd\n")  # no x86 flags line: not known
    assert unknown["cpu"] is None and all(unknown[f] is None for f in ("avx2", "avx512", "vnni", "bf16", "amx"))


def test_the_machine_line_names_each_feature():
    info = {**parse_cpuinfo(EPYC), "cores": 2, "arch": "x86_64"}
    assert describe_cpu(info) == "AMD EPYC, 2 cores (x86_64): AVX2 yes, AVX-512 no, VNNI no, bf16 no, AMX no"
    here = cpu_features()  # this machine: every feature known on x86-64 Linux
    assert here["cores"] >= 1 and set(here) >= {"cpu", "avx2", "avx512", "vnni", "bf16", "amx", "arch"}
    assert describe_cpu(here).count(" yes") + describe_cpu(here).count(" no") + describe_cpu(here).count(
        " unknown") == 5
