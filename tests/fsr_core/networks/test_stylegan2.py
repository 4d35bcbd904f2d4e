"""StyleGAN2 networks: rosinality's checkpoint layout, strict reloads, the FIR resampling, W and W+."""

from __future__ import annotations

import hashlib

import pytest
import torch

from fsr_core.networks import build_network, network_spec
from fsr_core.networks.stylegan2 import (
    Discriminator,
    Generator,
    Upsample,
    default_channels,
    fir_kernel,
    generator_arguments,
    load_stylegan2_checkpoint,
    upfirdn2d,
)

TINY = {"size": 16, "style_dim": 8, "n_mlp": 2, "channels": [8, 6, 4]}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _perturbed(generator: Generator) -> Generator:
    """Random weights everywhere (noise strengths and biases start at zero otherwise)."""
    with torch.no_grad():
        for p in generator.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return generator.eval()


def _rosinality_layout(widths: list[int], style_dim: int, n_mlp: int) -> dict[str, tuple[int, ...]]:
    """The keys and shapes of a rosinality ``g_ema`` with these widths at 4, 8, ..., written out from
    its module tree (style, input, conv1, to_rgb1, convs, to_rgbs, noises)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(1, n_mlp + 1):
        shapes[f"style.{i}.weight"], shapes[f"style.{i}.bias"] = (style_dim, style_dim), (style_dim,)

    def styled(prefix: str, c_in: int, c_out: int, k: int, up: bool = False, rgb_bias: bool = False) -> None:
        shapes[f"{prefix}.conv.weight"] = (1, c_out, c_in, k, k)
        if up:
            shapes[f"{prefix}.conv.blur.kernel"] = (4, 4)
        shapes[f"{prefix}.conv.modulation.weight"] = (c_in, style_dim)
        shapes[f"{prefix}.conv.modulation.bias"] = (c_in,)
        if rgb_bias:
            shapes[f"{prefix}.bias"] = (1, 3, 1, 1)
        else:
            shapes[f"{prefix}.noise.weight"] = (1,)
            shapes[f"{prefix}.activate.bias"] = (c_out,)

    shapes["input.input"] = (1, widths[0], 4, 4)
    styled("conv1", widths[0], widths[0], 3)
    styled("to_rgb1", widths[0], 3, 1, rgb_bias=True)
    for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
        styled(f"convs.{2 * i}", c_in, c_out, 3, up=True)
        styled(f"convs.{2 * i + 1}", c_out, c_out, 3)
        shapes[f"to_rgbs.{i}.upsample.kernel"] = (4, 4)
        styled(f"to_rgbs.{i}", c_out, 3, 1, rgb_bias=True)
    for layer in range(2 * len(widths) - 1):
        res = 2 ** ((layer + 5) // 2)
        shapes[f"noises.noise_{layer}"] = (1, 1, res, res)
    return shapes


# ---------------------------------------------------------------------------- layout and checkpoints
def test_the_1024_config_f_layout_gives_rosinalitys_arguments_and_the_same_keys_and_shapes() -> None:
    widths = [512, 512, 512, 512, 512, 256, 128, 64, 32]  # rosinality's table, channel_multiplier 2
    layout = _rosinality_layout(widths, 512, 8)
    arguments = generator_arguments(layout)
    assert arguments == {"size": 1024, "style_dim": 512, "n_mlp": 8, "channel_multiplier": 2, "channels": None}
    assert default_channels(1024, 2) == widths
    with torch.device("meta"):
        generator = Generator(**arguments)
    assert {k: tuple(v.shape) for k, v in generator.state_dict().items()} == layout
    assert (generator.n_latent, generator.num_layers) == (18, 17)


def test_widths_outside_the_table_are_inferred_as_a_channel_list() -> None:
    layout = _rosinality_layout(TINY["channels"], 8, 2)
    assert generator_arguments(layout) == {**TINY, "channel_multiplier": 2}
    assert {k: tuple(v.shape) for k, v in Generator(**TINY).state_dict().items()} == layout
    with pytest.raises(ValueError, match="not a StyleGAN2 generator"):
        generator_arguments({"weight": (3, 3)})


def test_a_random_generator_saved_in_rosinalitys_layout_reloads_strictly_and_reproduces_its_outputs(tmp_path) -> None:
    generator = _perturbed(Generator(**TINY))
    latent_avg = generator.mean_latent(64)[0].detach()
    path = tmp_path / "prior.pt"
    torch.save({"g_ema": generator.state_dict(), "latent_avg": latent_avg}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()

    loaded, loaded_avg = load_stylegan2_checkpoint(str(path), sha256=digest)
    assert loaded.config == generator.config and not loaded.training
    assert torch.equal(loaded_avg, latent_avg)
    z, noise = torch.randn(3, 8), generator.make_noise()
    with torch.no_grad():
        expected, _ = generator([z], noise=noise)
        assert torch.equal(loaded([z], noise=noise)[0], expected)
        assert torch.equal(loaded([z], randomize_noise=False)[0], generator([z], randomize_noise=False)[0])
    assert expected.shape == (3, 3, 16, 16)

    with pytest.raises(ValueError, match="sha256"):
        load_stylegan2_checkpoint(str(path), sha256="0" * 64)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_stylegan2_checkpoint(str(tmp_path / "absent.pt"))
    torch.save({"g": generator.state_dict()}, tmp_path / "no_ema.pt")
    with pytest.raises(ValueError, match="g_ema"):
        load_stylegan2_checkpoint(str(tmp_path / "no_ema.pt"))


def test_strict_loading_rejects_a_missing_key(tmp_path) -> None:
    state = Generator(**TINY).state_dict()
    state.pop("to_rgbs.1.bias")
    torch.save({"g_ema": state, "latent_avg": torch.zeros(8)}, tmp_path / "broken.pt")
    with pytest.raises(RuntimeError, match="to_rgbs.1.bias"):
        load_stylegan2_checkpoint(str(tmp_path / "broken.pt"))


def test_networks_rebuild_from_their_spec_and_take_rosinalitys_positional_arguments() -> None:
    generator = Generator(**TINY)
    spec = network_spec(generator)
    assert spec["class"] == "stylegan2_generator"
    rebuilt = build_network(spec)
    assert list(rebuilt.state_dict()) == list(generator.state_dict())
    positional = Generator(16, 8, 2, 2, [1, 3, 3, 1], 0.01, channels=[8, 6, 4])
    assert positional.config == generator.config
    assert network_spec(Discriminator(size=16, channels=[8, 6, 4]))["class"] == "stylegan2_discriminator"
    with pytest.raises(TypeError, match="both"):
        Generator(16, size=16, style_dim=8, n_mlp=2)
    with pytest.raises(ValueError, match="power of two"):
        Generator(size=24, style_dim=8, n_mlp=2)
    with pytest.raises(ValueError, match="widths"):
        Generator(size=16, style_dim=8, n_mlp=2, channels=[8, 8])


# ---------------------------------------------------------------------------- FIR resampling
def test_fir_kernels_are_normalised() -> None:
    kernel = fir_kernel([1, 3, 3, 1])
    assert torch.allclose(kernel.sum(), torch.tensor(1.0))
    assert torch.allclose(kernel, torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64)
    assert torch.allclose(Upsample([1, 3, 3, 1]).kernel.sum(), torch.tensor(4.0))


def test_upsampling_a_constant_image_keeps_it_constant_away_from_the_border() -> None:
    image = torch.full((2, 3, 8, 8), 0.7)
    up = Upsample([1, 3, 3, 1])(image)
    assert up.shape == (2, 3, 16, 16)
    assert torch.allclose(up[:, :, 2:-2, 2:-2], torch.full_like(up[:, :, 2:-2, 2:-2], 0.7), atol=1e-6)
    assert up[0, 0, 0, 0] < 0.7  # the zero padding shows at the border


def test_upfirdn2d_is_a_true_convolution_with_zero_insertion_padding_and_striding() -> None:
    delta = torch.zeros(1, 1, 5, 5)
    delta[0, 0, 2, 2] = 1.0
    kernel = torch.arange(1.0, 10.0).view(3, 3)
    out = upfirdn2d(delta, kernel, pad=(1, 1))
    assert torch.equal(out[0, 0, 1:4, 1:4], kernel)  # convolution places the kernel unflipped around a delta
    ramp = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 4, 4)
    up = upfirdn2d(ramp, torch.ones(1, 1), up=2)
    assert up.shape == (1, 1, 8, 8) and torch.equal(up[0, 0, 0], torch.tensor([0.0, 0, 1, 0, 2, 0, 3, 0]))
    down = upfirdn2d(torch.arange(16.0).view(1, 1, 4, 4), torch.ones(1, 1), down=2)
    assert torch.equal(down[0, 0], torch.tensor([[0.0, 2], [8, 10]]))
    cropped = upfirdn2d(torch.arange(16.0).view(1, 1, 4, 4), torch.ones(1, 1), pad=(-1, -1))
    assert torch.equal(cropped[0, 0], torch.tensor([[5.0, 6], [9, 10]]))


# ---------------------------------------------------------------------------- W, W+, noise, truncation
def test_a_w_code_is_the_w_plus_code_that_repeats_it() -> None:
    generator = _perturbed(Generator(**TINY))
    noise = generator.make_noise()
    w = generator.get_latent(torch.randn(2, 8))
    with torch.no_grad():
        from_w, latents = generator([w], input_is_latent=True, noise=noise, return_latents=True)
        w_plus = w.unsqueeze(1).repeat(1, generator.n_latent, 1)
        assert latents.shape == (2, generator.n_latent, 8) and torch.equal(latents, w_plus)
        assert torch.equal(generator([w_plus], input_is_latent=True, noise=noise)[0], from_w)
        # a W+ code whose layers differ gives another image
        other = w_plus.clone()
        other[:, -1] += 1.0
        assert not torch.allclose(generator([other], input_is_latent=True, noise=noise)[0], from_w)
        # Z through the mapping network is the same as W given directly
        z = torch.randn(2, 8)
        assert torch.equal(generator([z], noise=noise)[0],
                           generator([generator.get_latent(z)], input_is_latent=True, noise=noise)[0])


def test_style_mixing_switches_codes_at_the_inject_index() -> None:
    generator = _perturbed(Generator(**TINY))
    w1, w2 = torch.randn(1, 8), torch.randn(1, 8)
    _, latents = generator([w1, w2], input_is_latent=True, inject_index=2, return_latents=True)
    assert torch.equal(latents[0, :2], w1.repeat(2, 1)) and torch.equal(latents[0, 2:], w2.repeat(generator.n_latent - 2, 1))


def test_truncation_zero_generates_the_truncation_latent() -> None:
    generator = _perturbed(Generator(**TINY))
    mean = generator.mean_latent(32)
    assert mean.shape == (1, 8)
    noise = generator.make_noise()
    with torch.no_grad():
        truncated = generator([torch.randn(1, 8)], truncation=0.0, truncation_latent=mean, noise=noise)[0]
        assert torch.allclose(truncated, generator([mean], input_is_latent=True, noise=noise)[0])


def test_noise_maps_match_the_stored_buffers_and_fixed_noise_is_deterministic() -> None:
    generator = _perturbed(Generator(**TINY))
    noise = generator.make_noise()
    assert [tuple(n.shape) for n in noise] == [tuple(getattr(generator.noises, f"noise_{i}").shape)
                                              for i in range(generator.num_layers)]
    z = torch.randn(2, 8)
    with torch.no_grad():
        assert torch.equal(generator([z], noise=noise)[0], generator([z], noise=noise)[0])
        assert not torch.equal(generator([z])[0], generator([z])[0])  # fresh noise each call


def test_wrong_style_shapes_are_value_errors() -> None:
    generator = Generator(**TINY)
    with pytest.raises(ValueError, match=r"\[N,8\]"):
        generator([torch.randn(2, 9)])
    with pytest.raises(ValueError, match="list"):
        generator(torch.randn(2, 8))
    with pytest.raises(ValueError, match="noise"):
        generator([torch.randn(2, 8)], noise=[None])
    with pytest.raises(ValueError, match=r"\[N,8\]"):  # W+ needs input_is_latent
        generator([torch.randn(2, generator.n_latent, 8)])


# ---------------------------------------------------------------------------- discriminator
def test_the_discriminator_gives_one_logit_per_image_and_checks_its_input() -> None:
    discriminator = Discriminator(size=16, channels=[8, 6, 4])
    assert discriminator(torch.randn(8, 3, 16, 16)).shape == (8, 1)
    assert discriminator(torch.randn(2, 3, 16, 16)).shape == (2, 1)
    with pytest.raises(ValueError, match="divisible"):
        discriminator(torch.randn(6, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\[N,3,16,16\]"):
        discriminator(torch.randn(4, 3, 32, 32))
    keys = set(discriminator.state_dict())
    assert {"convs.0.0.weight", "convs.0.1.bias", "convs.1.conv2.0.kernel", "convs.1.skip.1.weight",
            "final_conv.0.weight", "final_linear.1.bias"} <= keys


def test_the_modulated_convolution_is_a_per_image_demodulated_convolution() -> None:
    from fsr_core.networks.stylegan2 import ModulatedConv2d

    conv = ModulatedConv2d(4, 5, 3, 8)
    with torch.no_grad():
        conv.modulation.bias.add_(torch.randn(4))
    x, style = torch.randn(3, 4, 6, 6), torch.randn(3, 8)
    out = conv(x, style)
    scales = conv.modulation(style)  # [3, 4]
    for i in range(3):
        weight = conv.weight[0] / 6.0 * scales[i].view(1, 4, 1, 1)  # 1/sqrt(4 * 3 * 3) = 1/6
        weight = weight / weight.square().sum(dim=(1, 2, 3), keepdim=True).add(1e-8).sqrt()
        expected = torch.nn.functional.conv2d(x[i:i + 1], weight, padding=1)
        assert torch.allclose(out[i:i + 1], expected, atol=1e-5)
    up = ModulatedConv2d(4, 5, 3, 8, upsample=True)
    assert up(x, style).shape == (3, 5, 12, 12)


def test_checkpoints_load_from_s3_as_a_file_or_a_checkpoint_folder(s3_bucket) -> None:
    import io

    from fsr_core import storage
    from fsr_core.networks.stylegan2 import CHECKPOINT_FILE

    generator = _perturbed(Generator(**TINY))
    buffer = io.BytesIO()
    torch.save({"g_ema": generator.state_dict(), "latent_avg": torch.zeros(8)}, buffer)
    data = buffer.getvalue()
    storage.write_bytes(f"{s3_bucket}/priors/prior.pt", data)
    storage.write_bytes(f"{s3_bucket}/run/checkpoint/{CHECKPOINT_FILE}", data)
    z = torch.randn(2, 8)
    with torch.no_grad():
        expected = generator([z], randomize_noise=False)[0]
        for location in (f"{s3_bucket}/priors/prior.pt", f"{s3_bucket}/run/checkpoint"):
            loaded, _ = load_stylegan2_checkpoint(location, sha256=hashlib.sha256(data).hexdigest())
            assert torch.equal(loaded([z], randomize_noise=False)[0], expected)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_stylegan2_checkpoint(f"{s3_bucket}/priors/absent.pt")


def test_the_unfused_modulated_convolution_computes_the_same_images() -> None:
    from fsr_core.networks.stylegan2 import set_fused_modconv

    generator = _perturbed(Generator(**TINY))
    noise, w_plus = generator.make_noise(), torch.randn(3, generator.n_latent, 8)
    with torch.no_grad():
        fused = generator([w_plus], input_is_latent=True, noise=noise)[0]
        unfused = set_fused_modconv(generator, False)([w_plus], input_is_latent=True, noise=noise)[0]
    assert all(not m.fused for m in generator.modules() if hasattr(m, "fused"))
    assert torch.allclose(fused, unfused, atol=1e-5) and not torch.equal(fused, torch.zeros_like(fused))
