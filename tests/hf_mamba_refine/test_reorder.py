"""SoftSort and the importance reordering module."""

import pytest
import torch

from hf_mamba_refine import ImportanceReorder, soft_sort


def test_hard_soft_sort_is_the_sorting_permutation() -> None:
    scores = torch.randn(3, 7)
    permutation = soft_sort(scores, tau=1.0, hard=True)
    assert torch.equal(permutation.sum(-1), torch.ones(3, 7))
    assert torch.equal(permutation.sum(-2), torch.ones(3, 7))
    assert set(permutation.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(permutation @ scores.unsqueeze(-1), scores.sort(-1).values.unsqueeze(-1))


def test_soft_sort_tends_to_the_permutation_as_tau_vanishes() -> None:
    scores = torch.randn(2, 6) * 3
    hard = soft_sort(scores, hard=True).detach()
    soft = soft_sort(scores, tau=1.0)
    assert torch.allclose(soft.sum(-1), torch.ones(2, 6))
    assert (soft - hard).abs().max() > 1e-2
    torch.testing.assert_close(soft_sort(scores, tau=1e-4), hard)


def test_soft_sort_puts_tokens_in_increasing_order_of_score() -> None:
    """Row k of P picks (softly) the token of k-th smallest score: a known case, and P @ s increasing."""
    scores = torch.tensor([2.0, -1.0, 5.0, 0.5])
    expected = torch.tensor([[0.0, 1, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 1, 0]])
    torch.testing.assert_close(soft_sort(scores, tau=1e-3), expected)
    batch = torch.randn(4, 9) * 2
    ordered = (soft_sort(batch, tau=1.0) @ batch.unsqueeze(-1)).squeeze(-1)
    assert bool((ordered.diff(dim=-1) > 0).all())


def test_hard_soft_sort_passes_gradients_straight_through() -> None:
    scores = torch.randn(2, 5, requires_grad=True)
    values = torch.randn(2, 5, 1)
    (soft_sort(scores, tau=0.5, hard=True) @ values).pow(2).sum().backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0


@pytest.mark.parametrize("hard", [False, True])
def test_importance_reorder_gradients_reach_the_scorer(hard: bool) -> None:
    reorder = ImportanceReorder(time_step_rank=3, tau=0.5, hard=hard)
    x = torch.randn(2, 6, 8)
    s_delta = torch.randn(3, 8)
    (reorder(x, s_delta) * torch.randn(2, 6, 8)).sum().backward()
    assert reorder.scorer.weight.grad.abs().sum() > 0


def test_importance_reorder_hard_sorts_tokens_by_score() -> None:
    reorder = ImportanceReorder(time_step_rank=2, hard=True)
    x, s_delta = torch.randn(2, 6, 4), torch.randn(2, 4)
    order = reorder.scores(x, s_delta).argsort(-1)
    expected = torch.gather(x, 1, order[..., None].expand_as(x))
    torch.testing.assert_close(reorder(x, s_delta), expected)


def test_tau_must_be_positive() -> None:
    with pytest.raises(ValueError, match="tau must be positive"):
        ImportanceReorder(2, tau=0.0)
    with pytest.raises(ValueError, match="tau must be positive"):
        soft_sort(torch.randn(3), tau=-1.0)
