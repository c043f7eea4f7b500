"""colu.convert on small hand-made models and on diffusers/transformers models built from tiny configs."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import colu
from colu.convert import ConversionReport, MultiSiteCoLU


def _conv_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 10, 3, padding=1), nn.ReLU(),  # 10 channels: not a multiple of cone_dim=4
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 2),
    )


def _sites(report):
    return sorted((r.name, r.channels, r.dim) for r in report.replaced)


@pytest.mark.parametrize("with_example", [True, False])
def test_conv_net_replaced_and_skipped(with_example):
    model = _conv_net()
    x = torch.randn(2, 3, 6, 6)
    report = colu.convert(model, cone_dim=4, example_input=x if with_example else None)
    assert _sites(report) == [("2", 16, 1), ("8", 12, -1)]
    assert [s.name for s in report.skipped] == ["4"] and "C=10" in report.skipped[0].reason
    assert isinstance(model[2], colu.CoLU) and model[2].dim == 1 and model[8].dim == -1
    assert type(model[4]) is nn.ReLU
    assert all(r.old_type == "ReLU" and r.config["cone_dim"] == 4 for r in report.replaced)
    out = model(x)
    assert out.shape == (2, 2) and torch.isfinite(out).all()
    text = str(report)
    assert "different function" in text and "skipped  4" in text


def test_example_run_leaves_training_state_and_buffers_alone():
    model = _conv_net().train()
    stats = model[1].running_mean.clone()
    colu.convert(model, cone_dim=4, example_input=torch.randn(2, 3, 6, 6) * 5)
    assert model.training and model[1].training
    assert torch.equal(model[1].running_mean, stats)


def test_on_mismatch_raise_names_the_module():
    with pytest.raises(ValueError, match=r"activation '4'.*C=10.*on_mismatch='skip'"):
        colu.convert(_conv_net(), cone_dim=4, example_input=torch.randn(1, 3, 4, 4), on_mismatch="raise")
    with pytest.raises(ValueError, match="on_mismatch='ignore'"):
        colu.convert(_conv_net(), on_mismatch="ignore")


class _Shared(nn.Module):
    """One activation object called at two sites (as diffusers' ResnetBlock2D does)."""

    def __init__(self, a, b, image=False):
        super().__init__()
        self.image = image
        self.act = nn.SiLU()
        self.fa = nn.Conv2d(3, a, 1) if image else nn.Linear(4, a)
        self.fb = nn.Linear(4, b)

    def forward(self, x, v):
        h = self.act(self.fa(x))
        u = self.act(self.fb(v))
        return h.mean() + u.mean()


def test_shared_instance_same_dim_different_widths():
    m = _Shared(8, 12)
    report = colu.convert(m, cone_dim=4, example_input=(torch.randn(2, 4), torch.randn(2, 4)))
    assert _sites(report) == [("act", 8, -1), ("act", 12, -1)] and type(m.act) is colu.CoLU


def test_shared_instance_with_one_bad_width_is_kept_everywhere():
    m = _Shared(8, 10)
    args = (torch.randn(2, 4), torch.randn(2, 4))
    report = colu.convert(m, cone_dim=4, example_input=args)
    assert report.replaced == [] and type(m.act) is nn.SiLU
    assert "C=10" in report.skipped[0].reason and "2 sites" in report.skipped[0].reason
    assert "different function" not in str(report)
    with pytest.raises(ValueError, match="'act'"):
        colu.convert(m, cone_dim=4, example_input=args, on_mismatch="raise")


def test_shared_instance_across_ranks_gets_a_dim_per_rank():
    m = _Shared(8, 12, image=True)
    args = (torch.randn(2, 3, 5, 5), torch.randn(2, 4))
    report = colu.convert(m, cone_dim=4, example_input=args)
    assert _sites(report) == [("act", 8, 1), ("act", 12, -1)]
    assert isinstance(m.act, MultiSiteCoLU) and m.act.dims == {4: 1, 2: -1}
    # it acts like a CoLU over the right axis at each site
    x = torch.randn(2, 8, 3, 3)
    assert torch.allclose(m.act(x), colu.colu(x, cone_dim=4, dim=1))
    with pytest.raises(ValueError, match="rank 3"):
        m.act(torch.randn(2, 5, 8))


class _Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 8)
        self.act = nn.GELU()

    def forward(self, x):
        return F.silu(self.inner(x)) + self.act(self.inner(x))


def test_functional_activations_are_reported_not_replaced():
    m = nn.Sequential(_Functional())
    report = colu.convert(m, cone_dim=4, example_input=torch.randn(3, 4))
    assert [r.name for r in report.replaced] == ["0.act"]
    assert [(f.module, f.function, f.calls) for f in report.functional] == [("0", "F.silu", 1)]
    assert "F.silu" in str(report)


def test_class_names_subclasses_and_idempotence():
    class MyReLU(nn.ReLU):
        pass

    m = nn.Sequential(nn.Linear(4, 8), MyReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.randn(2, 4)
    report = colu.convert(m, cone_dim=4, replace=("Tanh", nn.ReLU), example_input=x)
    assert _sites(report) == [("1", 8, -1), ("3", 8, -1)]
    again = colu.convert(m, cone_dim=4, replace=("Tanh", nn.ReLU, "CoLU"), example_input=x)
    assert again.replaced == [] and again.skipped == []
    with pytest.raises(TypeError, match="42"):
        colu.convert(m, replace=(42,))


def test_unreached_and_undiscoverable_sites_are_skipped():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.ReLU(), nn.ReLU()

        def forward(self, x):
            return self.used(x)

    m = Branchy()
    report = colu.convert(m, cone_dim=4, example_input=torch.randn(2, 8))
    assert [r.name for r in report.replaced] == ["used"]
    assert report.skipped[0].name == "unused" and "not called" in report.skipped[0].reason
    report = colu.convert(Branchy(), cone_dim=4)
    assert report.replaced == [] and all("pass example_input" in s.reason for s in report.skipped)


def test_dim_override_for_conv1d_sequences():
    m = nn.Sequential(nn.Conv1d(3, 8, 1), nn.ReLU())
    x = torch.randn(2, 3, 12)  # (N, C, L): rank 3 defaults to dim=-1, which would see L=12
    assert _sites(colu.convert(_copy(m), cone_dim=4, example_input=x)) == [("1", 12, -1)]
    report = colu.convert(m, cone_dim=4, example_input=x, dim=1)
    assert _sites(report) == [("1", 8, 1)]
    assert torch.allclose(m(x), colu.colu(m[0](x), cone_dim=4, dim=1))


def _copy(m):
    import copy

    return copy.deepcopy(m)


@pytest.mark.slow
def test_state_dict_round_trip_and_compile():
    model = _conv_net().eval()
    x = torch.randn(2, 3, 6, 6)
    keys = list(model.state_dict())
    colu.convert(model, cone_dim=4, example_input=x)
    assert list(model.state_dict()) == keys  # CoLU has no parameters or buffers
    fresh = _conv_net().eval()
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    colu.convert(fresh, cone_dim=4, example_input=x)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(x), model(x))
    compiled = torch.compile(model)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_import_colu_stays_light():
    code = (
        "import sys, colu; heavy = [m for m in ('matplotlib', 'diffusers', 'transformers') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------- third-party models
def _round_trip(build, convert_kwargs, args, output):
    """Convert a model, load its state into a second converted copy, compare outputs."""
    torch.manual_seed(0)
    a = build()
    torch.manual_seed(1)
    b = build()
    ra = colu.convert(a, **convert_kwargs, example_input=args)
    colu.convert(b, **convert_kwargs, example_input=args)
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    with torch.no_grad():
        ya, yb = output(a(*args)), output(b(*args))
    torch.testing.assert_close(ya, yb)
    return a, ra, ya


@pytest.mark.slow
def test_diffusers_unet_silus_become_soft_colu_with_32_cones():
    diffusers = pytest.importorskip("diffusers")

    def build():
        return diffusers.UNet2DModel(
            sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(64, 128),
            norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
        )

    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 500])
    torch.manual_seed(0)
    original = build().eval()
    with torch.no_grad():
        before = original(x, t).sample
    model, report, after = _round_trip(build, dict(num_cones=32, scaling="soft"), (x, t), lambda o: o.sample)
    assert after.shape == before.shape and torch.isfinite(after).all()
    assert not torch.allclose(after, before, atol=1e-3)
    assert report.skipped == [] and report.functional == []
    # every resnet applies its one SiLU to feature maps (dim=1) and to the 256-wide time embedding (dim=-1)
    r = lambda name, *sites: [(name, c, d) for c, d in sites]  # noqa: E731
    res = "resnets.{}.nonlinearity"
    expected = (
        r("time_embedding.act", (256, -1)) + r("conv_act", (64, 1))
        + r("down_blocks.0." + res.format(0), (64, 1), (256, -1))
        + r("down_blocks.1." + res.format(0), (64, 1), (128, 1), (256, -1))
        + r("mid_block." + res.format(0), (128, 1), (256, -1))
        + r("mid_block." + res.format(1), (128, 1), (256, -1))
        + r("up_blocks.0." + res.format(0), (256, 1), (128, 1), (256, -1))
        + r("up_blocks.0." + res.format(1), (192, 1), (128, 1), (256, -1))
        + r("up_blocks.1." + res.format(0), (192, 1), (64, 1), (256, -1))
        + r("up_blocks.1." + res.format(1), (128, 1), (64, 1), (256, -1))
    )
    assert _sites(report) == sorted(expected)
    for site in report.replaced:
        assert site.old_type == "SiLU" and site.config["num_cones"] == 32 and site.config["scaling"] == "soft"
        assert site.config["cone_dim"] == site.channels // 32
    resnet = model.down_blocks[1].resnets[0]
    assert isinstance(resnet.nonlinearity, MultiSiteCoLU) and resnet.nonlinearity.dims == {4: 1, 2: -1}
    assert type(model.time_embedding.act) is colu.CoLU and model.time_embedding.act.dim == -1
    assert model.conv_act.dim == 1
    assert not any(isinstance(m, nn.SiLU) for m in model.modules())
    # a width that cannot hold 32 cones is skipped with the reason
    torch.manual_seed(0)
    narrow = diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
        norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    report = colu.convert(narrow, num_cones=32, scaling="soft", example_input=(x, t))
    assert "conv_act" in {s.name for s in report.skipped}
    assert all("C=32" in s.reason for s in report.skipped)
    assert torch.isfinite(narrow(x, t).sample).all()


def test_transformers_gpt2_new_gelu_becomes_colu():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()

    def build():
        config = transformers.GPT2Config(
            n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=16, bos_token_id=0, eos_token_id=0
        )
        return transformers.GPT2LMHeadModel(config)

    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    model, report, logits = _round_trip(
        build, dict(cone_dim=4, replace=("NewGELUActivation",)), (ids,), lambda o: o.logits
    )
    assert _sites(report) == [("transformer.h.0.mlp.act", 128, -1), ("transformer.h.1.mlp.act", 128, -1)]
    assert all(r.old_type == "NewGELUActivation" for r in report.replaced)
    assert logits.shape == (2, 10, 64) and torch.isfinite(logits).all()
    # gradients flow through the converted MLPs
    out = model(ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(model.transformer.h[0].mlp.c_fc.weight.grad).all()
    # 128 channels do not split into cones of 5
    torch.manual_seed(0)
    other = build()
    report = colu.convert(other, cone_dim=5, replace=("NewGELUActivation",), example_input=ids)
    assert report.replaced == [] and len(report.skipped) == 2 and "C=128" in report.skipped[0].reason
    with pytest.raises(ValueError, match="transformer.h.0.mlp.act"):
        colu.convert(other, cone_dim=5, replace=("NewGELUActivation",), example_input=ids, on_mismatch="raise")


def test_convert_check_shows_the_jump_and_the_recovery(capsys):
    from colu.tools import convert_check

    assert convert_check.main(["--steps", "300", "--finetune-steps", "120", "--width", "32"]) == 0
    out = capsys.readouterr().out
    trained = float(out.split("test loss ")[1].split()[0])
    converted = float(out.split("after conversion (no training): test loss ")[1].split()[0])
    final = float(out.split("after fine-tuning: test loss ")[1].split()[0])
    assert converted > 5 * trained and final < converted / 5
    assert "different function" in out
