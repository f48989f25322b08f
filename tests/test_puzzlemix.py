"""PuzzleMix (methods/puzzlemix.py) against direct definitions: the input-gradient saliency, the
boundary data term, the graph cut's objective (computed here term by term), the transports
(brute force on small grids), the mixing and its plan, the loss, the options. Both steps and
the CLI run are in test_methods.py / test_cli_methods.py (they pick up every method)."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("gco")

from adautomix_fast.config import resolve  # noqa: E402
from adautomix_fast.methods.puzzlemix import (  # noqa: E402
    PuzzleMix,
    PuzzlePlan,
    block_saliency,
    boundary_penalties,
    graphcut_costs,
    input_saliency,
    pixel_index,
    solve_labels,
    transport_approx,
    transport_cost,
    transport_exact,
)
from adautomix_fast.registry import build_model  # noqa: E402
from adautomix_fast.train import main  # noqa: E402

K = 5          # classes
L = 3          # mask levels


def model(transport="approx", block_num=5, t_size=4, seed=0):
    torch.manual_seed(seed)
    return PuzzleMix("tiny", K, cifar_stem=True, block_num=block_num, transport=transport, t_size=t_size,
                     mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3))


def batch(b=6, side=16, seed=0):
    """Images that are smooth in [0, 1] once un-normalised (as model()'s statistics), and labels."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, 3, side // 4, side // 4, generator=g)
    pixels = F.interpolate(coarse, size=side, mode="bilinear", align_corners=False)
    x = (pixels - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.25, 0.2, 0.3]).view(1, 3, 1, 1)
    return x, torch.randint(0, K, (b,), generator=g)


def plan_for(net, x, y, grid, alpha=0.4, perm=None):
    b = x.shape[0]
    perm = torch.arange(b).roll(1) if perm is None else perm
    empty = torch.empty(0)
    return net.complete_plan(x, y, PuzzlePlan(torch.tensor(alpha), perm, torch.tensor(grid), empty, empty.long(),
                                              empty.long()))


def cells(images, cell):
    """[B, n, C*cell*cell]: the images cut into cell x cell squares, row-major."""
    b, c, h, w = images.shape
    t = images.reshape(b, c, h // cell, cell, w // cell, cell).permute(0, 2, 4, 1, 3, 5)
    return t.reshape(b, (h // cell) * (w // cell), -1)


# ---------------------------------------------------------------------------- saliency
def model_state(net):
    return ({k: v.clone() for k, v in net.state_dict().items()},
            {n: (None if p.grad is None else p.grad.clone()) for n, p in net.named_parameters()},
            {n: m.training for n, m in net.named_modules()})


def assert_same_state(before, after):
    for k in before[0]:
        assert torch.equal(before[0][k], after[0][k]), k             # parameters and BatchNorm buffers
    for n, g in before[1].items():
        assert (g is None and after[1][n] is None) or torch.equal(g, after[1][n]), n
    assert before[2] == after[2]                                     # every module's train/eval flag


def test_saliency_is_the_rms_input_gradient_of_the_eval_mode_cross_entropy():
    net = model()
    x, y = batch()
    direct = copy.deepcopy(net.student).eval()
    xi = x.clone().requires_grad_(True)
    F.cross_entropy(direct(xi), y).backward()
    expected = xi.grad.pow(2).mean(1).sqrt()
    net.train()
    torch.testing.assert_close(input_saliency(net.student, x, y), expected, rtol=1e-5, atol=1e-9)
    # in train mode the BatchNorm batch statistics would give another map: eval mode is used
    xt = x.clone().requires_grad_(True)
    F.cross_entropy(copy.deepcopy(net.student).train()(xt), y).backward()
    assert not torch.allclose(xt.grad.pow(2).mean(1).sqrt(), expected, rtol=1e-3)


@pytest.mark.parametrize("modes", ["train", "mixed"])
def test_completing_a_plan_leaves_the_model_and_the_random_state_unchanged(modes):
    net = model()
    x, y = batch()
    net.train()
    if modes == "mixed":
        net.student.head_one.eval()
    for i, p in enumerate(net.parameters()):
        if i % 2:
            p.grad = torch.randn_like(p)                             # gradients already there stay as they are
    net.student(x)                                                   # BatchNorm statistics that are not the init ones
    before = model_state(net)
    torch_rng, np_rng = torch.get_rng_state(), np.random.get_state()
    with torch.no_grad():                                            # as the trainer's pictures call it
        plan = plan_for(net, x, y, grid=4)
    assert plan.mask.shape == (6, 1, 16, 16)
    assert_same_state(before, model_state(net))
    assert torch.equal(torch_rng, torch.get_rng_state())
    after = np.random.get_state()
    assert np_rng[0] == after[0] and np.array_equal(np_rng[1], after[1]) and np_rng[2:] == after[2:]


# ---------------------------------------------------------------------------- graph cut
def test_boundary_penalties_match_their_definition():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, 16, 16, generator=g)
    perm = torch.tensor([2, 0, 1])
    for grid in (2, 4, 8, 16):
        block = 16 // grid
        neigh = min(4, block)
        pooled = F.avg_pool2d(images, neigh)
        k = block // neigh
        d_v, d_h = boundary_penalties(images, perm, grid)
        assert d_v.shape == (3, 2, 2, grid - 1, grid) and d_h.shape == (3, 2, 2, grid, grid - 1)
        for b, a, c in itertools.product(range(3), range(2), range(2)):
            first = pooled[b] if a == 0 else pooled[perm[b]]      # source of the upper / left block
            second = pooled[b] if c == 0 else pooled[perm[b]]     # source of the lower / right block
            for i in range(grid - 1):
                for j in range(grid):
                    upper_row = first[:, (i + 1) * k - 1, j * k:(j + 1) * k]
                    lower_row = second[:, (i + 1) * k, j * k:(j + 1) * k]
                    assert math.isclose(float(d_v[b, a, c, i, j]), float((upper_row - lower_row).abs().mean()),
                                        rel_tol=1e-5, abs_tol=1e-7)
                    left_col = first[:, j * k:(j + 1) * k, (i + 1) * k - 1]
                    right_col = second[:, j * k:(j + 1) * k, (i + 1) * k]
                    assert math.isclose(float(d_h[b, a, c, j, i]), float((left_col - right_col).abs().mean()),
                                        rel_tol=1e-5, abs_tol=1e-7)


def energy(costs, b, labels):
    """The graph cut's objective, term by term: unaries plus edge (l_p - l_q)^2 / (L - 1)^2."""
    grid = labels.shape[0]
    e = sum(costs.unary[b, i, j, labels[i, j]] for i in range(grid) for j in range(grid))
    e += sum(costs.edge_v[b, i, j] * (labels[i, j] - labels[i + 1, j]) ** 2 / (L - 1) ** 2
             for i in range(grid - 1) for j in range(grid))
    e += sum(costs.edge_h[b, i, j] * (labels[i, j] - labels[i, j + 1]) ** 2 / (L - 1) ** 2
             for i in range(grid) for j in range(grid - 1))
    return e


def random_costs(grid, seed, b=6, side=16):
    g = torch.Generator().manual_seed(seed)
    saliency = torch.rand(b, side, side, generator=g) ** 4
    images = torch.rand(b, 3, side, side, generator=g)
    perm = torch.randperm(b, generator=g)
    alpha = float(torch.rand((), generator=g))
    s = block_saliency(saliency, side // grid)
    d_v, d_h = boundary_penalties(images, perm, grid)
    return s, s[perm], d_v, d_h, alpha, graphcut_costs(s, s[perm], d_v, d_h, alpha, 1.2, 0.5, 0.2)


def test_graph_cut_costs_are_the_puzzlemix_objective():
    """On binary masks the costs give, up to a constant per image, the objective written out:
    sum_p m_p s_partner + (1 - m_p) s_own + eta / g^2 (-log prior) + sum_edges beta' gamma D(sources)
    + beta' [m_p != m_q]; and the three levels' priors are -log of alpha^2, 2 alpha (1 - alpha),
    (1 - alpha)^2."""
    grid = 4
    s_own, s_partner, d_v, d_h, alpha, costs = random_costs(grid, seed=3)
    bp = 1.2 / (16 * grid)
    prior = 0.2 / grid ** 2 * -np.log(np.array([alpha ** 2, 2 * alpha * (1 - alpha), (1 - alpha) ** 2]) + 1e-8)
    rng = np.random.default_rng(0)
    for b in range(3):
        offsets = []
        for _ in range(6):
            labels = rng.choice([0, 2], size=(grid, grid))           # m = 1 (own) or 0 (partner)
            m = 1 - labels / 2
            src = (labels == 2).astype(int)                          # 0: own, 1: partner
            direct = sum(m[i, j] * float(s_partner[b, i, j]) + (1 - m[i, j]) * float(s_own[b, i, j]) +
                         prior[labels[i, j]] for i in range(grid) for j in range(grid))
            for i in range(grid - 1):
                for j in range(grid):
                    direct += bp * 0.5 * float(d_v[b, src[i][j], src[i + 1][j], i, j]) + bp * (m[i, j] != m[i + 1, j])
            for i in range(grid):
                for j in range(grid - 1):
                    direct += bp * 0.5 * float(d_h[b, src[i][j], src[i][j + 1], i, j]) + bp * (m[i, j] != m[i, j + 1])
            offsets.append(energy(costs, b, labels) - direct)
        assert max(offsets) - min(offsets) < 1e-9
    # the half level: unary = the average of the two pure costs plus its own prior
    for level in range(L):
        m = 1 - level / 2
        expected = m * costs.unary[..., 0] + (1 - m) * costs.unary[..., 2] - (m * prior[0] + (1 - m) * prior[2])
        np.testing.assert_allclose(costs.unary[..., level] - prior[level], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grid", [2, 4, 8, 16])
def test_graph_cut_lowers_its_objective(grid):
    """The swap labelling costs no more than any constant labelling (the rounded-alpha one
    included), and on 2 x 2 grids it is the minimum over all 81 labellings. The solver sees the
    costs truncated to 1 / (1000 g^2): that is the tolerance."""
    for seed in range(2):
        _, _, _, _, alpha, costs = random_costs(grid, seed)
        labels = solve_labels(costs)
        assert labels.shape == (6, grid, grid) and set(np.unique(labels)) <= {0, 1, 2}
        tolerance = (grid * grid + 2 * grid * (grid - 1)) / (1000 * grid ** 2)
        rounded = int(round((1 - alpha) * (L - 1)))                  # the level nearest alpha (m = 1 - l / 2)
        for b in range(6):
            e = energy(costs, b, labels[b])
            for level in range(L):
                assert e <= energy(costs, b, np.full((grid, grid), level)) + tolerance
            assert e <= energy(costs, b, np.full((grid, grid), rounded)) + tolerance
            if grid == 2:
                best = min(energy(costs, b, np.array(c).reshape(2, 2)) for c in itertools.product(range(L), repeat=4))
                assert e <= best + tolerance


def test_masks_follow_the_saliency_and_the_prior():
    """A partner salient only on the left half and an own image salient only on the right half
    give masks that keep each image's salient side; alpha near 0 or 1 gives the pure images."""
    grid, b = 4, 2
    s_own = torch.zeros(b, grid, grid)
    s_own[:, :, 2:] = 1 / 8
    s_partner = torch.zeros(b, grid, grid)
    s_partner[:, :, :2] = 1 / 8
    flat = torch.zeros(b, 2, 2, grid - 1, grid), torch.zeros(b, 2, 2, grid, grid - 1)
    mask = 1 - solve_labels(graphcut_costs(s_own, s_partner, *flat, 0.5, 1.2, 0.5, 0.2)) / 2
    assert (mask[:, :, 2:] == 1).all() and (mask[:, :, :2] == 0).all()
    uniform = torch.full((b, grid, grid), 1 / 16)
    for alpha, level in ((0.999, 1.0), (0.001, 0.0)):
        mask = 1 - solve_labels(graphcut_costs(uniform, uniform, *flat, alpha, 1.2, 0.5, 0.2)) / 2
        assert (mask == level).all()


@pytest.mark.parametrize("grid", [2, 4, 8, 16])
def test_masks_have_three_levels_are_constant_on_blocks_and_lambda_is_their_mean(grid):
    net = model(transport="off")
    x, y = batch(b=8)
    plan = plan_for(net, x, y, grid, alpha=0.5)
    mask = plan.mask
    assert set(mask.unique().tolist()) <= {0.0, 0.5, 1.0}
    block = 16 // grid
    blocks = mask.reshape(8, grid, block, grid, block)
    assert (blocks == blocks[:, :, :1, :, :1]).all()                 # nearest upsampling of a g x g mask
    mixed, lam = net.mix(x, plan)
    torch.testing.assert_close(lam, mask.mean(dim=(1, 2, 3)), rtol=0, atol=0)
    # without transport the mix is m x + (1 - m) x[perm], pixel by pixel
    torch.testing.assert_close(mixed, mask * x + (1 - mask) * x[plan.perm], rtol=0, atol=0)


# ---------------------------------------------------------------------------- transport
def visible_cost(cost, source_of_dest, visible):
    """sum over the visible destinations j of cost[source(j), j]."""
    picked = cost.gather(1, source_of_dest[:, None, :]).squeeze(1)
    return (picked * visible).sum(1)


def random_transport_problem(n_side, seed, b=16):
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(b, n_side * n_side, generator=g) ** 3 + 1e-4      # positive saliency
    s = s / s.sum(1, keepdim=True)
    coarse = torch.randint(0, 3, (b, 1, max(1, n_side // 2), max(1, n_side // 2)), generator=g).float() / 2
    mask = F.interpolate(coarse, size=n_side).flatten(1)
    return s, mask


@pytest.mark.parametrize("n_side", [2, 4, 8, 16])
def test_approximate_transport_is_a_permutation_that_never_costs_more_where_the_mask_shows(n_side):
    for seed in range(2):
        s, mask = random_transport_problem(n_side, seed)
        for visible in (mask > 0, mask < 1):                          # own image, partner
            src = transport_approx(visible, s, 0.8)
            assert (src.sort(1).values == torch.arange(n_side ** 2)).all()
            cost = transport_cost(visible, s, 0.8)
            identity = torch.arange(n_side ** 2).expand_as(src)
            assert (visible_cost(cost, src, visible) <= visible_cost(cost, identity, visible) + 1e-6).all()


def released_bidding(visible, s, eps):
    """The released iteration, written densely from its description: every source bids for its
    cheapest destination; per destination the first row of min(bid cost, 0 for non-bidders) wins;
    losing bids cost 1 more; ``side`` rounds. Returns the winners [B, src, dst] of the last round."""
    cost = transport_cost(visible, s, eps)
    n = cost.shape[-1]
    for _ in range(math.isqrt(n)):
        bids = F.one_hot(cost.argmin(-1), n).float()
        first = torch.where(bids > 0, cost, torch.zeros_like(cost)).argmin(-2)      # first row of the minimum
        won = F.one_hot(first, n).transpose(1, 2).float() * bids
        cost = cost + (bids - won)                  # +1 on the losing bids only
    return won.bool()


@pytest.mark.parametrize("n_side", [2, 4, 8, 16])
def test_approximate_transport_follows_the_released_bidding_rule(n_side):
    """Every destination the released iteration fills gets the same source (zero-saliency ties
    included); the other sources fill the rest."""
    for seed in range(3):
        s, mask = random_transport_problem(n_side, seed)
        s[torch.rand(s.shape, generator=torch.Generator().manual_seed(seed)) < 0.2] = 0   # ties at 0
        s = s / s.sum(1, keepdim=True)
        for visible in (mask > 0, mask < 1):
            won = released_bidding(visible, s, 0.8)
            filled = won.any(1)
            src = transport_approx(visible, s, 0.8)
            assert torch.equal(src[filled], won.float().argmax(1)[filled])
            assert (src.sort(1).values == torch.arange(n_side ** 2)).all()


def test_approximate_transport_moves_a_salient_block_under_the_mask_when_moving_is_cheap():
    s = torch.tensor([[0.01, 0.01, 0.01, 0.97]])                      # the salient block is bottom right
    visible = torch.tensor([[True, False, False, False]])             # the mask shows the top left only
    assert transport_approx(visible, s, 0.3)[0, 0] == 3               # moved: 0.3 * 2 (diagonal) < 0.97
    assert transport_approx(visible, s, 0.6)[0, 0] == 0               # stays: 0.6 * 2 > 0.97 - 0.01


@pytest.mark.parametrize("n_side", [2, 4, 8])
def test_exact_transport_is_the_cheapest_permutation(n_side):
    s, mask = random_transport_problem(n_side, seed=1, b=8)
    visible = mask > 0
    src = transport_exact(visible, s, 0.8)
    cost = transport_cost(visible, s, 0.8)
    assert (src.sort(1).values == torch.arange(n_side ** 2)).all()
    total = cost.gather(1, src[:, None, :]).sum((1, 2))
    assert (total <= cost.diagonal(dim1=1, dim2=2).sum(1) + 1e-6).all()   # never above the identity
    if n_side == 2:
        for b in range(8):
            best = min(sum(float(cost[b, p[j], j]) for j in range(4)) for p in itertools.permutations(range(4)))
            assert math.isclose(float(total[b]), best, rel_tol=1e-6, abs_tol=1e-7)


@pytest.mark.parametrize("transport", ["approx", "exact"])
@pytest.mark.parametrize("grid", [2, 8, 16])
def test_transported_images_keep_their_blocks(transport, grid):
    """Each transported image is its original with the transport cells permuted (4 px cells, or
    the graph-cut blocks when those are smaller), for the own image and the partner."""
    net = model(transport=transport)
    _, y = batch(b=6)
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(2))   # no two cells alike
    plan = plan_for(net, x, y, grid, alpha=0.5)
    own, partner = net.sources(x, plan)
    cell = min(4, 16 // grid)
    for moved, original in ((own, x), (partner, x[plan.perm])):
        a, b = cells(moved, cell), cells(original, cell)
        # every cell of the result is a cell of the original, each used once
        match = (a[:, :, None, :] == b[:, None, :, :]).all(-1)           # [B, dst, src]
        assert match.any(2).all()
        used = match.float().argmax(2)
        assert (used.sort(1).values == torch.arange(a.shape[1])).all()


def test_pixel_index_moves_whole_cells():
    source_of_dest = torch.tensor([[3, 2, 1, 0]])                     # 2 x 2 cells of 3 px, rotated by 180 degrees
    x = torch.arange(36.0).view(1, 1, 6, 6)
    index = pixel_index(source_of_dest, 2, 3)
    moved = x.flatten(2).gather(2, index[:, None]).view(1, 1, 6, 6)
    top = torch.cat([x[..., 3:, 3:], x[..., 3:, :3]], -1)             # cells 3, 2
    bottom = torch.cat([x[..., :3, 3:], x[..., :3, :3]], -1)          # cells 1, 0
    expected = torch.cat([top, bottom], -2)
    assert torch.equal(moved, expected)


# ---------------------------------------------------------------------------- plan, mix and loss
def test_plans_are_drawn_on_the_device_generator_and_reproducible():
    net = model()
    a = net.sample_plan(8, torch.Generator().manual_seed(3))
    b = net.sample_plan(8, torch.Generator().manual_seed(3))
    for ta, tb in zip(a, b):
        assert torch.equal(ta, tb)
    assert sorted(a.perm.tolist()) == list(range(8))
    g = torch.Generator().manual_seed(0)
    grids = [int(net.sample_plan(4, g).grid) for _ in range(400)]
    counts = {k: grids.count(k) for k in (2, 4, 8, 16)}
    assert sum(counts.values()) == 400 and min(counts.values()) > 70  # uniform over 2^1 .. 2^(block_num - 1)
    assert {int(model(block_num=3).sample_plan(4, g).grid) for _ in range(40)} == {2, 4}


def test_mix_is_a_pure_function_of_images_and_plan():
    net = model()
    x, y = batch()
    plan = plan_for(net, x, y, grid=8, alpha=0.3)
    again = plan_for(net, x, y, grid=8, alpha=0.3)                    # completing is deterministic
    for ta, tb in zip(plan, again):
        assert torch.equal(ta, tb)
    x0 = x.clone()
    plan0 = [t.clone() for t in plan]
    first, lam1 = net.mix(x, plan)
    second, lam2 = net.mix(x, plan)
    assert torch.equal(first, second) and torch.equal(lam1, lam2)
    assert torch.equal(x, x0) and all(torch.equal(a, b) for a, b in zip(plan, plan0))
    own, partner = net.sources(x, plan)
    torch.testing.assert_close(first, plan.mask * own + (1 - plan.mask) * partner, rtol=0, atol=0)
    with pytest.raises(ValueError, match="complete_plan"):
        net.mix(x, net.sample_plan(6))


def test_loss_is_the_soft_cross_entropy_with_per_sample_lambda():
    net = model()
    x, y = batch()
    plan = plan_for(net, x, y, grid=4, alpha=0.5)
    net.train()
    snapshot = copy.deepcopy(net)
    losses = net.step_losses(x, y, plan)
    mixed, lam = snapshot.mix(x, plan)
    assert lam.shape == (6,) and not torch.all(lam == lam[0])
    z = snapshot.student(mixed)
    targets = lam[:, None] * F.one_hot(y, K) + (1 - lam[:, None]) * F.one_hot(y[plan.perm], K)
    soft = -(targets * F.log_softmax(z, -1)).sum(-1).mean()
    torch.testing.assert_close(losses["loss"], soft, rtol=1e-5, atol=1e-6)
    assert math.isclose(float(losses["lam"]), float(lam.mean()), rel_tol=1e-6)


# ---------------------------------------------------------------------------- options
def test_published_options_and_defaults():
    cfg = resolve(dict(method="puzzlemix", arch="tiny"))
    m = build_model(cfg, K, True)
    assert (m.block_num, m.t_size, m.beta, m.gamma, m.eta, m.t_eps, m.transport) == (5, 4, 1.2, 0.5, 0.2, 0.8, "approx")
    assert cfg.mix_alpha == 1.0 and cfg.min_lr == 0.0
    big = build_model(resolve(dict(method="puzzlemix", dataset="tiny-imagenet", arch="tiny")), K, True)
    assert (big.block_num, big.t_size) == (4, -1)                      # OpenMixup's 64/224-px configs
    assert resolve(dict(method="puzzlemix", arch="swin_t", dataset="cifar100", img_size=224)).mix_alpha == 2.0
    assert resolve({}, preset="cifar100-r18-puzzlemix").method == "puzzlemix"


@pytest.mark.parametrize("flags,message", [
    (["--puzzle-gamma", "1.5"], "--puzzle-gamma must be in [0, 1]"),
    (["--puzzle-block-num", "7"], "--puzzle-block-num must be between 2 and 6"),
    (["--puzzle-t-size", "0"], "--puzzle-t-size must be a side in pixels or -1"),
    (["--puzzle-transport", "sinkhorn"], "invalid choice"),
    (["--img-size", "24"], "the 4x4 grid has 6-px blocks, which the 4-px smoothness cells do not divide"),
    (["--img-size", "8"], "the 16x16 grid does not divide 8-px images"),
])
def test_bad_options_are_one_line_usage_errors(flags, message, tmp_path, capsys):
    args = ["--method", "puzzlemix", "--arch", "tiny", "--output", str(tmp_path), "--workers", "0"] + flags
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_sizes_that_fit_the_grids_are_accepted():
    # 24 px: the 2x2 grid only (12-px blocks), 3-px transport cells
    cfg = resolve(dict(method="puzzlemix", arch="tiny", img_size=24, puzzle_block_num=2, puzzle_t_size=3))
    net = build_model(cfg, K, True)
    x, y = batch(b=4, side=24)
    plan = plan_for(net, x, y, 2)
    assert plan.mask.shape == (4, 1, 24, 24)
    assert {int(net.sample_plan(4).grid) for _ in range(10)} == {2}
