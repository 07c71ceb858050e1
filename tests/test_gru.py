"""The GRU with a hand-written backward pass computes what nn.GRU computes, gradients included."""

import pytest
import torch
from torch import nn

from robolearn.nets.gru import gru_sequence


def _outputs_and_gradients(run, gru, inputs, hidden, weights):
    leaves = [inputs, hidden, *gru.parameters()]
    for leaf in leaves:
        leaf.grad = None
    out, last = run()
    # Weighted sums reach every output and the last state through distinct paths.
    ((out * weights[0]).sum() + (last * weights[1]).sum()).backward()
    return [out.detach(), last.detach()] + [leaf.grad.clone() for leaf in leaves]


def test_matches_nn_gru_values_and_gradients_in_float64():
    torch.manual_seed(0)
    gru = nn.GRU(6, 5, batch_first=True).double()
    inputs = torch.randn(4, 30, 6, dtype=torch.double, requires_grad=True)
    hidden = torch.randn(4, 5, dtype=torch.double, requires_grad=True)
    weights = torch.randn(4, 30, 5, dtype=torch.double), torch.randn(4, 5, dtype=torch.double)
    ours = _outputs_and_gradients(
        lambda: gru_sequence(gru, inputs, hidden), gru, inputs, hidden, weights
    )
    reference = _outputs_and_gradients(
        lambda: (lambda out, last: (out, last[0]))(*gru(inputs, hidden[None])),
        gru,
        inputs,
        hidden,
        weights,
    )
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradcheck():
    torch.manual_seed(1)
    gru = nn.GRU(3, 4, batch_first=True).double()
    inputs = torch.randn(2, 6, 3, dtype=torch.double, requires_grad=True)
    hidden = torch.randn(2, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h: gru_sequence(gru, x, h), (inputs, hidden))


def test_an_expanded_initial_state_gets_the_summed_gradient():
    """The student starts every episode from one learned state expanded over the batch."""
    torch.manual_seed(2)
    gru = nn.GRU(3, 4, batch_first=True).double()
    inputs = torch.randn(5, 7, 3, dtype=torch.double)
    start = torch.randn(4, dtype=torch.double, requires_grad=True)
    gru_sequence(gru, inputs, start.expand(5, 4))[0].sum().backward()
    ours, start.grad = start.grad, None
    gru(inputs, start.expand(1, 5, 4).contiguous())[0].sum().backward()
    torch.testing.assert_close(ours, start.grad)


def test_rejects_layouts_it_does_not_implement():
    with pytest.raises(ValueError, match="one unidirectional batch-first layer"):
        gru_sequence(nn.GRU(3, 4), torch.zeros(2, 5, 3), torch.zeros(2, 4))
