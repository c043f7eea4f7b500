"""Activation-spec parsing, widths and errors; YAML configs."""

import pytest
import torch
from torch import nn

import colu
from colu_lab.framework.activations import parse_activation, parse_activations
from colu_lab.framework.config import build_config, load_yaml
from colu_lab.experiments.mnist_mlp import experiment as mnist_mlp


@pytest.mark.parametrize("text, label", [
    ("relu", "relu"), ("SiLU", "silu"), ("gelu", "gelu"), ("identity", "identity"),
    ("colu:S=4", "colu:S=4"), ("colu:S=4,hard", "colu:S=4"), ("colu: share , soft, S=4", "colu:S=4,soft,share"),
    ("colu:G=50,soft", "colu:G=50,soft"), ("rcolu:S=3", "rcolu:S=3"), ("colu:G=0", "colu:G=0"),
    ("colu:S=4,axis=relu", "colu:S=4,axis=relu"), ("relu:C=100", "relu:C=100"),
])
def test_parse_and_label_roundtrip(text, label):
    spec = parse_activation(text)
    assert spec.label() == label
    assert parse_activation(spec.label()) == spec


def test_build_modules_and_widths():
    assert parse_activation("colu:S=4,soft,share").fit_width(512) == 511
    assert parse_activation("colu:S=4").fit_width(512) == 512
    assert parse_activation("colu:S=3").fit_width(3) == 3
    assert parse_activation("relu").fit_width(512) == 512
    assert parse_activation("colu:S=4,C=400").fit_width(512) == 400
    vae = {"colu:G=50,soft,share": 2401, "colu:G=50,soft": 2450, "relu": 2401, "colu:G=2400,soft": 4800,
           "colu:G=0": 2401, "colu:S=4": 3200}
    assert {k: parse_activation(k).paper_width(2400) for k in vae} == vae
    m = parse_activation("colu:G=50,soft,share").build(2401)
    assert isinstance(m, colu.CoLU) and m.num_cones == 50 and m.share_axis and m.scaling == "soft"
    assert isinstance(parse_activation("rcolu:S=3").build(3), colu.RCoLU)
    assert isinstance(parse_activation("silu").build(7), nn.SiLU)
    width, make = parse_activation("colu:S=4,share").factory(512)
    assert make()(torch.randn(2, width)).shape == (2, 511)
    # component-wise CoLU (S=2, soft) is SiLU, as the op defines it
    x = torch.randn(3, 8)
    assert torch.allclose(parse_activation("colu:S=2,soft").build(8)(x), nn.functional.silu(x))


@pytest.mark.parametrize("text, pattern", [
    ("relu6", r"unknown name 'relu6'; valid names: relu, silu"),
    ("colu:S=4,sof", r"unknown option 'sof' for colu; valid options: S=<int>, G=<int>, hard, soft"),
    ("colu:S=4,G=2", "S=<int> or G=<int>, not both"),
    ("colu:soft", r"needs S=<int> .* or G=<int>"),
    ("colu:S=x", r"'S=x' needs an integer >= 1"),
    ("colu:S=-3", r"'S=-3' needs an integer >= 1"),
    ("colu:S=4,soft,hard", "conflicting scalings soft, hard"),
    ("colu:S=4,,soft", "empty option"),
    ("colu:", "empty option list"),
    ("relu:S=4", r"unknown option 'S=4' for relu; valid options: C=<int>"),
    ("rcolu:S=3,share", r"unknown option 'share' for rcolu"),
    ("colu:S=1", "S=1 is not a cone"),
    ("", "non-empty string"),
])
def test_bad_specs_name_token_and_options(text, pattern):
    with pytest.raises(ValueError, match=pattern):
        parse_activation(text)


def test_width_errors_and_duplicates():
    with pytest.raises(ValueError, match="C=2401 is not divisible"):
        parse_activation("colu:S=4,C=2401").fit_width(512)
    with pytest.raises(ValueError, match="does not divide 2400"):
        parse_activation("colu:S=8").paper_width(2400)
    with pytest.raises(ValueError, match="repeat colu:S=4"):
        parse_activations(["colu:S=4", "colu:hard,S=4"])


def test_yaml_config_and_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nactivations: [relu, 'colu:S=4']\nwidth: 64\n")
    cfg, explicit = build_config(mnist_mlp.Config, {"quick": {"epochs": 1, "seeds": 1}}, load_yaml(str(path)),
                                 {"width": "32", "preset": "quick"})
    assert (cfg.epochs, cfg.seeds, cfg.width, cfg.activations) == (3, 1, 32, ["relu", "colu:S=4"])
    assert "epochs" in explicit and "seeds" not in explicit
    path.write_text("epochz: 3\n")
    with pytest.raises(ValueError, match=r"unknown config key 'epochz'; valid keys: .*epochs"):
        build_config(mnist_mlp.Config, None, load_yaml(str(path)), {})
    with pytest.raises(ValueError, match="lr='fast' is not a valid float"):
        build_config(mnist_mlp.Config, None, {}, {"lr": "fast"})
