"""The CPU choice for llama.cpp's extra buffer types: flags parsing and auto/on/off."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.hardware import cpu_flags, has_amx, use_extra_buffers

SAPPHIRE_RAPIDS = "fpu vme sse sse2 avx2 avx512f avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8"
EPYC = "fpu vme sse sse2 avx2 avx512f avx512_bf16 sha_ni"


def cpuinfo(tmp_path: Path, flags_line: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\n"
        f"{flags_line}\n"
        "bogomips\t: 4000.00\n\nprocessor\t: 1\nflags\t\t: fpu only_the_first_cpu_counts\n"
    )
    return path


def test_x86_flags_of_the_first_cpu(tmp_path: Path) -> None:
    flags = cpu_flags(cpuinfo(tmp_path, f"flags\t\t: {SAPPHIRE_RAPIDS}"))
    assert "amx_tile" in flags and "avx2" in flags
    assert "only_the_first_cpu_counts" not in flags
    assert has_amx(flags)


def test_arm64_features_line(tmp_path: Path) -> None:
    flags = cpu_flags(cpuinfo(tmp_path, "Features\t: fp asimd evtstrm aes sve"))
    assert flags == frozenset({"fp", "asimd", "evtstrm", "aes", "sve"})
    assert not has_amx(flags)


def test_unreadable_or_flagless_cpuinfo_means_no_flags(tmp_path: Path) -> None:
    assert cpu_flags(tmp_path / "absent") == frozenset()
    flagless = tmp_path / "flagless"
    flagless.write_text("processor\t: 0\nmodel name\t: something\n")
    assert cpu_flags(flagless) == frozenset()


@pytest.mark.parametrize(
    ("setting", "flags", "expected"),
    [
        ("auto", SAPPHIRE_RAPIDS, False),
        ("auto", EPYC, True),
        ("auto", "", True),
        ("on", SAPPHIRE_RAPIDS, True),
        ("off", EPYC, False),
    ],
)
def test_auto_turns_extra_buffers_off_only_with_amx(setting: str, flags: str, expected: bool) -> None:
    assert use_extra_buffers(setting, flags=frozenset(flags.split())) is expected  # type: ignore[arg-type]


def test_one_amx_flag_is_enough() -> None:
    assert not use_extra_buffers("auto", flags=frozenset({"avx2", "amx_int8"}))
