"""Precision is never a trap: fp32 by default, a warning where bf16 is emulated, ``auto`` measures."""

from __future__ import annotations

import pytest
from conftest import make_pool

from datacomp_plugins.cli import build_parser, main
from datacomp_plugins.core import precision

X86_NO_BF16 = ("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw\n\n"
               "processor\t: 1\nflags\t\t: fpu avx2\n")
X86_AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("prec") / "pool")
    make_pool(folder, [300, 200], seed=9)
    return folder


def _args(pool: str, tmp_path, which: str, save: str) -> list[str]:
    return ["filter", "--name", "negcliploss", "--metadata_dir", pool, "--save_path", str(tmp_path / save),
            "--fraction", "0.3", "--negcliploss_batch_size", "128", "--num_batches", "2", "--precision", which,
            "--cache_dir", str(tmp_path / "cache"), "--no_progress"]


@pytest.mark.parametrize(("text", "has"), [(X86_NO_BF16, False), (X86_AMX, True), (ARM_BF16, True)])
def test_cpu_flags_from_cpuinfo(tmp_path, text, has):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    assert precision.cpu_has_bf16(precision.cpu_flags(str(path))) is has
    assert precision.cpu_flags(str(tmp_path / "absent")) is None
    assert precision.cpu_has_bf16(set()) is False


@pytest.mark.parametrize(("text", "warned"), [(X86_NO_BF16, True), (X86_AMX, False), (None, False)])
def test_bf16_on_a_cpu_without_bf16_units_says_so_once(pool, tmp_path, monkeypatch, capsys, text, warned):
    flags = None
    if text is not None:
        (tmp_path / "cpuinfo").write_text(text)
        flags = precision.cpu_flags(str(tmp_path / "cpuinfo"))
    monkeypatch.setattr(precision, "cpu_flags", lambda path="/proc/cpuinfo": flags)
    assert main(_args(pool, tmp_path, "bf16", "bf16.npy")) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "bf16" in line and "slower" in line]
    assert len(lines) == (1 if warned else 0), err
    if warned:
        assert "avx512_bf16" in lines[0] and "fp32" in lines[0]
    assert main(_args(pool, tmp_path, "fp32", "fp32.npy")) == 0  # fp32 never warns
    assert "slower" not in capsys.readouterr().err


def test_auto_runs_the_faster_precision_and_says_which(pool, tmp_path, monkeypatch, capsys):
    """With the probe's timings fixed either way, auto picks the faster and writes exactly its uid file."""
    for fast, slow in (("bf16", "fp32"), ("fp32", "bf16")):
        timings = {fast: 0.001, slow: 0.003}
        monkeypatch.setattr(precision, "_time_product",
                            lambda dtype, device, t=timings: t["bf16" if "bfloat16" in str(dtype) else "fp32"])
        assert main(_args(pool, tmp_path, "auto", f"auto-{fast}.npy")) == 0
        out = capsys.readouterr().out
        assert f"precision auto: {fast}" in out
        assert main(_args(pool, tmp_path, fast, f"{fast}.npy")) == 0
        capsys.readouterr()
        assert (tmp_path / f"auto-{fast}.npy").read_bytes() == (tmp_path / f"{fast}.npy").read_bytes()


def test_auto_real_probe_on_this_machine(pool, tmp_path, capsys):
    choice, timings = precision.probe("cpu")
    assert set(timings) == {"fp32", "bf16"} and all(0 < t < 10 for t in timings.values())
    assert choice == min(timings, key=timings.get)
    assert main(_args(pool, tmp_path, "auto", "auto.npy")) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert "precision auto: fp32" in line or "precision auto: bf16" in line


def test_default_is_fp32_and_help_tells_the_truth():
    parser = build_parser()
    args = parser.parse_args(["filter", "--name", "negcliploss", "--metadata_dir", "m", "--save_path", "s.npy",
                              "--fraction", "0.3"])
    assert args.precision == "fp32"
    sub = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("filter"))
    text = " ".join(next(a for a in sub._actions if "--precision" in a.option_strings).help.split())
    assert "auto" in text and "slower" in text and "fp32" in text
    assert "~3x faster on CPUs" not in text
