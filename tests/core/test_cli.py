"""The `colu` command line: --version, help for every option, missing extras, bench's option checks,
and the package's lazy submodules (`colu.align` after a bare `import colu`, `colu.convert` as module and function)."""

import argparse
import importlib
import importlib.util
import inspect
import json
import os
import subprocess
import sys

import pytest
import torch

import colu
from colu.tools import bench, cli
from colu.convert import ConversionReport


def _python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


# --- colu --version ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_the_package_version(flag, capsys):
    assert cli.main([flag]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"colu {colu.__version__}\n" == "colu 0.1.0\n"
    assert captured.err == ""


def test_help_mentions_version(capsys):
    assert cli.main(["--help"]) == 0
    assert "--version" in capsys.readouterr().out


# --- every option of every command has help text ------------------------------------------------------------------


class _ParserCaptured(Exception):
    def __init__(self, parser):
        super().__init__("parser captured")
        self.parser = parser


@pytest.mark.parametrize("name", list(cli.commands()))
def test_every_option_has_help(name, monkeypatch):
    missing = cli.missing_modules(name)
    if missing:
        pytest.skip(f"colu {name} needs {', '.join(missing)}")

    def capture(parser, *args, **kwargs):
        raise _ParserCaptured(parser)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    with pytest.raises(_ParserCaptured) as caught:
        cli.main([name, "--help"])
    parser = caught.value.parser
    undocumented = [
        "/".join(action.option_strings) or action.dest
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction) and (not action.help or action.help == argparse.SUPPRESS)
    ]
    assert undocumented == [], f"colu {name}: options without help text: {undocumented}"


# --- commands that need extras refuse to start without them -------------------------------------------------------


@pytest.mark.parametrize("options", [[], ["--from", "runs/x"]])
def test_every_command_declares_what_it_needs(options):
    for name, command in cli.commands().items():
        extra, modules = command.requirements(options)
        assert (extra is None) == (not modules), name


def test_the_suite_adds_its_commands_and_each_experiment_its_own():
    """The library lists bench and convert-check itself; everything else comes from the colu.commands entry point,
    the experiments' own commands declared by the experiment that owns them."""
    from colu_lab.registry import EXPERIMENTS

    assert list(cli.LIBRARY_COMMANDS) == ["bench", "convert-check"]
    table = cli.commands()
    assert {"run", "sweep", "report", "align", "demo", "plot", "sample", "palettes", "finetune-diffusers"} <= set(table)
    assert set(EXPERIMENTS["gpt-shakespeare"].commands) == {"sample"}
    assert set(EXPERIMENTS["diffusion-unet"].commands) == {"palettes"}
    for name, command in table.items():
        module, function = command.target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name


def _pretend_missing(monkeypatch, *names):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name.split(".")[0] in names else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    imported = []
    real_import_module = importlib.import_module

    def import_module(name, *args, **kwargs):
        imported.append(name)
        return real_import_module(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", import_module)
    return imported


@pytest.mark.parametrize(
    "argv, line",
    [
        (["run", "hemisphere", "--quick"],
         "colu run: needs matplotlib, yaml (not installed): pip install 'colu[experiments]'"),
        (["sweep", "hemisphere"], "colu sweep: needs matplotlib, yaml (not installed): pip install 'colu[experiments]'"),
        (["report", "runs/x"], "colu report: needs matplotlib, yaml (not installed): pip install 'colu[experiments]'"),
        (["demo"], "colu demo: needs matplotlib, yaml (not installed): pip install 'colu[experiments]'"),
        (["align", "mnist-mlp"], "colu align: needs matplotlib, yaml (not installed): pip install 'colu[experiments]'"),
        (["plot", "--out", "never-written"], "colu plot: needs matplotlib (not installed): pip install 'colu[tools]'"),
    ],
)
def test_missing_extra_stops_before_the_command_is_imported(argv, line, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    cli.commands()  # the command table itself is loaded (entry points) before anything is refused
    imported = _pretend_missing(monkeypatch, "matplotlib", "yaml")
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == line + "\n" and captured.out == ""
    assert imported == [], f"imported {imported} before refusing"
    assert list(tmp_path.iterdir()) == []


def test_core_only_commands_need_nothing_beyond_torch(monkeypatch):
    from colu_lab.cli import EXPERIMENTS_NEEDS

    _pretend_missing(monkeypatch, *EXPERIMENTS_NEEDS)
    assert cli.missing_modules("bench") == [] and cli.missing_modules("convert-check") == []
    assert cli.missing_modules("run") == list(EXPERIMENTS_NEEDS)


# a core-only install, as far as Python can tell: the extras' modules cannot be imported
_WITHOUT_EXTRAS = (
    "import sys\n"
    "for name in ('scipy', 'matplotlib', 'tqdm', 'yaml', 'sklearn'):\n"
    "    sys.modules[name] = None\n"
    "from colu.tools import cli\n"
)


@pytest.mark.slow
def test_core_only_install_refuses_run_and_runs_convert_check():
    refused = _python(_WITHOUT_EXTRAS + (
        "rc = cli.main(['run', 'hemisphere', '--quick'])\n"
        "print(rc, 'colu_lab.commands.train' in sys.modules)\n"
    ))
    assert refused.returncode == 0, refused.stderr
    assert refused.stdout.split() == ["2", "False"]
    assert refused.stderr.splitlines() == [
        "colu run: needs scipy, matplotlib, tqdm, yaml, sklearn (not installed): pip install 'colu[experiments]'"
    ]
    ran = _python(_WITHOUT_EXTRAS + "sys.exit(cli.main(['convert-check', '--steps', '5', '--finetune-steps', '6']))")
    assert ran.returncode == 0, ran.stderr
    assert "after fine-tuning" in ran.stdout


# --- lazy submodules and colu.convert ------------------------------------------------------------------------------


@pytest.mark.slow
def test_submodules_load_on_first_use():
    code = (
        "import sys, colu\n"
        "assert 'colu.align' not in sys.modules and not any(m.startswith('colu_lab') for m in sys.modules)\n"
        "colu.align.match_weights; colu.symmetry.group_element; colu.tools.bench.main; colu.ops.dispatch\n"
        "print(colu.align.__name__, any(m.startswith('colu_lab') for m in sys.modules))\n"
        "print(all(name in dir(colu) for name in ('align', 'symmetry', 'tools', 'ops')))\n"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["colu.align", "False", "True"]


def test_unknown_attribute_still_raises():
    with pytest.raises(AttributeError, match="no_such_thing"):
        colu.no_such_thing


def _mlp():
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def test_convert_is_the_module_and_callable_as_the_function():
    import colu.convert as module

    assert module is colu.convert is sys.modules["colu.convert"]
    assert colu.convert.ConversionReport is ConversionReport
    assert isinstance(module.convert(_mlp(), cone_dim=4), ConversionReport)
    report = colu.convert(_mlp(), cone_dim=4)
    assert isinstance(report, ConversionReport) and len(report.replaced) == 1
    assert inspect.signature(colu.convert) == inspect.signature(module.convert)
    with pytest.raises(TypeError):
        colu.convert(_mlp(), 4)  # everything after the model is keyword-only, as in the function


def test_from_colu_import_convert_still_converts():
    from colu import convert

    assert isinstance(convert(_mlp(), cone_dim=4), ConversionReport)


# --- colu bench's option checks -------------------------------------------------------------------------------------

_TINY = ["--quick", "--no-model", "--shapes", "4x20", "--repeats", "1", "--warmup", "0"]


def _bench_error(argv, capsys):
    assert bench.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "", "an option error must stop before any timing"
    assert len(captured.err.splitlines()) == 1, captured.err
    return captured.err


@pytest.mark.parametrize("value, shown", [("1", "S=1"), ("0", "S=0"), ("4,-2", "S=-2"), ("x", "'x'"), ("2.5", "'2.5'")])
def test_bench_rejects_cone_dims_below_two_or_not_integers(value, shown, capsys):
    err = _bench_error(_TINY + ["--cone-dims", value], capsys)
    assert err.startswith("colu bench: --cone-dims") and shown in err and "S >= 2" in err


def test_bench_rejects_an_unknown_backend(capsys):
    err = _bench_error(_TINY + ["--backend", "fast"], capsys)
    assert "'fast'" in err and "auto, closed_form, cpu, triton" in err


def test_bench_triton_without_triton_is_a_one_line_error(monkeypatch, capsys):
    from colu.ops import dispatch

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(dispatch, "_triton_installed", lambda: False)
    assert "triton is not installed" in _bench_error(_TINY + ["--backend", "triton"], capsys)


def test_bench_triton_on_a_cpu_device_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    err = _bench_error(_TINY + ["--backend", "triton", "--device", "cpu"], capsys)
    assert "--backend triton" in err and ("CUDA" in err or "not installed" in err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_bench_cuda_device_without_cuda_is_a_one_line_error(capsys):
    assert "CUDA is not available" in _bench_error(_TINY + ["--device", "cuda"], capsys)


def test_bench_reports_and_records_dropped_rows(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(_TINY + ["--cone-dims", "4,3", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert {r["activation"] for r in data["rows"]} >= {"colu S=4 hard", "rcolu S=4 soft"}
    assert not any("S=3" in r["activation"] for r in data["rows"])
    (dropped,) = data["dropped"]
    assert dropped["where"] == "shape 4x20" and dropped["cone_dim"] == 3
    assert dropped["reason"] == "20 channels are not a multiple of S=3"
    assert "colu S=3 hard" in dropped["activations"]
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("# dropped")]
    assert len(printed) == 1 and "S=3" in printed[0] and printed[0].endswith(dropped["reason"])


def test_bench_drops_the_model_rows_when_no_cone_dim_fits_the_mlp(capsys):
    args = bench._parse(["--quick", "--cone-dims", "3"])
    args.cone_dims = [3]  # main() parses the list; here the rows are built directly
    dropped = []
    rows = bench._model_rows(args, torch.device("cpu"), torch.float32, bench._Timer(torch.device("cpu")), dropped)
    assert rows == []
    assert len(dropped) == 1 and "not a multiple of any of S=3" in dropped[0]["reason"]


def test_bench_json_gets_the_umask_mode_not_mkstemps_0600(tmp_path, monkeypatch):
    mask = os.umask(0o022)
    os.umask(mask)
    out = tmp_path / "bench.json"
    assert bench.main(_TINY + ["--json", str(out)]) == 0
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]
    assert json.loads(out.read_text())["dropped"] == []


def test_plot_from_a_run_folder_needs_the_experiments_extra(monkeypatch, capsys):
    """`colu plot` draws the explanatory figures with matplotlib alone; `colu plot --from DIR` loads the
    run's experiment and data, so it asks for the experiments extra before importing anything."""
    cli.commands()
    _pretend_missing(monkeypatch, "sklearn")
    assert cli.missing_modules("plot") == []
    assert cli.missing_modules("plot", ["--from", "runs/x"]) == ["sklearn"]
    assert cli.missing_modules("plot", ["--from=runs/x"]) == ["sklearn"]
    assert cli.main(["plot", "--from", "runs/x"]) == 2
    assert "pip install 'colu[experiments]'" in capsys.readouterr().err
