"""MTAN against a transcription of the lineage's SegNetMtan: parameter counts, weights, outputs."""

from __future__ import annotations

import pytest
import torch

from sage_bench.models.mtan import MTAN, NARROW_FILTERS, mtan
from sage_bench.mtl.tasks import Task, depth, normal, segmentation
from tests.reference.mtan import SegNetMtan

NYU = [segmentation(13), depth(), normal()]
CITY = [segmentation(7), depth()]


def _count(params) -> int:
    return sum(p.numel() for p in params)


@pytest.mark.parametrize("tasks, total, attention, heads", [(NYU, 44_229_073, 8_953_728, 111_889), (CITY, 41_206_984, 5_969_152, 74_376)])
def test_parameter_counts_of_the_paper_model(tasks, total, attention, heads):
    with torch.device("meta"):
        net = MTAN(tasks)
    assert _count(net.parameters()) == total
    assert _count(net.encoder_att.parameters()) + _count(net.decoder_att.parameters()) == attention
    assert sum(_count(net.task_parameters(t.name)) for t in tasks) == heads
    assert _count(net.shared_parameters()) == total - heads  # the attention modules count as shared
    if tasks is NYU:
        shared = net.shared_parameters()
        assert len(shared) == 396 - 12 and sum(p.ndim >= 2 for p in net.parameters()) == 102


@pytest.mark.parametrize("tasks", [NYU, CITY], ids=["nyu", "city"])
def test_same_seed_same_weights_and_outputs_as_the_lineage(tasks):
    n_tasks, classes = len(tasks), tasks[0].channels
    torch.manual_seed(7)
    theirs = SegNetMtan(n_tasks=n_tasks, class_nb=classes, filter=NARROW_FILTERS).double()
    torch.manual_seed(7)
    ours = MTAN(tasks, filters=NARROW_FILTERS).double()
    # parameters in the same order, same values; names map pred_task{k} -> pred.<task>
    pairs = list(zip(ours.named_parameters(), theirs.segnet.named_parameters(), strict=True))
    for (name, p), (their_name, q) in pairs:
        assert p.shape == q.shape, (name, their_name)
        assert torch.equal(p, q), (name, their_name)
    assert [p.data_ptr() for p in ours.shared_parameters()] == [
        dict(ours.named_parameters())[n].data_ptr() for n, _ in ours.named_parameters() if "pred" not in n
    ]
    for mode in ("train", "eval"):
        ours.train(mode == "train")
        theirs.train(mode == "train")
        x = torch.randn(2, 3, 32, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        out = ours(x)
        expected = theirs(x)
        assert list(out) == [t.name for t in tasks]
        for task, e in zip(tasks, expected, strict=True):
            assert torch.allclose(out[task.name], e, rtol=0, atol=1e-12), task.name
        for b_ours, b_theirs in zip(ours.buffers(), theirs.buffers(), strict=True):
            assert torch.allclose(b_ours.double(), b_theirs.double())


def test_shared_gradient_of_one_task_is_zero_on_other_tasks_attention():
    torch.manual_seed(0)
    net = mtan(NYU, "narrow")
    out = net(torch.randn(2, 3, 32, 32))
    names = [n for n, _ in net.named_parameters() if "pred" not in n]
    grads = torch.autograd.grad(out["depth"].mean(), net.shared_parameters(), allow_unused=True)
    for name, g in zip(names, grads, strict=True):
        attention = name.startswith(("encoder_att.", "decoder_att."))
        other_attention = attention and ".depth." not in name
        assert (g is None) == other_attention, name


def test_task_parameters_and_errors():
    net = mtan([Task("a", "depth", 1), Task("b", "normal", 3)], "narrow", in_channels=1)
    assert [p.shape for p in net.task_parameters("b")][-2][0] == 3
    out = net(torch.randn(1, 1, 32, 64))
    assert out["b"].norm(dim=1).allclose(torch.ones(1, 32, 64))
    with pytest.raises(KeyError, match="tasks: a, b"):
        net.task_parameters("c")
    with pytest.raises(ValueError, match="last two equal"):
        MTAN(NYU, filters=(8, 16, 32, 64, 32))
    with pytest.raises(ValueError, match="valid choices: paper, narrow"):
        mtan(NYU, "wide")
