"""The mask generator G and its two reference ops (docs/algorithm.md, Generator)."""

import math

import pytest
import torch
import torch.nn.functional as F

from adautomix_fast.methods.generator import (
    MaskGenerator,
    cross_attention_mask_reference,
    mix_images,
    upsample_masks,
    upsample_softmax_mix_reference,
)


def naive_cross_attention(q, k, v, scale):
    """Loop form of paper Eq. 5: one slot, one sample at a time, sum over j != i explicitly."""
    n, b, p, d = q.shape
    out = torch.empty(n, b, p, dtype=torch.float64)
    for i in range(n):
        for s in range(b):
            k_others = sum(k[j, s].double() for j in range(n) if j != i)
            logits = q[i, s].double() @ k_others.T * scale
            out[i, s] = logits.softmax(-1) @ v[i, s].double()
    return out


@pytest.mark.parametrize("n", [2, 3, 4, 5])
@pytest.mark.parametrize("p,d", [(16, 8), (49, 12)])
def test_cross_attention_reference_matches_loop_form(n, p, d, cpu_generator):
    b = 3
    q = torch.randn(n, b, p, d, generator=cpu_generator)
    k = torch.randn(n, b, p, d, generator=cpu_generator)
    v = torch.randn(n, b, p, generator=cpu_generator)
    m = cross_attention_mask_reference(q, k, v)
    assert m.dtype == torch.float32 and m.shape == (n, b, p)
    torch.testing.assert_close(m.double(), naive_cross_attention(q, k, v, d ** -0.5), atol=1e-5, rtol=1e-5)


def test_cross_attention_computes_in_fp32_for_half_inputs(cpu_generator):
    q, k = (torch.randn(3, 2, 16, 8, generator=cpu_generator) for _ in range(2))
    v = torch.randn(3, 2, 16, generator=cpu_generator)
    m16 = cross_attention_mask_reference(q.half(), k.half(), v.half())
    assert m16.dtype == torch.float32
    ref = cross_attention_mask_reference(q.half().float(), k.half().float(), v.half().float())
    torch.testing.assert_close(m16, ref)


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("scale", [4, 16])
def test_masks_are_bilinear_upsample_then_softmax_and_sum_to_one(n, scale, cpu_generator):
    m = torch.randn(3, n, 2, 3, generator=cpu_generator)
    size = (2 * scale, 3 * scale)
    masks = upsample_masks(m, size)
    assert masks.shape == (3, n, *size)
    torch.testing.assert_close(masks.sum(1), torch.ones(3, *size))
    expected = F.interpolate(m, size=size, mode="bilinear", align_corners=False).softmax(1)
    torch.testing.assert_close(masks, expected, atol=0, rtol=0)
    nearest = upsample_masks(m, size, mode="nearest")
    torch.testing.assert_close(nearest, F.interpolate(m, size=size, mode="nearest").softmax(1), atol=0, rtol=0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_mix_images_gathers_and_keeps_memory_format(channels_last, cpu_generator):
    b, n = 5, 3
    x = torch.randn(b, 3, 8, 8, generator=cpu_generator)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    index = torch.stack([torch.randperm(b, generator=cpu_generator) for _ in range(n)])
    masks = torch.rand(b, n, 8, 8, generator=cpu_generator).softmax(1)
    out = mix_images(masks, x, index)
    expected = torch.zeros(b, 3, 8, 8)
    for s in range(b):
        for i in range(n):
            expected[s] += masks[s, i] * x[index[i, s]]
    torch.testing.assert_close(out, expected)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    # Constant ratios (the margin rule / pixel mixup): sum_i lam_i * x[index_i].
    lam = torch.tensor([0.2, 0.3, 0.5])
    torch.testing.assert_close(mix_images(lam, x, index), sum(lam[i] * x[index[i]] for i in range(n)))


@pytest.mark.parametrize("n", [2, 3, 4, 5])
@pytest.mark.parametrize("lam_concat,norm", [(False, False), (True, True)])
def test_generator_shapes_masks_and_gradients(n, lam_concat, norm, cpu_generator):
    b, c, h, w, H, W = 5, 16, 4, 4, 16, 16
    gen = MaskGenerator(c, lam_concat=lam_concat, norm=norm)
    feats = torch.randn(b, c, h, w, generator=cpu_generator)
    x = torch.randn(b, 3, H, W, generator=cpu_generator)
    index = torch.stack([torch.randperm(b, generator=cpu_generator) for _ in range(n)])
    lam = torch.rand(n, generator=cpu_generator)
    lam = lam / lam.sum()
    m = gen.mask_logits(feats, index, lam)
    assert m.shape == (b, n, h, w) and m.dtype == torch.float32
    x_mix, masks = gen(feats, x, index, lam, return_masks=True)
    assert x_mix.shape == x.shape and masks.shape == (b, n, H, W)
    torch.testing.assert_close(masks.sum(1), torch.ones(b, H, W))
    (x_mix * torch.randn_like(x_mix)).sum().backward()
    for name, p in gen.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert gen.dim == c // 2


def test_lambda_channel_changes_masks(cpu_generator):
    gen = MaskGenerator(8, lam_concat=True)
    torch.nn.init.normal_(gen.value.weight, std=1.0)  # make the lambda channel's effect visible
    feats = torch.randn(4, 8, 2, 2, generator=cpu_generator)
    index = torch.stack([torch.arange(4), torch.randperm(4, generator=cpu_generator)])
    a = gen.mask_logits(feats, index, torch.tensor([0.1, 0.9]))
    b = gen.mask_logits(feats, index, torch.tensor([0.8, 0.2]))
    assert not torch.allclose(a, b)
    plain = MaskGenerator(8, lam_concat=False)
    assert plain.query[0].in_channels == 8 and gen.query[0].in_channels == 9


def test_published_initialisation():
    gen = MaskGenerator(256, norm=True)
    convs = [gen.query[0], gen.key[0], gen.value]
    for conv in convs:
        assert abs(conv.weight.std().item() - 0.01) < 0.002
        assert abs(conv.weight.mean().item()) < 0.002
    assert gen.query[0].bias is None and gen.key[0].bias is None   # BN follows: no bias
    assert torch.count_nonzero(gen.value.bias) == 0
    assert torch.all(gen.query[1].weight == 1) and torch.all(gen.query[1].bias == 0)
    no_norm = MaskGenerator(256, norm=False)
    assert torch.count_nonzero(no_norm.query[0].bias) == 0
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in no_norm.modules())


def test_each_slot_gets_its_own_batchnorm_statistics(cpu_generator):
    """As released, with norm=True every slot is projected separately: N running-stat updates
    per call, each from that slot's B samples."""
    n, b = 3, 6
    gen = MaskGenerator(8, norm=True)
    feats = torch.randn(b, 8, 2, 2, generator=cpu_generator)
    index = torch.stack([torch.randperm(b, generator=cpu_generator) for _ in range(n)])
    lam = torch.full((n,), 1.0 / n)
    gen.mask_logits(feats, index, lam)
    assert int(gen.query[1].num_batches_tracked) == n
    assert int(gen.key[1].num_batches_tracked) == n
    # A single slot permutation of the same features: identical batch statistics, so the
    # normalised queries equal those of the identity slot permuted.
    q, _, _ = gen.project(gen.slot_inputs(feats, index, lam))
    q_id, _, _ = gen.project(gen.slot_inputs(feats, torch.arange(b).unsqueeze(0), lam[:1]))
    torch.testing.assert_close(q[0], q_id[0][index[0]])


def test_upsample_softmax_mix_reference_returns_masks_on_request(cpu_generator):
    m = torch.randn(2, 3, 2, 2, generator=cpu_generator)
    x = torch.randn(2, 3, 8, 8, generator=cpu_generator)
    index = torch.stack([torch.arange(2)] * 3)
    out = upsample_softmax_mix_reference(m, x, index)
    out2, masks = upsample_softmax_mix_reference(m, x, index, return_masks=True)
    torch.testing.assert_close(out, out2)
    # every slot takes the same image: the mix is that image
    torch.testing.assert_close(out, x)
    assert math.isclose(float(masks.sum(1).mean()), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize("n,lam_concat,norm,mode", [(2, False, False, "bilinear"), (2, True, True, "bilinear"),
                                                    (3, False, False, "bilinear"), (3, True, True, "nearest"),
                                                    (4, False, False, "bilinear")])
def test_generator_equals_the_released_mix_block_from_the_same_weights(n, lam_concat, norm, mode, cpu_generator):
    """The engine's G and a line-by-line transcription of the released AdaptiveMask (with its
    callers' mixing, tests/released_mixblock.py), loaded with the same weights and run in float64 on
    the same features, images, tuple and ratios: the same masks, the same mixed images, the same
    gradient of every generator parameter and the same BatchNorm running statistics."""
    from released_mixblock import AdaptiveMask, released_generator_mix

    b, c, h, scale = 6, 16, 4, 4
    gen = MaskGenerator(c, lam_concat=lam_concat, norm=norm, upsample=mode).double()
    with torch.no_grad():     # weights of a trained generator's size, so attention is far from uniform
        for p in gen.parameters():
            p.copy_(torch.randn(p.shape, generator=cpu_generator, dtype=torch.float64) * 0.3)
    released = AdaptiveMask(c, lam_concat=lam_concat, unsampling_mode=mode, scale_factor=scale,
                            norm=norm).double().load_from_engine(gen)
    feats = torch.randn(b, c, h, h, generator=cpu_generator, dtype=torch.float64).relu()
    x = torch.randn(b, 3, h * scale, h * scale, generator=cpu_generator, dtype=torch.float64)
    if n == 2:
        index = torch.stack([torch.arange(b), torch.randperm(b, generator=cpu_generator)])
        u = torch.rand((), generator=cpu_generator, dtype=torch.float64)
        lam = torch.stack([u, 1 - u])
    else:
        index = torch.stack([torch.randperm(b, generator=cpu_generator) for _ in range(n)])
        lam = torch.rand(n, generator=cpu_generator, dtype=torch.float64)
        lam = lam / lam.sum()
    weight = torch.randn(x.shape, generator=cpu_generator, dtype=torch.float64)

    x_ours, masks_ours = gen(feats, x, index, lam, return_masks=True)
    (x_ours * weight).sum().backward()
    x_rel, masks_rel = released_generator_mix(released, feats, x, index, lam)
    (x_rel * weight).sum().backward()

    torch.testing.assert_close(masks_ours, masks_rel, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x_ours, x_rel, rtol=1e-12, atol=1e-12)
    pairs = [(gen.query, released.conv_q), (gen.key, released.conv_k)]
    for ours, theirs in pairs:
        for (name, p), (_, r) in zip(ours.named_parameters(), theirs.named_parameters()):
            torch.testing.assert_close(p.grad, r.grad, rtol=1e-10, atol=1e-12, msg=name)
        for (name, t), (_, r) in zip(ours.named_buffers(), theirs.named_buffers()):
            torch.testing.assert_close(t, r, rtol=1e-12, atol=1e-12, msg=name)
    for p, r in zip(gen.value.parameters(), released.conv_v.parameters()):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("adversarial", [True, False])
def test_step_gives_the_generator_the_released_objectives_gradient(n, adversarial, cpu_generator):
    """The gradient that reaches every generator weight in one reference step equals the released
    classifier's: its mix block (transcribed) fed the teacher's stage-3 features, its generator-side
    mix through the teacher (train mode), L_k as ``co_loss`` and, on adversarial steps,
    -beta L_k + (1 - beta) cos with the sources' logits. Nothing else of the step (the student's
    losses, the detached classifier-side masks) may reach the generator."""
    import copy

    import torch.nn.functional as F

    from adautomix_fast import AdAutoMix

    from released_mixblock import AdaptiveMask, released_generator_mix

    torch.manual_seed(0)
    model = AdAutoMix("tiny", 10, cifar_stem=True, mix_samples=n).double().train()
    with torch.no_grad():     # a generator whose attention is not uniform, so q and k matter
        for p in model.generator.parameters():
            p.copy_(torch.randn(p.shape, generator=cpu_generator, dtype=torch.float64) * 0.1)
    model.num_updates.fill_(0 if adversarial else 1)
    teacher = copy.deepcopy(model.teacher)
    x = torch.randn(8, 3, 32, 32, generator=cpu_generator, dtype=torch.float64)
    y = torch.randint(0, 10, (8,), generator=cpu_generator)
    plan = model.sample_plan(8, generator=torch.Generator().manual_seed(3))
    plan = plan._replace(use_mixup=torch.tensor(False))     # the classifier side uses G's masks too
    model.step_losses(x, y, plan)["loss"].backward()

    feature = teacher.stem_to_stage3(x)
    block = AdaptiveMask(feature.shape[1], lam_concat=False, unsampling_mode="bilinear",
                         scale_factor=32 // feature.shape[-1]).double().load_from_engine(model.generator)
    x_mix, _ = released_generator_mix(block, feature, x, plan.index_gen, plan.lam_gen)
    pred = teacher.head_mix(teacher.pooled(x_mix))
    loss_k = sum(F.cross_entropy(pred, y[plan.index_gen[i]]) * plan.lam_gen[i] for i in range(n))
    with torch.no_grad():
        sources = [teacher.head_mix(teacher.pooled(x[plan.index_gen[i]])) for i in range(n)]
    cos = torch.mean(sum(F.cosine_similarity(pred, sources[i], dim=-1) * plan.lam_gen[i] for i in range(n)))
    (-0.3 * loss_k + 0.7 * cos if adversarial else loss_k).backward()

    theirs = {"query": block.conv_q, "key": block.conv_k, "value": block.conv_v}
    for name, p in model.generator.named_parameters():
        module, rest = name.split(".", 1)
        ref = dict(theirs[module].named_parameters())[rest]
        # The value's bias adds the same constant to every slot's logits, which the softmax over
        # the slots cancels: its gradient is 0 in both.
        assert name == "value.bias" or float(p.grad.norm()) > 0, name
        torch.testing.assert_close(p.grad, ref.grad, rtol=1e-9, atol=1e-12, msg=name)
