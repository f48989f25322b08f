"""SegmentedBatchNorm2d against separate nn.BatchNorm2d passes (outputs, gradients, running stats)."""

import copy

import pytest
import torch
import torch.nn as nn

from adautomix_fast.step.segmented_bn import (
    SegmentedBatchNorm2d,
    convert_batchnorm,
    segmented_norms,
    set_segment_size,
    snapshot_batch_stats,
)


def make_pair(c=6, momentum=0.1, seed=0):
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(c, momentum=momentum)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    seg = convert_batchnorm(nn.Sequential(copy.deepcopy(bn)))[0]
    assert isinstance(seg, SegmentedBatchNorm2d)
    return bn, seg


@pytest.mark.parametrize("segments", [1, 2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_segments_equal_separate_passes(segments, channels_last, momentum):
    b, c = 5, 6
    bn, seg = make_pair(c, momentum)
    seg.segment_size = b
    g = torch.Generator().manual_seed(1)
    parts = [torch.randn(b, c, 4, 3, generator=g) * (i + 1) + i for i in range(segments)]
    if channels_last:
        parts = [p.contiguous(memory_format=torch.channels_last) for p in parts]
    upstream = torch.randn(segments * b, c, 4, 3, generator=g)

    sep_in = [p.clone().requires_grad_() for p in parts]
    sep_out = torch.cat([bn(p) for p in sep_in])
    (sep_out * upstream).sum().backward()

    cat_in = torch.cat([p.clone() for p in parts]).requires_grad_()
    seg_out = seg(cat_in)
    (seg_out * upstream).sum().backward()

    torch.testing.assert_close(seg_out, sep_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cat_in.grad, torch.cat([p.grad for p in sep_in]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(seg.weight.grad, bn.weight.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(seg.bias.grad, bn.bias.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(seg.running_mean, bn.running_mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(seg.running_var, bn.running_var, atol=1e-6, rtol=1e-6)
    assert int(seg.num_batches_tracked) == int(bn.num_batches_tracked) == segments
    if channels_last:
        assert seg_out.is_contiguous(memory_format=torch.channels_last)


def test_eval_mode_and_state_dict_are_those_of_batchnorm():
    bn, seg = make_pair()
    assert list(seg.state_dict()) == list(bn.state_dict())
    bn.eval(), seg.eval()
    x = torch.randn(7, 6, 3, 3)
    torch.testing.assert_close(seg(x), bn(x))


def test_bf16_input_computes_statistics_in_fp32():
    bn, seg = make_pair()
    x = torch.randn(8, 6, 4, 4)
    out = seg(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), bn(x.bfloat16().float()), atol=2e-2, rtol=2e-2)


def test_replay_equals_running_permuted_batches_again():
    """Replaying the clean batch's statistics N times = N more forwards on permutations of it
    (the reference's cosine-source passes on x[pi_i])."""
    bn, seg = make_pair()
    g = torch.Generator().manual_seed(2)
    x, other = torch.randn(6, 6, 4, 4, generator=g), torch.randn(6, 6, 4, 4, generator=g)
    seg(x)
    stats = snapshot_batch_stats([seg])
    seg(other)
    seg.replay_running_stats(*stats[0], times=3)
    bn(x)
    bn(other)
    for _ in range(3):
        bn(x[torch.randperm(6, generator=g)])
    torch.testing.assert_close(seg.running_mean, bn.running_mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(seg.running_var, bn.running_var, atol=1e-6, rtol=1e-6)
    assert int(seg.num_batches_tracked) == int(bn.num_batches_tracked) == 5


def test_convert_keeps_parameters_and_optimizer_references():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    convert_batchnorm(model)
    assert len(segmented_norms(model)) == 2
    assert all(a is b for a, b in zip(params, model.parameters()))
    set_segment_size(model, 2)
    assert all(m.segment_size == 2 for m in segmented_norms(model))
    model(torch.randn(4, 3, 5, 5)).sum().backward()
    opt.step()
    with pytest.raises(ValueError, match="not a multiple of the segment size 2"):
        model(torch.randn(3, 3, 5, 5))
