"""colu finetune-diffusers on a tiny Stable-Diffusion-style pipeline built here from small configs (nothing downloaded):
conversion sites, fine-tuning that lowers a fixed-batch loss, the save/load round trip, sample grids, and the
image-caption folder's errors; and the conversion record of colu.convert it relies on."""

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

import colu
from colu.convert import MultiSiteCoLU, apply_conversion_record, conversion_record

WIDTHS = (64, 128)  # the smallest UNet whose every width holds the paper's 32 cones (S = 2 and up)
IMAGE = 32  # pixels; the 3-level VAE makes 4 x 8 x 8 latents
CAPTIONS = ["a red bird", "a blue cat", "a green frog", "the red sun"]


def _image_module():
    return pytest.importorskip("PIL.Image")


def _write_images(folder, sizes=((32, 32), (48, 32), (32, 40), (64, 64))):
    """Striped images of mixed sizes, one colour per caption, and their metadata.jsonl."""
    Image = _image_module()
    os.makedirs(folder, exist_ok=True)
    colours = [(220, 30, 30), (30, 30, 220), (30, 200, 30), (240, 200, 20)]
    rows = []
    for i, (size, colour, caption) in enumerate(zip(sizes, colours, CAPTIONS)):
        image = Image.new("RGB", size, colour)
        for x in range(0, size[0], 4):
            for y in range(size[1]):
                image.putpixel((x, y), (255, 255, 255))
        name = f"{i:04d}.png"
        image.save(os.path.join(folder, name))
        rows.append({"file_name": name, "text": caption})
    with open(os.path.join(folder, "metadata.jsonl"), "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return folder


def _tokenizer(folder):
    """A character-level CLIP tokenizer: the letters, each also as a word end, and the two special tokens."""
    transformers = pytest.importorskip("transformers")
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = list(letters) + [c + "</w>" for c in letters] + ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    return transformers.CLIPTokenizer(vocab=os.path.join(folder, "vocab.json"),
                                      merges=os.path.join(folder, "merges.txt"), model_max_length=12)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny text-to-image pipeline and an image-caption folder."""
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()
    root = tmp_path_factory.mktemp("finetune")
    tokenizer = _tokenizer(str(root / "tokenizer-files"))
    vocab = tokenizer.get_vocab()
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=WIDTHS,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=16,
    )
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=4, layers_per_block=1,
        sample_size=IMAGE,
    )
    end = vocab["<|endoftext|>"]
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=12, bos_token_id=vocab["<|startoftext|>"], eos_token_id=end, pad_token_id=end,
    ))
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                        beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = diffusers.StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(root / "model"))
    return {"root": root, "model": str(root / "model"), "data": _write_images(str(root / "data"))}


def _args(tiny, out, *extra):
    from colu_lab.experiments.sd_finetune import command

    return command.parse_args([
        "--model", tiny["model"], "--data", tiny["data"], "--out", str(out), "--batch-size", "2", "--eval-size", "4",
        "--lr", "1e-3", "--num-prompts", "2", "--sample-steps", "2", "--guidance-scale", "1", "--log-every", "2",
        "--device", "cpu", *extra,
    ])


@pytest.fixture(scope="module")
def colu_run(tiny):
    from colu_lab.experiments.sd_finetune import command

    out = tiny["root"] / "colu"
    lines = []
    torch.manual_seed(0)
    pipe, results = command.run(_args(tiny, out, "--steps", "4", "--gradient-checkpointing", "on"), log=lines.append)
    return {"out": out, "pipe": pipe, "results": results, "lines": lines}


def _unet_input(unet):
    g = torch.Generator().manual_seed(3)
    return (torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700]),
            torch.randn(2, 12, unet.config.cross_attention_dim, generator=g))


def test_every_unet_silu_becomes_soft_colu_with_32_cones(tiny, colu_run):
    from colu_lab.experiments.sd_finetune import pipeline

    original = pipeline.load_pipeline(tiny["model"]).unet
    silus = {name for name, m in original.named_modules() if isinstance(m, nn.SiLU)}
    unet = colu_run["pipe"].unet
    record = json.loads((colu_run["out"] / "unet" / pipeline.RECORD_FILE).read_text())
    assert {n for m in record["modules"] for n in m["names"]} == silus and len(silus) >= 10
    assert not any(isinstance(m, nn.SiLU) for m in unet.modules())
    assert all(m["old_type"] == "SiLU" for m in record["modules"])
    assert colu_run["results"]["conversion"]["skipped"] == []
    sites = record["sites"]
    assert {s["name"] for s in sites} == silus
    for s in sites:
        assert (s["num_cones"], s["scaling"], s["share_axis"]) == (32, "soft", False)
        assert s["cone_dim"] == s["channels"] // 32 >= 2
    # feature maps along their channel axis, the 4 x 64 = 256-wide time embedding along its last
    assert {(s["channels"], s["dim"]) for s in sites if s["name"] == "time_embedding.act"} == {(256, -1)}
    assert {s["dim"] for s in sites if s["name"] == "conv_act"} == {1}
    assert isinstance(unet.down_blocks[1].resnets[0].nonlinearity, MultiSiteCoLU)
    # the transformer blocks' GEGLU gate is a function call inside diffusers: reported, not replaced
    assert {f["function"] for f in record["functional"]} == {"F.gelu"}
    assert all(f["module"].endswith("ff.net.0") for f in record["functional"])
    assert "replaced 10 activation module(s)" in "\n".join(colu_run["lines"])


def test_finetuning_lowers_the_fixed_batch_loss(colu_run):
    results = colu_run["results"]
    loss = results["fixed_batch_loss"]
    # conversion changes the function (the loss jumps), four Adam steps bring the same fixed batch's loss down
    assert loss["converted"] != loss["original"]
    assert loss["final"] < 0.9 * loss["converted"], loss
    assert [e["step"] for e in results["curve"]] == [2, 4]
    assert results["optimizer"] == "AdamW lr 0.001, weight decay 0.01 (decoupled)"  # the shared reading
    assert results["gradient_checkpointing"] is True and results["precision"] == "fp32"
    m = results["memory_estimate"]
    assert m["estimate"] is True and m["weights_and_optimizer_gb"] * 1024 ** 3 == 16 * m["params_trainable"]


def test_saved_pipeline_loads_back_with_its_colu(tiny, colu_run):
    from colu_lab.experiments.sd_finetune import load_converted, pipeline

    diffusers = pytest.importorskip("diffusers")
    trained = colu_run["pipe"].unet.eval()
    assert load_converted is pipeline.load_converted  # the package re-exports it
    loaded = load_converted(str(colu_run["out"]))
    assert loaded.colu_record["label"] == "fine-tuned soft CoLU G=32"
    args = _unet_input(trained)
    with torch.no_grad():
        expected = trained(*args).sample
        assert torch.equal(loaded.unet.eval()(*args).sample, expected)
        # the same weights through plain diffusers run SiLU, not what was trained: the record is what restores CoLU
        plain = diffusers.UNet2DConditionModel.from_pretrained(str(colu_run["out"]), subfolder="unet").eval()
        assert not torch.allclose(plain(*args).sample, expected, atol=1e-4)
        # and the weights are the fine-tuned ones, not the original's
        original = pipeline.load_pipeline(tiny["model"]).unet.eval()
        apply_conversion_record(original, loaded.colu_record)
        assert not torch.allclose(original(*args).sample, expected, atol=1e-4)
    with pytest.raises(ValueError, match="apply the record to the unconverted model"):
        apply_conversion_record(loaded.unet, loaded.colu_record)
    with pytest.raises(FileNotFoundError, match="has no unet/colu_conversion.json"):
        load_converted(tiny["model"])


def test_sample_grids_share_prompts_and_noise(tiny, colu_run, capsys):
    from colu.tools import cli
    from colu_lab.experiments.sd_finetune import command, pipeline

    Image = _image_module()
    samples = Image.open(colu_run["out"] / "samples.png")
    assert samples.size == (2 * IMAGE, 14 + 2 * IMAGE)
    layout = json.loads((colu_run["out"] / "samples.json").read_text())
    assert layout["columns"] == ["original", "fine-tuned soft CoLU G=32"] and layout["prompts"] == CAPTIONS[:2]

    base = tiny["root"] / "silu"
    # the baseline also takes the bf16 autocast path (on the CPU here, on the GPU by default)
    _, results = command.run(_args(tiny, base, "--steps", "2", "--baseline", "--num-prompts", "0", "--precision",
                                   "bf16"), log=lambda line: None)
    assert json.loads((base / "unet" / pipeline.RECORD_FILE).read_text())["modules"] == []
    loss = results["fixed_batch_loss"]
    assert results["precision"] == "bf16" and loss["final"] < loss["original"] and "converted" not in loss
    assert results["memory_estimate"]["weight_copies_gb"] > 0
    grids = tiny["root"] / "grids"
    rc = cli.main(["finetune-diffusers", "--compare", "--model", tiny["model"], "--finetuned", str(base),
                   str(colu_run["out"]), "--data", tiny["data"], "--num-prompts", "2", "--sample-steps", "2",
                   "--guidance-scale", "1", "--device", "cpu", "--out", str(grids)])
    assert rc == 0, capsys.readouterr().err
    layout = json.loads((grids / "comparison.json").read_text())
    assert layout["columns"] == ["original", "fine-tuned SiLU (baseline)", "fine-tuned soft CoLU G=32"]
    grid = torch.from_numpy(np.asarray(Image.open(grids / "comparison.png").convert("L")).copy())
    cells = [grid[14:, c * IMAGE:(c + 1) * IMAGE] for c in range(3)]
    before = torch.from_numpy(np.asarray(samples.convert("L")).copy())
    # the original column is the one drawn before fine-tuning: same prompts, same initial noise
    assert torch.equal(cells[0], before[14:, :IMAGE])
    assert torch.equal(cells[2], before[14:, IMAGE:])
    assert not torch.equal(cells[0], cells[1]) and not torch.equal(cells[1], cells[2])


def test_memory_estimate_counts_less_with_checkpointing(tiny):
    from colu_lab.experiments.sd_finetune import memory, pipeline

    pipe = pipeline.load_pipeline(tiny["model"])
    kw = dict(resolution=IMAGE, precision="fp32")
    act = {b: memory.estimate_memory(pipe, batch_size=b, checkpointing=False, **kw) for b in (4, 8)}
    kept = memory.estimate_memory(pipe, batch_size=4, checkpointing=True, **kw)
    assert 0 < kept["activations_gb"] < act[4]["activations_gb"] < act[8]["activations_gb"]
    # 4 images of twice the side hold what 16 images do: the 4 of act[4] and 3 times 4 more
    larger = memory.estimate_memory(pipe, batch_size=4, checkpointing=False, **{**kw, "resolution": 2 * IMAGE})
    per_4 = act[8]["activations_gb"] - act[4]["activations_gb"]
    assert larger["activations_gb"] == pytest.approx(act[4]["activations_gb"] + 3 * per_4)
    params = sum(p.numel() for p in pipe.unet.parameters())
    assert kept["params_trainable"] == params and kept["weights_and_optimizer_gb"] == 16 * params / 1024 ** 3
    assert kept["weight_copies_gb"] == 0  # autocast's bf16 copies exist only with --precision bf16


# --- the image-caption folder ---------------------------------------------------------------------------------------


def test_image_caption_folder_crops_mixed_sizes(tmp_path):
    from colu_lab.experiments.sd_finetune.data import ImageCaptionFolder

    assert len(ImageCaptionFolder(_write_images(str(tmp_path / "train")), 16)) == 4
    data = ImageCaptionFolder(str(tmp_path), 16)  # root/train/metadata.jsonl is found, as imagefolder does
    assert len(data) == 4 and data.captions(2) == CAPTIONS[:2]
    for i in range(4):
        image, caption = data[i]
        assert image.shape == (3, 16, 16) and caption == CAPTIONS[i]
        assert image.min() >= -1 and image.max() <= 1
    red = data[0][0].mean(dim=(1, 2))
    assert red[0] > red[1] and red[0] > red[2]


def _corrupt(folder, row, rewrite):
    lines = open(os.path.join(folder, "metadata.jsonl")).read().splitlines()
    lines[row] = rewrite(lines[row])
    with open(os.path.join(folder, "metadata.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")


@pytest.mark.parametrize("damage, error, words", [
    ("no-folder", FileNotFoundError, ["does not exist"]),
    ("no-metadata", FileNotFoundError, ["no metadata.jsonl", '"file_name"']),
    ("bad-json", ValueError, ["line 2", "not valid JSON"]),
    ("no-caption", ValueError, ["line 3", "'text'", "--caption-column"]),
    ("missing-image", FileNotFoundError, ["line 1", "gone.png", "not found"]),
    ("corrupt-image", ValueError, ["0003.png", "not a readable image"]),
    ("thin-image", ValueError, ["line 4", "0003.png", "4000000 x 1 pixels", "more than 16 times"]),
    ("huge-image", ValueError, ["line 4", "0003.png", "DecompressionBombError", "remove the row"]),
])
def test_bad_data_folder_names_the_problem(tmp_path, damage, error, words):
    from colu_lab.experiments.sd_finetune.data import ImageCaptionFolder

    folder = _write_images(str(tmp_path / "data"))
    if damage == "no-folder":
        folder = str(tmp_path / "elsewhere")
    elif damage == "no-metadata":
        os.remove(os.path.join(folder, "metadata.jsonl"))
    elif damage == "bad-json":
        _corrupt(folder, 1, lambda line: line[:-1])
    elif damage == "no-caption":
        _corrupt(folder, 2, lambda line: json.dumps({"file_name": json.loads(line)["file_name"], "caption": "x"}))
    elif damage == "missing-image":
        _corrupt(folder, 0, lambda line: json.dumps({"file_name": "gone.png", "text": "x"}))
    elif damage == "thin-image":  # 563 bytes of PNG that a resize would turn into gigabytes
        _image_module().new("L", (4_000_000, 1)).save(os.path.join(folder, "0003.png"))
    elif damage == "huge-image":  # over Pillow's own limit too: its DecompressionBombError is named, not raised
        _image_module().new("1", (16_000, 12_000)).save(os.path.join(folder, "0003.png"))
    else:
        with open(os.path.join(folder, "0003.png"), "wb") as f:
            f.write(b"this is not a png")
    with pytest.raises(error) as caught:
        ImageCaptionFolder(folder, 16)
    for word in words:
        assert word in str(caught.value)


def test_command_refuses_a_bad_data_folder(tiny, tmp_path, capsys):
    from colu.tools import cli

    data = _write_images(str(tmp_path / "data"))
    with open(os.path.join(data, "0002.png"), "wb") as f:
        f.write(b"\x89PNG truncated")
    rc = cli.main(["finetune-diffusers", "--model", tiny["model"], "--data", data, "--out", str(tmp_path / "out"),
                   "--device", "cpu", "--steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "0002.png" in err and "not a readable image" in err
    rc = cli.main(["finetune-diffusers", "--model", str(tmp_path / "nothing"), "--data", data,
                   "--out", str(tmp_path / "out2")])
    assert rc == 2 and "not a local diffusers pipeline folder" in capsys.readouterr().err


# --- the conversion record (colu.convert) ---------------------------------------------------------------------------


class _TwoSites(nn.Module):
    """One SiLU object applied to a feature map and to a vector, as diffusers' ResnetBlock2D does."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.lin = nn.Linear(5, 8)
        self.act = nn.SiLU()
        self.head = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 2))

    def forward(self, x, v):
        return self.act(self.conv(x)).mean(dim=(2, 3)) + self.head(self.act(self.lin(v)))[:, :1]


def test_conversion_record_rebuilds_the_same_model_through_json():
    x, v = torch.randn(2, 3, 4, 4), torch.randn(2, 5)
    torch.manual_seed(0)
    model = _TwoSites()
    report = colu.convert(model, cone_dim=4, scaling="soft", example_input=(x, v))
    record = json.loads(json.dumps(conversion_record(model, report)))
    assert [(m["names"], m["class"], m.get("dims_by_rank")) for m in record["modules"]] == [
        (["act"], "MultiSiteCoLU", {"4": 1, "2": -1}), (["head.1"], "CoLU", None)]
    fresh = _TwoSites()
    fresh.load_state_dict(model.state_dict())
    assert apply_conversion_record(fresh, record) == ["act", "head.1"]
    assert fresh.act.dims == {4: 1, 2: -1} and fresh.head[1].scaling == "soft"
    torch.testing.assert_close(fresh(x, v), model(x, v), rtol=0, atol=0)
    # nothing is replaced unless every entry fits
    other = nn.Sequential(nn.Linear(5, 8), nn.SiLU())
    with pytest.raises(ValueError, match="does not have"):
        apply_conversion_record(other, record)
    assert isinstance(other[1], nn.SiLU)
    with pytest.raises(ValueError, match="version"):
        apply_conversion_record(_TwoSites(), {"modules": []})
