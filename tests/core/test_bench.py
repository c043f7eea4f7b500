"""`colu bench --quick --json` runs and writes the documented columns (no timing assertions)."""

import json
import os

import pytest
import torch

from colu.tools import bench, cli

COLUMNS = {"shape", "activation", "fwd_ms", "fwdbwd_ms", "fwd_vs_relu", "fwdbwd_vs_relu", "fwd_vs_silu",
           "fwdbwd_vs_silu", "fwd_gbs", "fwdbwd_gbs", "saved_bytes"}


def test_bench_quick_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--quick", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    names = [r["activation"] for r in data["rows"]]
    assert {"relu", "silu", "gelu", "colu S=4 hard", "rcolu S=4 soft"} <= set(names)
    for row in data["rows"]:
        assert COLUMNS <= set(row), set(row) ^ COLUMNS
        assert row["fwd_ms"] > 0 and row["fwdbwd_ms"] > 0
        # every activation here keeps exactly its input for backward
        assert row["saved_bytes"] == 64 * 48 * 4
    relu = next(r for r in data["rows"] if r["activation"] == "relu")
    assert relu["fwd_vs_relu"] == 1.0
    assert {r["activation"] for r in data["model_rows"]} == {"relu", "colu S=4 hard"}
    assert "colu S=4 hard" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"], "temporary file left behind"


def test_bench_rejects_bad_shape(capsys):
    assert bench.main(["--shapes", "12by4"]) == 2
    captured = capsys.readouterr()
    assert "12by4" in captured.err and captured.out == ""


def test_bench_backend_reaches_the_model_rows(monkeypatch, capsys):
    from colu.ops import dispatch

    monkeypatch.delenv("COLU_BACKEND", raising=False)
    before = dispatch.calls["closed_form"]
    args = bench._parse(["--quick", "--backend", "closed_form"])
    args.cone_dims = [4]  # main() parses the list; here the rows are built directly
    rows = bench._model_rows(args, torch.device("cpu"), torch.float32, bench._Timer(torch.device("cpu")))
    assert {r["activation"] for r in rows} == {"relu", "colu S=4 hard"}
    assert dispatch.calls["closed_form"] > before  # the MLP's CoLU ran the forced backend
    assert "COLU_BACKEND" not in os.environ  # and the environment is as it was


def test_bench_default_shapes_include_a_memory_bound_one_on_cuda():
    assert bench._parse(["--device", "cpu"]).shapes == "4096x1024,64x512"
    assert bench._parse(["--device", "cuda"]).shapes == "4096x1024,64x512,32768x8192"
    assert bench._parse(["--device", "cuda", "--shapes", "8x8"]).shapes == "8x8"


def test_interleaved_shuffles_the_order_of_every_repeat():
    # a fixed order lets a row inherit its predecessor's state; each repeat runs every case once, in a new order
    seen = []
    cases = {name: (lambda name=name: seen.append(name)) for name in "abcde"}
    medians = bench._interleaved(cases, timer=lambda fn: (fn(), 1.0)[1], repeats=12, warmup=2)
    assert medians == dict.fromkeys("abcde", 1.0)
    rounds = [tuple(seen[i : i + 5]) for i in range(10, len(seen), 5)]  # after 5 cases x 2 warm-ups
    assert len(rounds) == 12 and all(sorted(r) == list("abcde") for r in rounds)
    assert len(set(rounds)) > 1
    assert len({r[0] for r in rounds}) > 1, "the same case led every repeat"


def test_bench_models_quick_rows(tmp_path, capsys):
    """--models adds a training-step row per model and activation, each against its own baseline: ReLU for the
    ResNet (NCHW and channels_last), the GPT and the UNet's hard CoLU, SiLU for the UNet's soft CoLU."""
    pytest.importorskip("diffusers", reason="the UNet row needs diffusers (colu[experiments])")
    out = tmp_path / "bench.json"
    args = ["bench", "--quick", "--models", "--no-model", "--shapes", "8x8", "--json", str(out)]
    assert cli.main(args) == 0
    rows = json.loads(out.read_text())["model_rows"]
    by_model = {}
    for r in rows:
        by_model.setdefault(r["model"], {})[r["activation"]] = r
        assert r["step_ms"] > 0
    names = sorted(by_model)
    assert [n.split()[0] for n in names] == ["GPT", "ResNet-8", "ResNet-8", "UNet2DModel"], names
    assert any("channels_last" in n for n in names) and any("NCHW" in n for n in names)
    for name, acts in by_model.items():
        expected = {"relu", "silu", "colu S=4 hard", "colu S=4 soft"} if name.startswith("UNet") else {"relu", "colu S=4 hard"}
        assert set(acts) == expected, (name, set(acts))
        for act, r in acts.items():
            assert r["baseline"] == ("silu" if act in ("silu", "colu S=4 soft") else "relu")
            if act in ("relu", "silu"):
                assert r["ratio"] == 1.0
    assert "x1.000 vs SiLU" in capsys.readouterr().out


def test_bench_models_convert_every_unet_activation():
    """The UNet rows time a model whose every activation module is CoLU (none left as ReLU/SiLU)."""
    diffusers = pytest.importorskip("diffusers", reason="the UNet row needs diffusers (colu[experiments])")
    import colu

    seen = []
    real = colu.convert

    def spy(model, **kw):
        report = real(model, **kw)
        seen.append((model, report))
        return report

    import unittest.mock

    with unittest.mock.patch.object(colu, "convert", spy):
        args = bench._parse(["--quick", "--repeats", "1", "--warmup", "0"])
        bench._unet_rows(bench.QUICK_UNET, 4, args, torch.device("cpu"), torch.float32,
                         bench._Timer(torch.device("cpu")), [])
    assert len(seen) == 2
    for model, report in seen:
        assert isinstance(model, diffusers.UNet2DModel) and report.replaced and not report.skipped
        left = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.ReLU, torch.nn.SiLU))]
        assert not left, left


def test_bench_layouts_and_axis_activations_add_named_rows(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "--quick", "--no-model", "--scalings", "soft", "--layouts", "grouped,axes_first",
            "--axis-activations", "identity,silu", "--json", str(out)]
    assert cli.main(args) == 0
    names = {r["activation"] for r in json.loads(out.read_text())["rows"]}
    assert {"colu S=4 soft", "colu S=4 soft axes_first", "colu S=4 soft silu", "colu S=4 soft axes_first silu",
            "rcolu S=4 soft", "rcolu S=4 soft silu"} <= names
    assert not any("rcolu" in n and "axes_first" in n for n in names)  # RCoLU has no layout
    assert bench.main(["--quick", "--axis-activations", "tanh"]) == 2
    assert "'tanh'" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_compile_quick_rows(tmp_path, capsys):
    """--compile times the two blocks under torch.compile: per block, the baseline eager and compiled, CoLU as
    dispatch chooses and with the fusible backend, each against the compiled baseline (--quick: ReLU's group
    only; SiLU's is built the same way); no tensor rows."""
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--quick", "--compile", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["rows"] == [] and result["compiled"]
    by_block = {}
    for r in result["model_rows"]:
        by_block.setdefault(r["model"], {})[r["activation"]] = r
        assert r["step_ms"] > 0
    assert sorted(name.split()[0] for name in by_block) == ["Conv", "MLP"], sorted(by_block)
    for acts in by_block.values():
        assert set(acts) == {"relu (eager)", "relu", "colu S=4 hard", "colu S=4 hard fusible"}
        assert acts["relu"]["ratio"] == 1.0
        assert all(r["baseline"] == "relu" for r in acts.values())
    assert "vs ReLU compiled" in capsys.readouterr().out
