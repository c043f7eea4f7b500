"""colu palettes: residuals under permutations and under the activation's group, on built and on trained UNets."""

import json

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("scipy")
from PIL import Image  # noqa: E402

from colu_lab.experiments.diffusion_unet import palettes as P  # noqa: E402
from colu_lab.commands.train import run_main  # noqa: E402
from colu.groups import Group, group_of  # noqa: E402
from colu.spec import ConeSpec  # noqa: E402
from colu.tools import cli  # noqa: E402


def _moved(element, weight):
    """The convolution whose palettes are ``element @`` those of ``weight`` (hidden channels: axis 1)."""
    return torch.einsum("ij,ojkl->oikl", element.float(), weight)


def test_a_known_group_element_is_undone_by_the_group_and_not_by_permutations():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 16, 3, 3, generator=gen)
    group = group_of(ConeSpec.resolve(16, cone_dim=4), 16)
    element = group.sample(gen)
    b = _moved(element.T, a)  # B's palettes are A's moved by the inverse: the best element brings them back
    res = P.palette_residuals(a, b, group)
    assert res["residual_group"] < 1e-5
    assert res["residual_permutation"] > 0.3 and res["residual_identity"] > 0.3
    torch.testing.assert_close(res["group_element"], element, atol=1e-5, rtol=0)
    # a permutation model: the best permutation undoes a permutation exactly, and is the whole group
    perm = Group("permutation", 16)
    shuffled = _moved(perm.sample(gen).T, a)
    res = P.palette_residuals(a, shuffled, perm)
    assert res["residual_permutation"] < 1e-6 and res["residual_group"] < 1e-6 and res["residual_identity"] > 0.3
    # unrelated filters stay far apart under either alignment
    assert res["chance_permutation"] > 0.8 and res["chance_group"] > 0.8
    with pytest.raises(ValueError, match="differ in shape"):
        P.palette_residuals(a, a[:, :8], group)
    with pytest.raises(ValueError, match="acts on 16 channels but the convolution has 8"):
        P.palette_residuals(a[:, :8], a[:, :8], group)


def test_palettes_of_two_trained_unets(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["diffusion-unet", "--quick", "--quiet", "--out", str(out), "--steps", "2", "--eval-every", "2",
            "--set", "samples=0"]
    assert run_main(args + ["--seeds", "1"]) == 0
    assert cli.main(["palettes", str(out)]) == 2
    err = capsys.readouterr().err
    assert "one finished seed" in err and "--resume --seeds 2" in err
    assert run_main(["diffusion-unet", "--quiet", "--out", str(out), "--resume", "--seeds", "2"]) == 0
    assert cli.main(["palettes", str(out)]) == 0
    results = json.loads((out / "palettes" / "palettes.json").read_text())
    assert set(results["activations"]) == {"relu", "colu:S=4"} and results["layer"] == "unet.conv_out.weight"
    for act, kind in (("relu", "permutation"), ("colu:S=4", "colu")):
        entry = results["activations"][act]
        assert entry["group_kind"] == kind and entry["shape"] == [1, 8, 3, 3]
        (pair,) = entry["pairs"]
        assert pair["seeds"] == [0, 1]
        assert 0 < pair["residual_permutation"] <= pair["residual_identity"]
        assert pair["residual_group"] > 0
    relu = results["activations"]["relu"]["pairs"][0]
    assert relu["residual_group"] == relu["residual_permutation"]
    with Image.open(out / "palettes" / "palettes.png") as img:
        assert img.width >= 8 * (3 * P.PALETTE_SCALE + 2) and img.height > 7 * 3 * P.PALETTE_SCALE  # 7 rows
    report = (out / "palettes" / "report.md").read_text()
    assert "| `colu:S=4` |" in report and "![palettes.png](palettes.png)" in report
    (out / "checkpoints" / "relu-seed1.pt").unlink()
    assert cli.main(["palettes", str(out)]) == 2
    assert "relu-seed1.pt is missing" in capsys.readouterr().err
    assert cli.main(["palettes", str(tmp_path)]) == 2
    assert "holds no run (no config.json)" in capsys.readouterr().err
