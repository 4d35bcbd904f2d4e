"""The centre loss and the centre update rule of Wen et al. 2016 on hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from fsr_core.losses.centre import centre_differences, centre_loss, update_centres


def test_features_on_their_centres_give_zero_loss_and_no_update() -> None:
    centres = torch.tensor([[1.0, 2.0], [-3.0, 0.5], [0.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    features = centres[labels].clone()
    assert float(centre_loss(features, labels, centres)) == 0.0
    sums, counts = centre_differences(features, labels, centres)
    assert torch.equal(update_centres(centres, sums, counts, alpha=0.5), centres)


def test_a_two_d_case_by_hand() -> None:
    centres = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    features = torch.tensor([[3.0, 4.0], [1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    labels = torch.tensor([0, 1, 0])
    # ||(3,4)-(0,0)||^2 = 25, ||(1,2)-(1,1)||^2 = 1, ||(0,1)-(0,0)||^2 = 1: (25 + 1 + 1) / (2 * 3) = 4.5
    loss = centre_loss(features, labels, centres)
    assert float(loss.detach()) == pytest.approx(4.5)
    loss.backward()  # d/dx_i = (x_i - c_{y_i}) / M
    assert torch.allclose(features.grad, torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 1.0]]) / 3)


def test_the_update_moves_a_centre_by_alpha_times_its_difference_sum_over_one_plus_count() -> None:
    centres = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    features = torch.tensor([[3.0, 4.0], [1.0, 2.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 0])
    sums, counts = centre_differences(features, labels, centres)
    assert torch.equal(counts, torch.tensor([2.0, 1.0, 0.0]))
    assert torch.equal(sums, torch.tensor([[-3.0, -5.0], [0.0, -1.0], [0.0, 0.0]]))
    new = update_centres(centres, sums, counts, alpha=0.5)
    # class 0: delta = ((0,0)-(3,4) + (0,0)-(0,1)) / (1 + 2) = (-1, -5/3); c <- c - 0.5 delta
    assert torch.allclose(new[0], torch.tensor([0.5, 5.0 / 6.0]))
    assert torch.allclose(new[1], torch.tensor([1.0, 1.25]))  # delta = (0, -1) / 2
    assert torch.equal(new[2], centres[2])  # absent from the batch: unchanged
    # alpha = 1 with many samples approaches the batch mean of the class
    many = torch.tensor([[2.0, 0.0]] * 999)
    sums, counts = centre_differences(many, torch.zeros(999, dtype=torch.long), centres)
    assert torch.allclose(update_centres(centres, sums, counts, alpha=1.0)[0], torch.tensor([1.998, 0.0]))


def test_the_loss_does_not_train_the_centres() -> None:
    centres = torch.zeros(2, 3, requires_grad=True)
    features = torch.ones(2, 3, requires_grad=True)
    centre_loss(features, torch.tensor([0, 1]), centres).backward()
    assert features.grad is not None
    assert centres.grad is None


def test_wrong_inputs_are_value_errors() -> None:
    centres = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="labels must be in"):
        centre_loss(torch.zeros(2, 3), torch.tensor([0, 2]), centres)
    with pytest.raises(ValueError, match="labels must be in"):
        centre_loss(torch.zeros(2, 3), torch.tensor([-1, 0]), centres)
    with pytest.raises(ValueError, match="features"):
        centre_loss(torch.zeros(2, 4), torch.tensor([0, 1]), centres)
    with pytest.raises(ValueError, match="integer labels"):
        centre_loss(torch.zeros(2, 3), torch.tensor([0.0, 1.0]), centres)
    with pytest.raises(ValueError, match="alpha"):
        update_centres(centres, centres, torch.zeros(2), alpha=1.5)
