"""CR networks: shapes, errors, the regulariser starting as the identity, rebuild from the registry,
and the paper configuration's parameter count against the paper's 2.7 M."""

from __future__ import annotations

import pytest
import torch

from fsr_core.networks import build_network, network_spec
from fsr_core.networks.cr import (
    CharacteristicRegulariser,
    CRSuperResolver,
    FeatureDiscriminator,
    LRDomainDiscriminator,
    parameter_count,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_regulariser_keeps_the_size_and_starts_as_the_identity() -> None:
    net = CharacteristicRegulariser(channels=8, num_blocks=2)
    lr = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(net(lr), lr)  # zero-initialised tail: an untrained phi_cr changes nothing
    with torch.no_grad():
        net.tail.bias.fill_(0.5)
    out = net(lr)
    assert out.shape == (2, 3, 16, 16)
    torch.testing.assert_close(out, lr + 0.5)
    assert net(torch.zeros(1, 3, 7, 5)).shape == (1, 3, 7, 5)  # any size


def test_super_resolver_scales_by_two_per_group_after_the_first() -> None:
    for groups, scale in (((1,), 1), ((1, 1), 2), ((2, 1, 1), 4), ((1, 0, 0, 1), 8)):
        net = CRSuperResolver(channels=8, blocks_per_group=groups)
        assert net.scale == scale
        assert net(torch.zeros(2, 3, 16, 16)).shape == (2, 3, 16 * scale, 16 * scale)


def test_super_resolver_global_residual_adds_the_bilinear_upsampling() -> None:
    net = CRSuperResolver(channels=8, blocks_per_group=(1, 1, 1), global_residual=True)
    with torch.no_grad():
        net.tail.weight.zero_()
        net.tail.bias.zero_()
    lr = torch.rand(1, 3, 16, 16)
    expected = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bilinear", align_corners=False)
    torch.testing.assert_close(net(lr), expected)


def test_discriminators_give_one_logit_per_input() -> None:
    disc = LRDomainDiscriminator(input_size=16, channels=8, num_blocks=6, num_downsamples=3, max_channels=16)
    assert disc(torch.zeros(3, 3, 16, 16)).shape == (3, 1)
    # the last three blocks halve the size: 16 -> 2 px, widths 8 -> 16 -> 16 -> 16
    assert disc.fc.in_features == 16 * 2 * 2
    feature = FeatureDiscriminator(feature_dim=12, hidden=8, num_layers=5)
    assert feature(torch.zeros(4, 12)).shape == (4, 1)
    assert sum(isinstance(m, torch.nn.Linear) for m in feature.modules()) == 5


def test_wrong_inputs_and_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="channels"):
        CharacteristicRegulariser(channels=4)(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="float"):
        CharacteristicRegulariser(channels=4)(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[N,3,16,16\]"):
        LRDomainDiscriminator(channels=4)(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[N,12\]"):
        FeatureDiscriminator(feature_dim=12)(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="4-D"):
        CRSuperResolver(channels=4, blocks_per_group=(1, 1))(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="divisible"):
        LRDomainDiscriminator(input_size=12, num_downsamples=3)
    with pytest.raises(ValueError, match="num_downsamples"):
        LRDomainDiscriminator(num_blocks=2, num_downsamples=3)
    with pytest.raises(ValueError, match="blocks_per_group"):
        CRSuperResolver(blocks_per_group=())
    with pytest.raises(ValueError, match="num_layers"):
        FeatureDiscriminator(num_layers=0)


def test_networks_rebuild_from_their_registered_spec() -> None:
    for net in (CharacteristicRegulariser(channels=4, num_blocks=1),
                LRDomainDiscriminator(input_size=8, channels=4, num_blocks=2, num_downsamples=1),
                CRSuperResolver(channels=4, blocks_per_group=[1, 1]),
                FeatureDiscriminator(feature_dim=6, hidden=4, num_layers=2)):
        spec = network_spec(net)
        assert spec["class"].startswith("cr_")
        rebuilt = build_network(spec)
        assert type(rebuilt) is type(net) and rebuilt.config == net.config
        rebuilt.load_state_dict(net.state_dict())


def test_paper_configuration_parameter_count() -> None:
    """The paper reports 2.7 M parameters for CR (it does not say which networks count). The
    reading here (width 64, SRGAN-like phi_sr without BatchNorm, 3-block phi_cr and phi~_cr):"""
    sr = parameter_count(CRSuperResolver())
    cr = parameter_count(CharacteristicRegulariser())
    deployed, with_inverse = sr + cr, sr + 2 * cr
    print(f"\nCR parameters: phi_sr {sr / 1e6:.2f} M, phi_cr {cr / 1e6:.3f} M; deployed phi_cr + phi_sr "
          f"{deployed / 1e6:.2f} M, with phi~_cr {with_inverse / 1e6:.2f} M; paper: 2.7 M")
    assert sr == 1_694_211 and cr == 225_091
    assert 1.5e6 < deployed < 2.7e6
