import pytest
import torch
from torch import nn

from fsr_core.networks.blocks import ChannelAttention, ResidualChannelAttentionBlock, SelfAttention


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_self_attention_with_zero_gamma_is_identity() -> None:
    attention = SelfAttention(channels=16)
    x = torch.randn(2, 16, 5, 7)
    assert attention.gamma.item() == 0.0
    assert torch.equal(attention(x), x)


def test_self_attention_matches_sagan_formula() -> None:
    attention = SelfAttention(channels=16)
    with torch.no_grad():
        attention.gamma.fill_(0.7)
    x = torch.randn(2, 16, 4, 6)
    query = attention.query(x).flatten(2)  # [N, C/8, HW]
    key = attention.key(x).flatten(2)
    value = attention.value(x).flatten(2)  # [N, C, HW]
    weights = torch.softmax(query.transpose(1, 2) @ key, dim=-1)  # [N, HW query, HW key], rows sum to 1
    expected = x + 0.7 * (value @ weights.transpose(1, 2)).view_as(x)
    torch.testing.assert_close(attention(x), expected, rtol=1e-5, atol=1e-5)
    assert attention.query.out_channels == 2


def test_self_attention_gradients_match_the_formula_at_the_demo_size() -> None:
    """32x32 positions x 16 channels (the demo L2H's attention, where the padded query and key take
    the fused kernel): output and every gradient equal the plain softmax formula's."""
    attention = SelfAttention(channels=16)
    with torch.no_grad():
        attention.gamma.fill_(0.5)
    x = torch.randn(2, 16, 32, 32, requires_grad=True)
    fused = attention(x)
    fused.square().mean().backward()
    grads = [x.grad.clone()] + [p.grad.clone() for p in attention.parameters()]
    x.grad = None
    attention.zero_grad()
    query, key, value = (getattr(attention, name)(x).flatten(2) for name in ("query", "key", "value"))
    weights = torch.softmax(query.transpose(1, 2) @ key, dim=-1)
    expected = x + attention.gamma * (value @ weights.transpose(1, 2)).view_as(x)
    expected.square().mean().backward()
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, [x.grad] + [p.grad for p in attention.parameters()]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_self_attention_key_channels_at_least_one() -> None:
    attention = SelfAttention(channels=4)
    assert attention.query.out_channels == attention.key.out_channels == 1
    assert attention(torch.randn(1, 4, 3, 3)).shape == (1, 4, 3, 3)


def test_channel_attention_scales_each_channel_by_weight_in_unit_interval() -> None:
    attention = ChannelAttention(channels=12, reduction=4)
    x = torch.randn(3, 12, 6, 6) * 5
    weights = attention.channel_weights(x)
    assert weights.shape == (3, 12, 1, 1)
    assert bool(((weights > 0) & (weights < 1)).all())
    torch.testing.assert_close(attention(x), x * weights)
    # the weights depend on the per-channel means only: a spatial permutation leaves them unchanged
    permuted = x.flatten(2)[..., torch.randperm(36)].view_as(x)
    torch.testing.assert_close(attention.channel_weights(permuted), weights)


def test_channel_attention_hidden_width_at_least_one() -> None:
    attention = ChannelAttention(channels=8, reduction=16)
    assert attention.squeeze.out_channels == 1


def test_rcab_is_identity_plus_residual() -> None:
    block = ResidualChannelAttentionBlock(channels=8, reduction=4)
    x = torch.randn(2, 8, 6, 6)
    out = block(x)
    assert out.shape == x.shape
    assert not torch.equal(out, x)
    with torch.no_grad():
        block.conv2.weight.zero_()
        block.conv2.bias.zero_()
    assert torch.equal(block(x), x)


def test_rcab_has_no_normalization_and_all_parameters_get_gradients() -> None:
    block = ResidualChannelAttentionBlock(channels=8, reduction=4)
    norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    assert not any(isinstance(module, norm_types) for module in block.modules())
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    (block(x) * torch.randn(2, 8, 5, 5)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, parameter in block.named_parameters():
        assert parameter.grad is not None, name
        # the hidden units may all sit in the dead half of their ReLU, zeroing these weights' gradients
        if not name.endswith(("squeeze.weight", "squeeze.bias", "excite.weight")):
            assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "module",
    [
        SelfAttention(channels=8),
        ChannelAttention(channels=8, reduction=4),
        ResidualChannelAttentionBlock(channels=8, reduction=4),
    ],
    ids=["self_attention", "channel_attention", "rcab"],
)
@pytest.mark.parametrize("shape", [(2, 4, 5, 5), (8, 5, 5), (2, 8, 5, 5, 1)], ids=["channels", "3d", "5d"])
def test_blocks_reject_wrong_input(module: nn.Module, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        module(torch.randn(*shape))


@pytest.mark.parametrize("cls", [SelfAttention, ChannelAttention, ResidualChannelAttentionBlock])
def test_blocks_reject_bad_constructor_arguments(cls: type[nn.Module]) -> None:
    with pytest.raises(ValueError):
        cls(channels=0)


def test_equal_conv_scales_unit_weights_by_he_constant_at_run_time() -> None:
    import math

    import torch.nn.functional as F

    from fsr_core.networks.blocks import EqualConv2d

    conv = EqualConv2d(in_channels=4, out_channels=6, kernel_size=3, bias_init=0.5)
    assert conv.weight.std().item() == pytest.approx(1.0, abs=0.15)  # stored N(0, 1)
    x = torch.randn(2, 4, 5, 5)
    expected = F.conv2d(x, conv.weight * math.sqrt(2.0) / math.sqrt(4 * 9), torch.full((6,), 0.5), padding=1)
    torch.testing.assert_close(conv(x), expected)
    # unit-variance input keeps about He's output variance (2 x) before the non-linearity
    big = EqualConv2d(in_channels=64, out_channels=64, kernel_size=3, bias=False)
    assert big(torch.randn(8, 64, 8, 8)).var().item() == pytest.approx(2.0, rel=0.25)
    with pytest.raises(ValueError, match="4 channels"):
        conv(torch.randn(2, 3, 5, 5))


def test_equal_linear_by_hand() -> None:
    import math

    from fsr_core.networks.blocks import EqualLinear

    linear = EqualLinear(in_features=8, out_features=3, gain=1.0)
    x = torch.randn(5, 8)
    torch.testing.assert_close(linear(x), x @ (linear.weight / math.sqrt(8)).T + linear.bias)
    assert torch.equal(linear.bias, torch.zeros(3))
    with pytest.raises(ValueError, match=r"\[N,8\]"):
        linear(torch.randn(5, 8, 1))
