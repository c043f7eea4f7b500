"""One ABI: colu_abi.h (the C side) and colu.ops.abi (the Python side) state the same version, enum values,
argument slots and configuration fields, and the callers use them."""

import ctypes
import re
import subprocess
from pathlib import Path

import pytest
import torch

from colu import spec
from colu.ops import abi, cpu

HEADER = Path(cpu.SOURCE).with_name("colu_abi.h")
C_TYPES = {"int64_t": "int64", "double": "double"}


def _text() -> str:
    # comments out, so that a number or a name in a comment is never read as a value
    text = HEADER.read_text()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def _enum(name: str) -> dict[str, int]:
    match = re.search(rf"\benum\s+{name}\s*\{{(.*?)\}}", _text(), flags=re.S)
    assert match, f"colu_abi.h has no enum {name}"
    values = {}
    for item in filter(None, (part.strip() for part in match.group(1).split(","))):
        entry = re.fullmatch(r"(\w+)\s*=\s*(\d+)", item)
        assert entry, f"enum {name}: every value is written out as NAME = number, got {item!r}"
        values[entry.group(1)] = int(entry.group(2))
    return values


def _config_fields() -> list[tuple[str, str]]:
    match = re.search(r"typedef\s+struct\s*\{(.*?)\}\s*colu_cfg\s*;", _text(), flags=re.S)
    assert match, "colu_abi.h has no colu_cfg"
    fields = []
    for decl in filter(None, (d.strip() for d in match.group(1).split(";"))):
        ctype, names = decl.split(None, 1)
        fields += [(n.strip(), C_TYPES[ctype]) for n in names.split(",")]
    return fields


def test_version():
    (version,) = re.findall(r"#define\s+COLU_ABI_VERSION\s+(\d+)", _text())
    assert int(version) == abi.VERSION == cpu.ABI_VERSION


@pytest.mark.parametrize(
    "enum,prefix,values",
    [
        ("colu_kind", "COLU_KIND_", abi.KINDS),
        ("colu_scaling", "COLU_SCALING_", abi.SCALINGS),
        ("colu_act", "COLU_ACT_", abi.AXIS_ACTIVATIONS),
    ],
)
def test_enum_values(enum, prefix, values):
    assert _enum(enum) == {prefix + name.upper(): value for name, value in values.items()}


def test_argument_slots():
    expected = {f"COLU_ARG_{name.upper()}": i for i, name in enumerate(abi.ARG_SLOTS)}
    assert _enum("colu_arg") == {**expected, "COLU_ARG_COUNT": abi.ARG_COUNT}
    for name in abi.ARG_SLOTS:
        assert getattr(abi, f"ARG_{name.upper()}") == abi.ARG_SLOTS.index(name)
    assert (cpu.ARG_X, cpu.ARG_OUT, cpu.ARG_THREADS) == (abi.ARG_X, abi.ARG_OUT, abi.ARG_THREADS)


def test_config_fields():
    assert _config_fields() == list(abi.CONFIG_FIELDS)
    sizes = {"int64": 8, "double": 8}
    assert [(name, ctypes.sizeof(ctype)) for name, ctype in cpu._Config._fields_] == [
        (name, sizes[ctype]) for name, ctype in abi.CONFIG_FIELDS
    ]


def test_enum_names_are_the_public_choices():
    assert tuple(abi.SCALINGS) == tuple(spec.KERNEL_SCALINGS)
    assert tuple(abi.AXIS_ACTIVATIONS) == tuple(spec.AXIS_ACTIVATIONS)


def test_config_is_filled_from_the_abi():
    s = spec.ConeSpec.resolve(12, 4, None, kind="rcolu")
    cfg = cpu.config(s, "firm", 1e-7, "silu")
    assert (cfg.kind, cfg.scaling, cfg.act) == (abi.KINDS["rcolu"], abi.SCALINGS["firm"], abi.AXIS_ACTIVATIONS["silu"])
    assert (cfg.G, cfg.S, cfg.eps) == (3, 4, 1e-7)


def _slots(block) -> dict[str, int]:
    return dict(zip(abi.ARG_SLOTS, block))


@pytest.mark.parametrize("dtype,flag", [(torch.float32, 0), (torch.float64, 1), (torch.float16, 0), (torch.bfloat16, 1)])
def test_python_fills_the_named_slots(dtype, flag):
    """forward_args and run write each value into the slot of its name."""
    x, g, out = torch.zeros(3, 8, dtype=dtype), torch.zeros(3, 8, dtype=dtype), torch.zeros(3, 8, dtype=dtype)
    planned = _slots(cpu.forward_args(x, 3, 8, 1, 12345))
    assert planned == dict(backward=0, dtype=flag, x=0, grad=0, out=0, outer=3, c=8, inner=1, cfg=12345, threads=1)
    seen = []

    def record(address):
        seen.append(_slots((ctypes.c_int64 * abi.ARG_COUNT).from_address(address)))
        return 1

    cfg = cpu.config(spec.ConeSpec.resolve(8, 4, None), "hard", 1e-7, "identity")
    cpu.run({"run": record, "run_half": record}, 1, x, g, out, 3, 8, 1, cfg)
    assert seen == [
        dict(backward=1, dtype=flag, x=x.data_ptr(), grad=g.data_ptr(), out=out.data_ptr(), outer=3, c=8, inner=1,
             cfg=ctypes.addressof(cfg), threads=torch.get_num_threads())
    ]


def test_c_sources_use_the_names():
    """The kernels compare and index with the header's names, not with the numbers."""
    for path in [cpu.SOURCE, cpu.ENTRY_SOURCE, *cpu.headers()]:
        code = re.sub(r"/\*.*?\*/", " ", path.read_text(), flags=re.S)
        assert not re.search(r"\b(kind|scaling|sc|act)\s*[!=]=\s*\d", code), f"{path.name} compares an enum to a number"
    for path in (cpu.SOURCE, cpu.ENTRY_SOURCE):  # where the argument block (a) is read and written
        code = path.read_text()
        assert '#include "colu_abi.h"' in code
        assert not re.search(r"\ba\[\d+\]", code), f"{path.name} indexes the argument block by number"


PROBE = """
#include <stddef.h>
#include <stdio.h>
#include "colu_abi.h"
#define P(name) printf("%s %lld\\n", #name, (long long)(name));
#define F(field) printf("colu_cfg.%s %zu\\n", #field, offsetof(colu_cfg, field));
int main(void) {
    P(COLU_ABI_VERSION) VALUES
    FIELDS
    P(sizeof(colu_cfg))
    return 0;
}
"""


def test_compiler_reads_the_header_as_abi_says(tmp_path):
    """The values as the C compiler sees them (not as the parser above reads them), and colu_cfg's layout
    as ctypes lays out cpu._Config."""
    cc = cpu.compiler()
    if cc is None:
        pytest.skip("no C compiler")
    names = [f"COLU_KIND_{k.upper()}" for k in abi.KINDS] + [f"COLU_SCALING_{k.upper()}" for k in abi.SCALINGS]
    names += [f"COLU_ACT_{k.upper()}" for k in abi.AXIS_ACTIVATIONS] + [f"COLU_ARG_{k.upper()}" for k in abi.ARG_SLOTS]
    names.append("COLU_ARG_COUNT")
    fields = [name for name, _ in abi.CONFIG_FIELDS]
    src = tmp_path / "probe.c"
    src.write_text(PROBE.replace("VALUES", " ".join(f"P({n})" for n in names)).replace("FIELDS", " ".join(f"F({f})" for f in fields)))
    exe = tmp_path / "probe"
    proc = subprocess.run([cc, f"-I{HEADER.parent}", str(src), "-o", str(exe)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    seen = dict(line.rsplit(" ", 1) for line in subprocess.run([str(exe)], capture_output=True, text=True).stdout.splitlines())
    expected = {"COLU_ABI_VERSION": abi.VERSION, "COLU_ARG_COUNT": abi.ARG_COUNT}
    expected.update({f"COLU_KIND_{k.upper()}": v for k, v in abi.KINDS.items()})
    expected.update({f"COLU_SCALING_{k.upper()}": v for k, v in abi.SCALINGS.items()})
    expected.update({f"COLU_ACT_{k.upper()}": v for k, v in abi.AXIS_ACTIVATIONS.items()})
    expected.update({f"COLU_ARG_{k.upper()}": i for i, k in enumerate(abi.ARG_SLOTS)})
    expected.update({f"colu_cfg.{f}": getattr(cpu._Config, f).offset for f in fields})
    expected["sizeof(colu_cfg)"] = ctypes.sizeof(cpu._Config)
    assert {k: int(v) for k, v in seen.items()} == expected


def test_triton_kernels_take_the_same_values():
    pytest.importorskip("triton")
    from colu.ops import triton_kernels

    assert triton_kernels._SCALING == abi.SCALINGS and triton_kernels._ACT == abi.AXIS_ACTIVATIONS
