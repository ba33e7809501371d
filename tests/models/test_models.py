"""Every registered architecture end to end on small configs, plus the Vision-RWKV and ViR mixers
against the official model's layout and the RetNet formula."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from effviz.data.audio import fbank
from effviz.models import ARCHITECTURES, EffvizModel, create_model
from effviz.models.backbone import PRIOR_SPEECH_FRAMES, running_speech_mean_normalise, speech_mean_normalise
from effviz.models.registry import BUNDLED_RECIPES
from effviz.models.releases import Preprocess
from effviz.models.layers import PatchTokenizer, TokenLayout
from effviz.models.mixers import retention as retention_module
from effviz.models.mixers.retention import MultiScaleRetention
from effviz.models.mixers.rwkv import SpatialMix, q_shift

# 48 channels: divisible by the 3 heads of DeiT/ViR and by Q-shift's 4 quarters. Depth 2 puts a
# first and a last layer (different RWKV init) in every model.
SMALL = dict(embed_dim=48, depth=2, num_classes=10)
# Whole small models agree across kernel backends and retention forms to ~1e-6 here; a bound this
# much tighter than the kernels' fp32 tolerance (DESIGN.md §4) also catches a wrong gate or
# direction that the looser one could hide.
MODEL_TOL = dict(rtol=1e-4, atol=1e-5)
IMAGE_ARCHS = [a for a in ARCHITECTURES if "image" in ARCHITECTURES[a]().modalities]
AUDIO_ARCHS = [a for a in ARCHITECTURES if "audio" in ARCHITECTURES[a]().modalities]


def small_overrides(arch: str) -> dict:
    """SMALL, with a hybrid's schedule cut to its first and last block's mixers (one of each kind)."""
    schedule = ARCHITECTURES[arch]().mixer_schedule
    return {**SMALL, "mixer_schedule": (schedule[0], schedule[-1])} if schedule else SMALL


def small_model(arch: str) -> EffvizModel:
    torch.manual_seed(0)
    return create_model(arch, **small_overrides(arch)).eval()


def small_input(arch: str, batch: int = 2) -> dict[str, torch.Tensor]:
    """A few tokens of each of the arch's modalities on a non-square grid: 3x4 image / 8x3 audio
    patches (an audio-visual arch gets both, so that every tokenizer is used)."""
    gen = torch.Generator().manual_seed(1)
    inputs = {}
    if arch in IMAGE_ARCHS:
        inputs["image"] = torch.randn(batch, 3, 48, 64, generator=gen)
    if arch in AUDIO_ARCHS:
        inputs["audio"] = torch.randn(batch, 48, 128, generator=gen)
    return inputs


def test_every_architecture_is_tested():
    assert set(IMAGE_ARCHS) | set(AUDIO_ARCHS) == set(ARCHITECTURES)
    assert IMAGE_ARCHS and AUDIO_ARCHS


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (224, 224), (48, 112)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("arch", IMAGE_ARCHS)
def test_image_output_shape(arch, size):
    model = small_model(arch)
    with torch.no_grad():
        logits = model(image=torch.randn(2, 3, *size))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("frames", [16, 100, 1000])
@pytest.mark.parametrize("arch", AUDIO_ARCHS)
def test_audio_output_shape(arch, frames):
    model = small_model(arch)
    with torch.no_grad():
        logits = model(audio=torch.randn(2, frames, 128))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_backends_agree(arch, monkeypatch):
    """Eval-mode features with every kernel forced to torch, to reference, and left to the default
    (the native cpu kernels where an op has them). Features, not logits: the head's 0.02-scale
    init would shrink any difference under the tolerance."""
    model, inputs = small_model(arch), small_input(arch)
    features = {}
    for backend in ("torch", "reference", None):
        if backend is None:
            monkeypatch.delenv("EFFVIZ_BACKEND", raising=False)
        else:
            monkeypatch.setenv("EFFVIZ_BACKEND", backend)
        with torch.no_grad():
            features[backend] = model.forward_features(**inputs)
    assert features[None].abs().mean() > 0.05  # pooled normalised tokens: a real signal to compare
    torch.testing.assert_close(features["torch"], features["reference"], **MODEL_TOL)
    torch.testing.assert_close(features[None], features["reference"], **MODEL_TOL)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_gradients_reach_every_parameter(arch):
    model = small_model(arch).train()
    logits = model(**small_input(arch))
    F.cross_entropy(logits, torch.tensor([1, 7])).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
        if ".mixer." in name:
            assert param.grad.abs().max() > 0, f"{name} has an all-zero gradient"


def test_vir_parallel_training_form_matches_chunk_inference_form(monkeypatch):
    """160x160 -> 101 tokens: more than one 64-token chunk, with a ragged last one."""
    model = small_model("vir-tiny")
    image = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(2))
    modes, kernel = [], retention_module.retention

    def recording_retention(*args, mode, **kwargs):
        modes.append(mode)
        return kernel(*args, mode=mode, **kwargs)

    monkeypatch.setattr(retention_module, "retention", recording_retention)
    with torch.no_grad():
        parallel = model.train().forward_features(image=image)
        assert modes == ["parallel"] * SMALL["depth"]
        chunk = model.eval().forward_features(image=image)
        assert modes[SMALL["depth"]:] == ["chunk"] * SMALL["depth"]
    torch.testing.assert_close(parallel, chunk, **MODEL_TOL)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_input_smaller_than_a_patch_is_a_clear_error(arch):
    model = small_model(arch)
    too_small = {"image": torch.randn(1, 3, 16, 8)} if arch in IMAGE_ARCHS else {"audio": torch.randn(1, 10, 128)}
    with pytest.raises(ValueError, match="smaller than one 16x16 patch"):
        model(**too_small)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_save_and_load_round_trip(arch, tmp_path):
    model, inputs = small_model(arch), small_input(arch)
    model.save_pretrained(tmp_path)
    loaded = EffvizModel.from_pretrained(tmp_path, strict=True).eval()
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(**inputs), model(**inputs))


# --- Vision-RWKV -----------------------------------------------------------------------------

def test_q_shift_moves_each_quarter_one_patch_with_zero_fill():
    """Token (r, c) holds 1 + its raster index in every channel, so each output names its source."""
    h, w, channels = 3, 4, 10  # 10 channels: official quarter bounds 2, 5, 7 -> sizes 2, 3, 2, 3
    source = (torch.arange(h * w, dtype=torch.float32) + 1).view(1, h * w, 1).expand(1, h * w, channels)
    shifted = q_shift(source, TokenLayout(grid=(h, w), cls_index=None)).view(h, w, channels)
    index = (torch.arange(h * w, dtype=torch.float32) + 1).view(h, w)
    zero_row, zero_col = torch.zeros(1, w), torch.zeros(h, 1)
    expected = {
        (0, 2): torch.cat([zero_col, index[:, :-1]], dim=1),  # takes the left neighbour
        (2, 5): torch.cat([index[:, 1:], zero_col], dim=1),  # takes the right neighbour
        (5, 7): torch.cat([zero_row, index[:-1]], dim=0),  # takes the patch above
        (7, 10): torch.cat([index[1:], zero_row], dim=0),  # takes the patch below
    }
    for (start, stop), want in expected.items():
        for channel in range(start, stop):
            torch.testing.assert_close(shifted[..., channel], want, rtol=0, atol=0)


def test_q_shift_needs_exactly_one_grid():
    x = torch.randn(1, 12, 8)
    with pytest.raises(ValueError, match="grid"):
        q_shift(x, TokenLayout(grid=None, cls_index=None))
    with pytest.raises(ValueError, match="class token"):
        q_shift(torch.randn(1, 13, 8), TokenLayout(grid=(3, 4), cls_index=12))


def test_rwkv_mixer_rejects_a_multimodal_sequence():
    mixer = SpatialMix(8, layer_idx=0, depth=2)
    with pytest.raises(ValueError, match="grid"):
        mixer(torch.randn(1, 20, 8), TokenLayout(grid=None, cls_index=None))


def test_vrwkv_tiny_has_the_official_parameters_and_init():
    """Key names and shapes as in OpenGVLab/Vision-RWKV's VRWKV-T (layers.{i}.att / .ffn), its
    6.2M parameters, and the official "fancy" init at the first and last layer."""
    model = create_model("vrwkv-tiny")
    dim, depth = 192, 12
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    for i in range(depth):
        for name, shape in {
            "spatial_decay": (dim,), "spatial_first": (dim,), "spatial_mix_k": (1, 1, dim),
            "spatial_mix_v": (1, 1, dim), "spatial_mix_r": (1, 1, dim), "key.weight": (dim, dim),
            "value.weight": (dim, dim), "receptance.weight": (dim, dim), "output.weight": (dim, dim),
        }.items():
            assert shapes.pop(f"blocks.{i}.mixer.{name}") == shape
        for name, shape in {
            "spatial_mix_k": (1, 1, dim), "spatial_mix_r": (1, 1, dim), "key.weight": (4 * dim, dim),
            "receptance.weight": (dim, dim), "value.weight": (dim, 4 * dim),
        }.items():
            assert shapes.pop(f"blocks.{i}.ffn.{name}") == shape
    assert not [name for name in shapes if ".mixer." in name or ".ffn." in name]
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 6.2
    assert model.config.cls_token is None and model.input_norm is not None  # mean pool, ln0

    first, last = model.blocks[0].mixer, model.blocks[-1].mixer
    channel = torch.arange(dim, dtype=torch.float32)
    torch.testing.assert_close(first.spatial_decay, -5 + 8 * (channel / (dim - 1)) ** 0.7)
    torch.testing.assert_close(last.spatial_decay, -5 + 8 * (channel / (dim - 1)) ** 2.0)
    torch.testing.assert_close(first.spatial_first[:3], math.log(0.3) + torch.tensor([0.0, 0.5, -0.5]))
    fraction = (channel / dim).view(1, 1, dim)
    torch.testing.assert_close(first.spatial_mix_k, fraction)
    torch.testing.assert_close(last.spatial_mix_v, fraction ** (1 / depth) + 0.3)
    torch.testing.assert_close(last.spatial_mix_r, fraction ** (0.5 / depth))
    torch.testing.assert_close(model.blocks[-1].ffn.spatial_mix_k, fraction ** (1 / depth))


# --- Vision RetNet ---------------------------------------------------------------------------

def test_retention_mixer_follows_the_retnet_formula():
    """The module against the formula written out in float64: decayed causal q·k sums per head,
    k scaled by head_dim^-0.5, per-head GroupNorm, swish gate, output projection."""
    torch.manual_seed(0)
    dim, heads, length = 12, 3, 9
    mixer = MultiScaleRetention(dim, heads).eval()
    with torch.no_grad():
        for p in mixer.group_norm.parameters():
            p.normal_()
    x = torch.randn(2, length, dim)
    with torch.no_grad():
        got = mixer(x, TokenLayout(grid=None, cls_index=length - 1))

    xd = x.double()
    q, k, v, g = (F.linear(xd, proj.weight.double()) for proj in (mixer.q_proj, mixer.k_proj, mixer.v_proj, mixer.g_proj))
    head_dim = dim // heads
    n = torch.arange(length)
    outs = []
    for h in range(heads):
        gamma = 1 - 2.0 ** (-5 - h)
        decay = torch.where(n[:, None] >= n[None, :], gamma ** (n[:, None] - n[None, :]).double(), 0.0)
        cols = slice(h * head_dim, (h + 1) * head_dim)
        scores = q[..., cols] @ k[..., cols].transpose(1, 2) * head_dim**-0.5
        head = (scores * decay) @ v[..., cols]
        mean, var = head.mean(-1, keepdim=True), head.var(-1, unbiased=False, keepdim=True)
        outs.append((head - mean) / torch.sqrt(var + mixer.group_norm.eps))
    normed = torch.cat(outs, dim=-1) * mixer.group_norm.weight.double() + mixer.group_norm.bias.double()
    want = F.linear(F.silu(g) * normed, mixer.out_proj.weight.double())
    torch.testing.assert_close(got, want.float(), **MODEL_TOL)


def test_retention_decays_are_retnets():
    decay = MultiScaleRetention(12, 3).decay(torch.device("cpu"))
    assert decay.dtype == torch.float32
    torch.testing.assert_close(decay, torch.tensor([1 - 1 / 32, 1 - 1 / 64, 1 - 1 / 128]))


def test_retention_heads_must_divide_the_width():
    with pytest.raises(ValueError, match="num_heads"):
        MultiScaleRetention(10, 3)


# --- Bundled recipes and the tokenizer stem ------------------------------------------------------


@pytest.mark.parametrize("recipe", list(BUNDLED_RECIPES))
def test_bundled_recipes_run_at_and_beyond_their_training_size(recipe):
    cfg = BUNDLED_RECIPES[recipe]()
    model = EffvizModel(cfg).eval()
    inputs = {}
    if "image" in cfg.modalities:
        h, w = cfg.image_size
        inputs["image"] = torch.randn(1, cfg.in_chans, h, w)
    if "audio" in cfg.modalities:
        inputs["audio"] = torch.randn(1, int(cfg.min_audio_seconds * 100) + 3, cfg.mel_bins)
    with torch.no_grad():
        assert model(**inputs).shape == (1, cfg.num_classes)
        if "image" in cfg.modalities:  # twice the side, another aspect ratio
            bigger = torch.randn(1, cfg.in_chans, 2 * h, h + cfg.patch_size)
            assert model(image=bigger).shape == (1, cfg.num_classes)


def test_stride_two_stem_gives_one_token_per_patch_size_of_pixels():
    tokenizer = PatchTokenizer(3, patch_size=8, dim=24, grid=(4, 4), stem_channels=8, stem_stride=2)
    tokens, grid = tokenizer(torch.randn(2, 3, 32, 48))
    assert grid == (4, 6) and tokens.shape == (2, 24, 24)
    assert tokenizer.stem[2].stride == (2, 2) and tokenizer.proj.kernel_size == (4, 4)


def test_deeper_stem_adds_full_resolution_convs_before_the_stride():
    tokenizer = PatchTokenizer(3, patch_size=8, dim=24, grid=(4, 4), stem_channels=8, stem_stride=2, stem_depth=2)
    convs = [m for m in tokenizer.stem if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(1, 1), (1, 1), (2, 2)]
    assert [c.out_channels for c in convs] == [8, 8, 16]
    tokens, grid = tokenizer(torch.randn(2, 3, 32, 32))
    assert grid == (4, 4) and tokens.shape == (2, 16, 24)


@pytest.mark.parametrize("kwargs", [dict(stem_depth=0, stem_channels=8), dict(stem_depth=2, stem_channels=0)])
def test_impossible_stem_depths_are_refused(kwargs):
    with pytest.raises(ValueError, match="stem_depth"):
        PatchTokenizer(3, patch_size=8, dim=24, grid=(4, 4), **kwargs)


@pytest.mark.parametrize("kwargs", [dict(stem_channels=0, stem_stride=2), dict(stem_channels=8, stem_stride=3),
                                    dict(stem_channels=8, stem_stride=2, patch_size=7)])
def test_impossible_stems_are_refused(kwargs):
    kwargs = {"patch_size": 8, **kwargs}
    with pytest.raises(ValueError, match="stem_stride"):
        PatchTokenizer(3, dim=24, grid=(4, 4), **kwargs)


def test_middle_class_token_sits_at_the_modality_boundary():
    cfg = BUNDLED_RECIPES["av-mamba-digits"]()
    cfg.embed_dim, cfg.depth = 16, 1
    model = EffvizModel(cfg)
    image, audio = torch.randn(1, 1, 28, 28), torch.randn(1, 112, 128)
    both, layout = model.tokens(image=image, audio=audio)
    image_tokens, _ = model.tokens(image=image)
    audio_tokens, audio_layout = model.tokens(audio=audio)
    n_image = image_tokens.shape[1] - 1
    assert layout.cls_index == n_image  # right after the image tokens, before the audio
    assert both.shape[1] == image_tokens.shape[1] + audio_tokens.shape[1] - 1
    # One modality given: still at the boundary, so each modality reaches it by the same scan
    # direction alone as fused (image: last; audio: first).
    assert model.tokens(image=image)[1].cls_index == n_image
    assert audio_layout.cls_index == 0
    cls = (model.cls_token + model.cls_pos)[0, 0]
    torch.testing.assert_close(both[0, n_image], cls)


def test_speech_mean_normalisation_removes_a_fixed_filter_and_ignores_silence():
    """A microphone's response adds a constant to each log-mel bin: the model reads the same
    tokens with and without it, and padding the clip with silence does not move the means."""
    torch.manual_seed(0)
    cfg = BUNDLED_RECIPES["ast-fsdd"]()
    assert cfg.audio_cmn
    model = EffvizModel(cfg).eval()
    # Every bin within the recipe's level floor of the loudest one (at most 1.6 of its 1.73 here), as
    # in speech: what falls under the floor is raised to it, and a filter is removed only above it.
    speech = torch.randn(1, 104, cfg.mel_bins).clamp(-4, 4) * 0.1 + 0.5
    coloured = speech + torch.linspace(-0.5, 0.3, cfg.mel_bins)
    silence = torch.full((1, 40, cfg.mel_bins), -1.5)
    with torch.no_grad():
        plain, _ = model.tokens(audio=speech)
        torch.testing.assert_close(model.tokens(audio=coloured)[0], plain, rtol=0, atol=1e-5)
        padded = speech_mean_normalise(torch.cat([speech, silence], dim=1), cfg.fbank_std)
        torch.testing.assert_close(padded[:, :104], speech_mean_normalise(speech, cfg.fbank_std), rtol=0, atol=1e-6)
        model.config.audio_cmn = False
        assert (model.tokens(audio=coloured)[0] - plain).abs().max() > 0.1


def test_a_quiet_take_reads_as_a_loud_one_with_16_bit_units_and_a_level_floor():
    """The speech recipe's fbank of 16-bit sample units, floored 75 dB under the loudest bin and
    mean-normalised: the same word 50 dB quieter, after digital silence, gives the model the same
    features. With AST's [-1, 1] samples and the fbank's own floor it does not: the quiet take's
    weak bins and its silence sit on log(eps), which a gain change does not move."""
    cfg = BUNDLED_RECIPES["audio-rwkv-fsdd"]()
    assert cfg.fbank_wave_scale == 2**15 and cfg.audio_floor_db == 75
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(8000) / 16000
    vowel = sum(torch.sin(2 * math.pi * 140 * k * t) / k for k in range(1, 25)) * torch.sin(math.pi * t / t[-1])
    word = torch.cat([torch.zeros(4000), 0.3 * vowel + 0.003 * torch.randn(8000, generator=gen), torch.zeros(4000)])

    def quiet_minus_loud(config) -> torch.Tensor:
        model, pre = EffvizModel(config).eval(), Preprocess.from_config(config).audio
        quiet, loud = (model.audio_features(fbank(word * gain, pre).unsqueeze(0)) for gain in (10 ** (-50 / 20), 1.0))
        return quiet - loud

    difference = quiet_minus_loud(cfg)
    torch.testing.assert_close(difference, torch.zeros_like(difference), rtol=0, atol=1e-4)
    cfg.fbank_wave_scale, cfg.audio_floor_db, cfg.fbank_mean = 1.0, 0.0, -9.4
    assert quiet_minus_loud(cfg).abs().max() > 0.5


def test_the_running_speech_mean_streams_forgets_its_prior_and_skips_leading_silence():
    """The causal form: chunks of any size give one pass's frames; a fixed filter is removed as
    speech accumulates (what is left of it shrinks as the prior's weight over the speech seen);
    silence before the first word, quieter than the prior's loudest frame by more than the
    speech range, counts for nothing."""
    torch.manual_seed(0)
    std, mel = 4.8, 40
    prior, peak = torch.randn(mel) * 0.1, 0.6
    speech = torch.randn(2, 300, mel) * 0.2 + 0.5
    whole, state = running_speech_mean_normalise(speech, std, prior, peak)
    for size in (1, 7, 64):
        pieces, chunk_state = [], None
        for start in range(0, 300, size):
            out, chunk_state = running_speech_mean_normalise(speech[:, start:start + size], std, prior, peak,
                                                             chunk_state)
            pieces.append(out)
        torch.testing.assert_close(torch.cat(pieces, 1), whole, rtol=0, atol=1e-5)
        for a, b in zip(chunk_state, state):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-4)
    assert [tuple(s.shape) for s in state] == [(2, mel), (2, 1), (2, 1)]

    offset = torch.linspace(-0.5, 0.3, mel)
    coloured, _ = running_speech_mean_normalise(speech + offset, std, prior, peak)
    left = (coloured - whole)[0]  # the part of the filter not yet removed, frame by frame
    seen = torch.arange(1, 301.0)
    expected = offset * (PRIOR_SPEECH_FRAMES / (PRIOR_SPEECH_FRAMES + seen))[:, None]
    torch.testing.assert_close(left, expected, rtol=0, atol=1e-4)

    silence = torch.full((2, 200, mel), -1.5)
    after_silence, _ = running_speech_mean_normalise(torch.cat([silence, speech], 1), std, prior, peak)
    torch.testing.assert_close(after_silence[:, 200:], whole, rtol=0, atol=1e-5)
    torch.testing.assert_close(after_silence[:, :200], silence - prior, rtol=0, atol=1e-6)
