import json

import pytest
import torch
from torch import nn

from fsr_core.networks import build_network, network_class, network_name, network_spec
from fsr_core.networks.blocks import SelfAttention
from fsr_core.networks.two_step import (
    H2LDiscriminator,
    H2LGenerator,
    L2HDiscriminator,
    L2HGenerator,
)

NETWORKS = {name: network_class(name) for name in
            ("l2h_generator", "l2h_discriminator", "h2l_generator", "h2l_discriminator")}

TINY = dict(
    l2h_generator=dict(channels=8, blocks_per_section=(1, 1, 1, 1), reduction=4),
    l2h_discriminator=dict(channels=8, max_channels=16),
    h2l_generator=dict(channels=8, noise_dim=4, reduction=4, decoder_blocks=3),
    h2l_discriminator=dict(channels=8, max_channels=16),
)
# (input shape, output shape) for each tiny network
SHAPES = dict(
    l2h_generator=((2, 3, 16, 16), (2, 3, 128, 128)),
    l2h_discriminator=((2, 3, 128, 128), (2, 1, 8, 8)),
    h2l_generator=((2, 3, 128, 128), (2, 3, 16, 16)),
    h2l_discriminator=((2, 3, 16, 16), (2, 1, 8, 8)),
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _images(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.rand(*shape) * 2 - 1


def _tiny(name: str) -> nn.Module:
    return NETWORKS[name](**TINY[name])


def test_registry_names_the_four_networks() -> None:
    assert NETWORKS == {
        "l2h_generator": L2HGenerator,
        "l2h_discriminator": L2HDiscriminator,
        "h2l_generator": H2LGenerator,
        "h2l_discriminator": H2LDiscriminator,
    }
    for name, cls in NETWORKS.items():
        assert network_name(cls) == name
    with pytest.raises(KeyError, match="unknown network 'nope'"):
        network_class("nope")


def test_config_is_recorded_by_shared_machinery() -> None:
    """Constructor arguments with defaults filled in, JSON types; the outermost constructor wins
    (the discriminators call their base's constructor with more arguments)."""
    net = L2HDiscriminator(channels=8, max_channels=16)
    assert net.config == {"channels": 8, "num_layers": 4, "num_downsamples": 4, "attention_layers": 2,
                          "max_channels": 16}
    gen = L2HGenerator(channels=8, blocks_per_section=(1, 2))
    assert gen.config["blocks_per_section"] == [1, 2] and gen.config["global_residual"] is False
    spec = network_spec(gen)
    assert spec == {"class": "l2h_generator", "kwargs": gen.config}
    rebuilt = build_network(json.loads(json.dumps(spec)))
    assert type(rebuilt) is L2HGenerator and rebuilt.config == gen.config


@pytest.mark.parametrize("name", list(NETWORKS))
def test_output_shapes(name: str) -> None:
    in_shape, out_shape = SHAPES[name]
    assert _tiny(name)(_images(in_shape)).shape == out_shape


@pytest.mark.parametrize("name", ["l2h_generator", "h2l_generator"])
def test_generator_outputs_lie_in_minus_one_one(name: str) -> None:
    net = _tiny(name)
    with torch.no_grad():  # push the pre-activation far out to reach saturation
        net.tail.weight.mul_(1e3)
    out = net(_images(SHAPES[name][0]))
    assert out.abs().max() > 0.99
    assert bool((out >= -1).all() and (out <= 1).all())


@pytest.mark.parametrize("name", list(NETWORKS))
def test_networks_have_no_normalization_layers(name: str) -> None:
    norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    net = _tiny(name)
    assert not any(isinstance(module, norm_types) for module in net.modules())
    assert not any("weight_orig" in key or "parametrizations" in key for key in net.state_dict())


@pytest.mark.parametrize("name", list(NETWORKS))
@pytest.mark.parametrize("bad", ["channels", "3d", "spatial"])
def test_networks_reject_wrong_input(name: str, bad: str) -> None:
    net = _tiny(name)
    n, c, h, w = SHAPES[name][0]
    if bad == "channels":
        x = torch.zeros(n, 1, h, w)
    elif bad == "3d":
        x = torch.zeros(c, h, w)
    elif name == "l2h_generator":  # fully convolutional: only an empty image is a wrong size
        x = torch.zeros(n, c, 0, w)
    else:  # H2L generator needs exactly input_size; discriminators need sizes divisible by 2**d
        x = torch.zeros(n, c, h - 1, w - 1)
    with pytest.raises(ValueError):
        net(x)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_gradients_reach_the_input_and_every_parameter(name: str) -> None:
    net = _tiny(name)
    with torch.no_grad():  # gamma starts at 0, which zeroes the attention branch's gradients
        for module in net.modules():
            if isinstance(module, SelfAttention):
                module.gamma.fill_(0.5)
    x = _images(SHAPES[name][0]).requires_grad_()
    out = net(x)
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for param_name, parameter in net.named_parameters():
        assert parameter.grad is not None, param_name
        assert torch.isfinite(parameter.grad).all(), param_name
        # the few hidden units of a tiny net's channel attention may all sit in the dead half of
        # their ReLU, which zeroes the gradients of both 1x1 convs' weights (not their None-ness)
        if not param_name.endswith(("squeeze.weight", "squeeze.bias", "excite.weight")):
            assert parameter.grad.abs().sum() > 0, param_name


def test_gradients_are_not_none_at_initialisation() -> None:
    """DDP needs every parameter in the graph, including attention layers whose gamma is still 0."""
    net = _tiny("l2h_generator")
    net(_images((1, 3, 16, 16))).sum().backward()
    assert all(parameter.grad is not None for parameter in net.parameters())


@pytest.mark.parametrize("name", list(NETWORKS))
def test_rebuild_from_json_config_gives_same_network(name: str) -> None:
    net = _tiny(name)
    config = json.loads(json.dumps(net.config))
    rebuilt = NETWORKS[name](**config)
    assert rebuilt.config == net.config
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in net.parameters())
    rebuilt.load_state_dict(net.state_dict())
    x = _images(SHAPES[name][0])
    if name == "h2l_generator":
        noise = torch.randn(x.shape[0], net.noise_dim)
        torch.testing.assert_close(rebuilt(x, noise), net(x, noise), rtol=0, atol=0)
    else:
        torch.testing.assert_close(rebuilt(x), net(x), rtol=0, atol=0)


def test_l2h_scale_follows_number_of_sections() -> None:
    net = L2HGenerator(channels=8, blocks_per_section=(2, 1, 1), reduction=4)
    assert net.scale == 4
    assert net(_images((1, 3, 12, 10))).shape == (1, 3, 48, 40)
    single = L2HGenerator(channels=8, blocks_per_section=(1,), reduction=4, attention_after_section=(0,))
    assert single.scale == 1
    assert single(_images((1, 3, 9, 9))).shape == (1, 3, 9, 9)


def test_l2h_attention_placement_is_configurable() -> None:
    def count(net: nn.Module) -> int:
        return sum(isinstance(module, SelfAttention) for module in net.modules())

    tiny = TINY["l2h_generator"]
    assert count(L2HGenerator(**tiny)) == 1
    assert count(L2HGenerator(**tiny, attention_after_section=())) == 0
    assert count(L2HGenerator(**tiny, attention_after_section=(0, 2))) == 2
    for bad in [(4,), (-1,), (1, 1)]:
        with pytest.raises(ValueError):
            L2HGenerator(**tiny, attention_after_section=bad)


def test_l2h_attention_runs_after_the_section_at_the_configured_resolution() -> None:
    net = L2HGenerator(**TINY["l2h_generator"])
    seen: list[tuple[int, ...]] = []
    net.attention["1"].register_forward_hook(lambda module, args, out: seen.append(tuple(out.shape)))
    net(_images((1, 3, 16, 16)))
    assert seen == [(1, 8, 32, 32)]


@pytest.mark.parametrize(
    "kwargs", [dict(channels=0), dict(blocks_per_section=()), dict(blocks_per_section=(1, -1)), dict(reduction=0)]
)
def test_l2h_rejects_bad_constructor_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        L2HGenerator(**kwargs)


def test_h2l_noise_changes_output_and_same_noise_reproduces_it() -> None:
    net = _tiny("h2l_generator")
    hr = _images((2, 3, 128, 128))
    noise = torch.randn(2, net.noise_dim)
    out = net(hr, noise)
    assert torch.equal(net(hr, noise.clone()), out)
    other = net(hr, torch.randn(2, net.noise_dim))
    assert (other - out).abs().max() > 1e-6
    # drawn noise: reproducible with a torch.Generator, different between unseeded calls
    first = net(hr, generator=torch.Generator().manual_seed(3))
    assert torch.equal(net(hr, generator=torch.Generator().manual_seed(3)), first)
    assert not torch.equal(net(hr), net(hr))


def test_h2l_rejects_wrong_noise_shape() -> None:
    net = _tiny("h2l_generator")
    hr = _images((2, 3, 128, 128))
    for shape in [(2, net.noise_dim + 1), (1, net.noise_dim), (2, net.noise_dim, 1)]:
        with pytest.raises(ValueError):
            net(hr, torch.randn(*shape))


def test_h2l_draws_noise_in_the_input_dtype() -> None:
    net = _tiny("h2l_generator").double()
    out = net(_images((1, 3, 128, 128)).double())
    assert out.dtype == torch.float64


def test_h2l_geometry_is_configurable() -> None:
    net = H2LGenerator(channels=8, noise_dim=4, input_size=64, encoder_blocks=4, decoder_blocks=2, reduction=4)
    assert net.output_size == 16
    assert net(_images((1, 3, 64, 64))).shape == (1, 3, 16, 16)
    with pytest.raises(ValueError):
        net(_images((1, 3, 128, 128)))
    with pytest.raises(ValueError):
        H2LGenerator(input_size=100)  # not divisible by 2**5
    with pytest.raises(ValueError):
        H2LGenerator(decoder_blocks=1, decoder_upsample_blocks=2)


def test_h2l_skip_connections_keep_shape_and_use_every_parameter() -> None:
    net = H2LGenerator(**TINY["h2l_generator"], skip_connections=True)
    reference = H2LGenerator(**TINY["h2l_generator"])
    reference.load_state_dict(net.state_dict())
    hr = _images((2, 3, 128, 128))
    noise = torch.randn(2, net.noise_dim)
    out = net(hr, noise)
    assert out.shape == (2, 3, 16, 16)
    assert not torch.equal(out, reference(hr, noise))
    out.sum().backward()
    assert all(parameter.grad is not None for parameter in net.parameters())


def test_h2l_pixel_noise_starts_silent_then_adds_per_pixel_noise_drawn_from_the_generator() -> None:
    net = H2LGenerator(**TINY["h2l_generator"], pixel_noise=True)
    reference = H2LGenerator(**TINY["h2l_generator"])
    missing = reference.load_state_dict(net.state_dict(), strict=False)
    assert missing.unexpected_keys == ["noise_strength"]
    assert net.noise_strength.shape == (3 - 2 + 1, 8)  # the one full-resolution block and the tail
    hr = _images((2, 3, 128, 128))
    noise = torch.randn(2, net.noise_dim)
    with torch.no_grad():
        assert torch.equal(net(hr, noise), reference(hr, noise))  # zero strength: the plain generator
        net.noise_strength.fill_(0.5)
        first = net(hr, noise, generator=torch.Generator().manual_seed(1))
        again = net(hr, noise, generator=torch.Generator().manual_seed(1))
        other = net(hr, noise, generator=torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.equal(first, other)
    # independent per pixel: the difference between two draws is not one global offset
    difference = (first - other)[0, 0]
    assert float(difference.std()) > 1e-3
    net.noise_strength.data.zero_()
    net(hr, noise).sum().backward()
    assert net.noise_strength.grad is not None and float(net.noise_strength.grad.abs().sum()) > 0


@pytest.mark.parametrize("cls", [L2HDiscriminator, H2LDiscriminator])
def test_discriminators_end_with_two_self_attention_layers_and_a_logit_conv(cls: type[nn.Module]) -> None:
    net = cls(channels=8, max_channels=16)
    assert [type(m) for m in net.attention] == [SelfAttention, SelfAttention]
    assert net.logits.out_channels == 1
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == net.config["num_layers"]
    assert all(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.2 for m in net.features[1::2])


def test_discriminators_accept_other_sizes() -> None:
    assert L2HDiscriminator(channels=8, max_channels=16)(_images((1, 3, 64, 96))).shape == (1, 1, 4, 6)
    assert H2LDiscriminator(channels=8, num_downsamples=2)(_images((1, 3, 16, 16))).shape == (1, 1, 4, 4)
    with pytest.raises(ValueError):
        L2HDiscriminator(num_layers=2, num_downsamples=3)


def test_default_networks_shapes_and_parameter_counts() -> None:
    counts = {}
    for name, cls in NETWORKS.items():
        net = cls()
        counts[name] = sum(p.numel() for p in net.parameters())
        in_shape, out_shape = SHAPES[name]
        with torch.no_grad():
            assert net(_images((1, *in_shape[1:]))).shape == (1, *out_shape[1:])
    print("default parameter counts:", counts)
    # the paper reports a 34 MB L2H generator (~8.5M fp32 parameters); channels=64 gives ~1.0M
    assert 0.5e6 < counts["l2h_generator"] < 20e6


def test_l2h_global_residual_starts_from_matlab_bicubic():
    from fsr_core.degradation.resize import imresize_torch
    from fsr_core.networks.two_step import L2HGenerator

    net = L2HGenerator(channels=8, blocks_per_section=(1, 1, 1, 1), reduction=4, global_residual=True)
    torch.nn.init.zeros_(net.tail.weight)
    torch.nn.init.zeros_(net.tail.bias)
    lr = torch.rand(2, 3, 16, 16) * 1.6 - 0.8
    expected = imresize_torch(lr, scale=8.0).clamp(-1, 1)
    torch.testing.assert_close(net(lr), expected)
    assert net.config["global_residual"] is True
    rebuilt = L2HGenerator(**net.config)
    assert rebuilt.global_residual
    out = L2HGenerator(channels=8, blocks_per_section=(1, 1, 1, 1), reduction=4, global_residual=True)(lr * 50)
    assert out.min() >= -1 and out.max() <= 1


def test_h2l_global_residual_starts_from_matlab_bicubic_downsampling():
    from fsr_core.degradation.resize import imresize_torch
    from fsr_core.networks.two_step import H2LGenerator

    kwargs = dict(channels=8, noise_dim=4, input_size=32, encoder_blocks=3, decoder_blocks=2,
                  decoder_upsample_blocks=1, reduction=4, global_residual=True)
    net = H2LGenerator(**kwargs)
    torch.nn.init.zeros_(net.tail.weight)
    torch.nn.init.zeros_(net.tail.bias)
    hr = torch.rand(2, 3, 32, 32) * 1.6 - 0.8
    assert net.output_size == 8
    torch.testing.assert_close(net(hr), imresize_torch(hr, output_size=(8, 8)).clamp(-1, 1))  # any noise
    assert H2LGenerator(**net.config).global_residual and net.config["global_residual"] is True
    out = H2LGenerator(**kwargs)(hr * 50)
    assert out.shape == (2, 3, 8, 8) and out.min() >= -1 and out.max() <= 1
    assert not H2LGenerator(**{**kwargs, "global_residual": False}).global_residual  # the paper's default
