"""The CIFAR ResNets, the small GPT and the FLOPs counter."""

import math

import pytest
import torch
from torch import nn

import colu
from colu_lab.experiments.gpt_shakespeare.model import GPT, GPTConfig
from colu_lab.experiments.resnet_cifar.model import BasicBlock, CifarResNet, resnet_cifar
from colu_lab.framework.flops import forward_flops_per_example
from colu_lab.framework.flops import _colu_through_custom_op, cone_flops, flop_counts
from colu_lab.experiments.resnet_cifar.model import ZeroPadShortcut


def colu_images(channels):
    return colu.CoLU(cone_dim=4, dim=1)


def colu_tokens(channels):
    return colu.CoLU(cone_dim=4, dim=-1)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------- ResNet
@pytest.mark.parametrize("depth, n, params", [(20, 3, 269_722), (56, 9, 853_018)])
def test_resnet_parameters_and_blocks(depth, n, params):
    m = resnet_cifar(depth)
    assert n_params(m) == params  # 0.27 M and 0.85 M, He et al. Table 6
    assert m.blocks_per_stage == n and [len(s) for s in m.stages] == [n, n, n]
    blocks = [b for b in m.modules() if isinstance(b, BasicBlock)]
    assert len(blocks) == 3 * n
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert len(convs) + 1 == depth  # 6n + 1 convolutions and the linear layer
    widths = [b.conv2.out_channels for b in blocks]
    assert widths == [16] * n + [32] * n + [64] * n
    reshaping = [b for b in blocks if isinstance(b.shortcut, ZeroPadShortcut)]
    assert [(b.shortcut.stride, b.shortcut.extra) for b in reshaping] == [(2, 16), (2, 32)]  # option A: no weights
    assert m.fc.in_features == 64 and m.fc.out_features == 10


def test_resnet_family_and_bad_depth():
    assert [n_params(resnet_cifar(d)) for d in (32, 44)] == [464_154, 658_586]
    with pytest.raises(ValueError, match="depth=51: .*6n \\+ 2.*20, 32, 44, 56, 110"):
        CifarResNet(51)


def test_resnet_forward_with_colu_on_channels():
    m = resnet_cifar(20, colu_images)
    acts = [a for a in m.modules() if isinstance(a, colu.CoLU)]
    assert len(acts) == 1 + 2 * 9 and all(a.dim == 1 and a.cone_dim == 4 for a in acts)
    assert not any(isinstance(a, nn.ReLU) for a in m.modules())
    x = torch.randn(2, 3, 32, 32)
    out = m(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.sum().backward()
    assert m.conv.weight.grad is not None
    assert resnet_cifar(20, in_channels=1)(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_zero_pad_shortcut_keeps_channel_positions():
    x = torch.randn(2, 4, 6, 6)
    y = ZeroPadShortcut(4, 8, 2)(x)
    assert y.shape == (2, 8, 3, 3)
    assert torch.equal(y[:, :4], x[:, :, ::2, ::2]) and not y[:, 4:].any()


# ---------------------------------------------------------------------- GPT
def test_gpt_shapes_loss_and_tying():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=65)
    m = GPT(cfg, colu_tokens)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.block_size) == (6, 256, 8, 64)
    acts = [a for a in m.modules() if isinstance(a, colu.CoLU)]
    assert len(acts) == 6 and m.blocks[0].mlp.fc.out_features == 1024
    idx, targets = torch.randint(0, 65, (2, 64)), torch.randint(0, 65, (2, 64))
    logits, loss = m(idx, targets)
    assert logits.shape == (2, 64, 65) and loss.shape == () and torch.isfinite(loss)
    assert m.head.weight is m.tok_emb.weight
    untied = GPT(GPTConfig(vocab_size=65, tie_weights=False))
    assert n_params(untied) == n_params(m) + 65 * 256
    with torch.no_grad():  # an untied head starts near the uniform prediction
        assert abs(float(untied(idx, targets)[1]) - math.log(65)) < 0.2
    assert m(idx[:, :10])[1] is None
    with pytest.raises(ValueError, match="65 tokens is longer than block_size=64"):
        m(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="n_embd=256 is not divisible by n_head=7"):
        GPTConfig(vocab_size=65, n_head=7)


def test_gpt_is_causal():
    m = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_embd=32, n_head=4), colu_tokens).eval()
    idx = torch.randint(0, 11, (1, 16))
    changed = idx.clone()
    changed[0, 10] = (changed[0, 10] + 1) % 11
    a, b = m(idx)[0], m(changed)[0]
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6) and not torch.allclose(a[:, 10:], b[:, 10:])


def test_gpt_generate():
    m = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_embd=32, n_head=4)).eval()
    prompt = torch.zeros(2, 3, dtype=torch.long)
    out = m.generate(prompt, 10, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(1))
    assert out.shape == (2, 13) and torch.equal(out[:, :3], prompt) and int(out.max()) < 11
    again = m.generate(prompt, 10, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    greedy = m.generate(prompt, 5, temperature=0)
    assert torch.equal(greedy, m.generate(prompt, 5, temperature=0))
    with pytest.raises(ValueError, match="temperature=-1"):
        m.generate(prompt, 1, temperature=-1)


# -------------------------------------------------------------------- FLOPs
def test_cone_flops_formula():
    # S = 4, hard, identity axis: 3 squares + 2 adds, sqrt, + eps, divide, clamp (2), 3 multiplies
    assert cone_flops(16, 4, 4, False, "colu", "hard", "identity") == 4 * 13
    assert cone_flops(16, 4, 4, False, "colu", "soft", "identity") == 4 * 15
    assert cone_flops(13, 4, 4, True, "colu", "hard", "relu") == 4 * 13 + 1
    assert cone_flops(16, 0, None, False, "colu", "hard", "identity") == 0


def test_resnet_flops_count_colu():
    x = torch.zeros(1, 3, 32, 32)
    relu = forward_flops_per_example(resnet_cifar(20), x)
    colu_model = resnet_cifar(20, colu_images)
    counts = flop_counts(colu_model, x)
    # activation values in ResNet-20: the stem and 6 per stage at 16x32x32, 32x16x16, 64x8x8
    values = 16 * 32 * 32 + 6 * (16 * 32 * 32 + 32 * 16 * 16 + 64 * 8 * 8)
    assert counts["colu.cone_forward"] == values // 4 * 13
    assert forward_flops_per_example(colu_model, x) - relu == values // 4 * 13
    assert 80e6 < relu < 83e6  # ResNet-20's 41 M multiply-adds, at 2 FLOPs each
    small = resnet_cifar(8, colu_images)  # per example: a batch of 4 gives the same figure as one image
    assert forward_flops_per_example(small, x.repeat(4, 1, 1, 1)) == forward_flops_per_example(small, x)


def test_flop_counting_leaves_the_model_alone():
    m = resnet_cifar(8, colu_images).train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    forward_flops_per_example(m, torch.randn(2, 3, 32, 32))
    assert m.training and all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    act = colu.CoLU(cone_dim=4, dim=1)
    x = torch.randn(2, 16, 5, 5)
    with _colu_through_custom_op(act):
        routed = act(x)
    assert torch.allclose(routed, act(x), atol=1e-6) and "forward" not in vars(act)


def test_gpt_flops_count_colu():
    cfg = GPTConfig(vocab_size=65)
    idx = torch.zeros(1, 64, dtype=torch.long)
    relu = flop_counts(GPT(cfg), idx)
    cone = flop_counts(GPT(cfg, colu_tokens), idx)
    assert any("scaled_dot_product" in k for k in relu)  # attention is counted on the CPU too
    assert cone["colu.cone_forward"] == 6 * 64 * (1024 // 4) * 13
    assert sum(cone.values()) - sum(relu.values()) == cone["colu.cone_forward"]


@pytest.mark.slow
def test_resnet56_flops_near_the_paper():
    x = torch.zeros(1, 3, 32, 32)
    relu = forward_flops_per_example(resnet_cifar(56), x)
    cone = forward_flops_per_example(resnet_cifar(56, colu_images), x)
    assert abs(relu - 0.252e9) < 0.002e9  # the paper's Table 4: 0.252 B
    assert relu < cone < relu * 1.01  # the paper: 0.257 B; counted here, CoLU adds 13 FLOPs per 4 values


def test_flops_of_rcolu_shared_axis_and_componentwise():
    m = nn.Sequential(nn.Linear(8, 12), colu.RCoLU(cone_dim=3), nn.Linear(12, 13),
                      colu.CoLU(cone_dim=4, share_axis=True, axis_activation="relu", scaling="soft"),
                      nn.Linear(13, 12), colu.CoLU(cone_dim=2))
    x = torch.randn(5, 8)
    counts = flop_counts(m, x)
    rcolu = cone_flops(12, 4, 3, False, "rcolu", "hard", "identity")
    shared = cone_flops(13, 4, 4, True, "colu", "soft", "relu")
    assert counts["colu.cone_forward"] == 5 * (rcolu + shared)  # cone_dim=2 is ReLU: element-wise, 0
    with torch.no_grad():
        plain = m(x)
        with _colu_through_custom_op(m):
            routed = m(x)
    assert torch.allclose(plain, routed, atol=1e-6)
