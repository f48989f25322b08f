"""PuzzleMix (Kim et al., ICML 2020): saliency-aware masks from a graph cut, and a transport of
each image's salient blocks to where the mask shows them.

As OpenMixup's ``augments/puzzlemix.py`` (the official code, ported) and the ``puzzlemix``
branch of ``MixUpClassification`` (``_features``), with the CIFAR config's options
(``r18_puzzlemix_CE_soft.py``):

1. Saliency (``input_saliency``): one extra forward/backward of the student in eval mode on the
   clean batch, s = sqrt(mean_c (dCE/dx_c)^2) per pixel.
2. Per batch: alpha ~ Beta(a, a) (the graph cut's prior), a permutation (a plain one), and a grid
   side g = 2^k, k uniform on {1, ..., block_num - 1} (block_num 5: g in {2, 4, 8, 16}).
3. Per sample, a mask on the g x g blocks with L = 3 levels m in {1, 1/2, 0} (the weight of the
   sample's own image), minimising the energy of ``graphcut_costs`` by alpha-beta swaps (pyGCO).
4. Optionally, per image, a rearrangement of its blocks (``transport_*``) that brings salient
   blocks under the part of the mask that shows the image.
5. x_mix = m * T_own(x) + (1 - m) * T_partner(x[perm]), with m upsampled (nearest) to the image;
   the label weight is the mask mean per sample (lambda [B]); the loss is the soft cross-entropy
   sum_b lam_b CE(z_b, y_b) + (1 - lam_b) CE(z_b, y_perm(b)), averaged.

Steps 1, 3 and 4 need the labels, the model and a C++ solver, so they run in ``complete_plan``,
outside the fused step's graph (``plan_outside_graph``); the plan then holds the mask and two
pixel index maps, and ``mix`` is a pure function of (images, plan) inside the graph.

Written out rather than imported: no library computes PuzzleMix (OpenMixup's module needs CUDA and
mmcv); the graph cut itself is pyGCO's (``gco-wrapper``) and the exact assignment SciPy's.

Where this differs from OpenMixup, on purpose (docs/puzzlemix.md):

* The graph cut gets integer costs throughout. OpenMixup passes int32 unary and edge costs with a
  float smoothness matrix, which switches pyGCO to its "float" mode: it multiplies the int32
  unaries by 10^5 in int32 arithmetic, which wraps around when a unary cost exceeds
  2^31 / (10^8 g^2): on the 16 x 16 grid for a block holding more than about 7-8 % of its
  image's saliency, on the 8 x 8 grid about 28-34 %. Here the energy is OpenMixup's times
  (L - 1)^2 with no wrap-around (the same masks wherever OpenMixup's costs do not wrap).
* The transport ends as a permutation of blocks. OpenMixup's iterative assignment returns a
  partial matching: blocks that lose every bid are dropped and destinations nobody wins are left
  black. Every destination the mask shows is always won (``transport_approx``), so the dropped
  blocks are given to the hidden destinations in index order: the mixed image is OpenMixup's,
  and each transported image still holds all of its blocks.
* The pairwise term un-normalises the images with the data set's own statistics (as the authors'
  code does), not OpenMixup's fixed CIFAR-10 / ImageNet ones.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError
from .base import DataFacts, cross_entropy, random_permutation, uniform_int
from .options import Option
from .pairmix import PairMix, pair_defaults

# OpenMixup's PuzzleMix options that every released config keeps fixed.
N_LABELS = 3          # mask levels 1, 1/2, 0
NEIGH_SIZE = 4        # pixels averaged along a block boundary by the smoothness term
PRIOR_EPS = 1e-8      # inside the prior's log, as released
TRANSPORTS = ("approx", "exact", "off")


# ---------------------------------------------------------------------------- settings
def default_settings(image_side: int) -> tuple[int, int]:
    """(block_num, t_size) of OpenMixup's configs for images of this side: the CIFAR configs
    (32 px) use block_num 5 (grids 2..16) and a 4-pixel transport; Tiny-ImageNet, ImageNet, the
    fine-grained sets and the 224-px transformer runs use block_num 4 (grids 2..8) and transport
    at the graph-cut blocks (t_size -1)."""
    return (5, 4) if image_side <= 32 else (4, -1)


def block_sizes(image_side: int, grid: int, t_size: int) -> tuple[int, int, int]:
    """(graph-cut block side, smoothness pooling side, transport block side) in pixels for a
    grid of ``grid`` x ``grid`` blocks: as OpenMixup, the pooling side is min(4, block) and the
    transport side min(t_size, block), or the block itself for t_size -1."""
    block = image_side // grid
    neigh = min(NEIGH_SIZE, block)
    t = block if t_size == -1 else min(t_size, block)
    return block, neigh, t


def size_problem(image_side: int, block_num: int, t_size: int) -> Optional[str]:
    """Why images of ``image_side`` px cannot be cut by these settings, or None: every grid must
    divide the image, and the pooling and transport sides must divide a block."""
    for k in range(1, block_num):
        grid = 2 ** k
        if image_side % grid:
            return f"the {grid}x{grid} grid does not divide {image_side}-px images"
        block, neigh, t = block_sizes(image_side, grid, t_size)
        if block % neigh:
            return f"the {grid}x{grid} grid has {block}-px blocks, which the {neigh}-px smoothness cells do not divide"
        if block % t:
            return f"the {grid}x{grid} grid has {block}-px blocks, which {t}-px transport cells do not divide"
    return None


def resolved_settings(cfg, image_side: int) -> tuple[int, int]:
    """(block_num, t_size): the config's values, or the published ones for the image size."""
    block_num, t_size = default_settings(image_side)
    return (cfg.puzzle_block_num if cfg.puzzle_block_num is not None else block_num,
            cfg.puzzle_t_size if cfg.puzzle_t_size is not None else t_size)


def _gco():
    try:
        import gco
    except ImportError:
        raise UsageError("--method puzzlemix needs the graph-cut package: pip install gco-wrapper") from None
    return gco


# ---------------------------------------------------------------------------- 1. saliency
def input_saliency(net, x: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """s [B, H, W] = sqrt(mean_c (d CE / d x_c)^2), CE the batch-mean cross-entropy of ``net``'s
    ``head_one`` on the clean images, computed in eval mode and fp32 (OpenMixup ``_features``).

    Nothing of the network changes: gradients are taken with respect to the input only (no
    parameter .grad is written), eval mode leaves BatchNorm statistics alone, and every module's
    train/eval flag is restored afterwards. No random numbers are drawn.
    """
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
            xi = x.detach().float().requires_grad_(True)
            loss = cross_entropy(net.head_one(net.pooled(xi)), y, label_smoothing)
            (grad,) = torch.autograd.grad(loss, xi)
    finally:
        for module, training in modes:
            module.training = training
    return grad.pow(2).mean(dim=1).sqrt()


# ---------------------------------------------------------------------------- 3. the graph cut
def block_saliency(saliency: torch.Tensor, cell: int) -> torch.Tensor:
    """[B, n, n]: the saliency averaged over cells of ``cell`` px, normalised to sum 1 per image
    (an all-zero map stays zero)."""
    pooled = F.avg_pool2d(saliency[:, None].float(), cell)[:, 0]
    return pooled / pooled.flatten(1).sum(1).clamp_min(1e-30)[:, None, None]


def boundary_penalties(images: torch.Tensor, perm: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The data term of neighbouring blocks (OpenMixup ``neigh_penalty``), for every choice of
    source: D_v [B, 2, 2, g-1, g] and D_h [B, 2, 2, g, g-1], index [b, a, c, i, j] with source
    a in {0: own image, 1: partner} on the upper (left) block and c on the lower (right) one.

    D = mean over the boundary of |P_a - P_c|, P the images (in [0, 1]) average-pooled by
    min(4, block) px: the pooled row (column) of the upper (left) block nearest the boundary
    against the first one of the block below (right), averaged over channels and along the edge.
    """
    side = images.shape[-1]
    block, neigh, _ = block_sizes(side, grid, -1)
    k = block // neigh                                          # pooled cells per block side
    pooled = F.avg_pool2d(images.float(), neigh)
    src = torch.stack([pooled, pooled[perm]], dim=1)            # [B, 2, C, g k, g k]
    b = src.shape[0]
    up, down = src[..., k - 1:-1:k, :], src[..., k::k, :]       # rows either side of each boundary
    d_v = (up[:, :, None] - down[:, None, :]).abs().mean(3)     # [B, 2, 2, g-1, g k]
    d_v = d_v.reshape(b, 2, 2, grid - 1, grid, k).mean(-1)
    left, right = src[..., k - 1:-1:k], src[..., k::k]
    d_h = (left[:, :, None] - right[:, None, :]).abs().mean(3)  # [B, 2, 2, g k, g-1]
    d_h = d_h.reshape(b, 2, 2, grid, k, grid - 1).mean(-2)
    return d_v, d_h


class GraphCutCosts(NamedTuple):
    """The energy of one grid labelling per sample, E(l) = sum_p unary[p, l_p] +
    sum_(p,q) edge_pq (l_p - l_q)^2 / (L - 1)^2 over 4-neighbours (vertical edges ``edge_v``
    [B, g-1, g], horizontal ``edge_h`` [B, g, g-1]); ``unary`` [B, g, g, L]. Label l shows the
    sample's own image with weight m = 1 - l / (L - 1). float64 numpy arrays."""

    unary: np.ndarray
    edge_v: np.ndarray
    edge_h: np.ndarray


def graphcut_costs(s_own: torch.Tensor, s_partner: torch.Tensor, d_v: torch.Tensor, d_h: torch.Tensor,
                   alpha: float, beta: float, gamma: float, eta: float, n_labels: int = N_LABELS) -> GraphCutCosts:
    """PuzzleMix's mask objective on a g x g grid (OpenMixup ``puzzlemix`` + ``graphcut_multi``):

        E(m) = sum_p [ m_p A_p + (1 - m_p) B_p + eta / g^2 * (-log pi(l_p)) ]
               + sum_(p,q) (w_pq + beta') (m_p - m_q)^2,        beta' = beta / (16 g)

    * A_p = s_partner(p) (the partner's saliency the own image hides) and B_p = s_own(p), the
      block saliencies normalised to sum 1 (``block_saliency``);
    * pi = Binomial(L - 1, 1 - alpha) over the label: pi(l) = C(L-1, l) alpha^(L-1-l) (1-alpha)^l
      (L = 3: alpha^2, 2 alpha (1 - alpha), (1 - alpha)^2), the prior that sets the mix ratio;
    * the data smoothness term: a boundary between p (above/left) and q showing sources a and c
      costs beta' gamma D_ac(p, q) (``boundary_penalties``). Written as unary terms plus a
      (m_p - m_q)^2 term, as released:
          A_p += beta' gamma (D_oo + D_op) / 2,  B_p += beta' gamma (D_po + D_pp) / 2,
          A_q += beta' gamma (D_oo + D_po) / 2,  B_q += beta' gamma (D_op + D_pp) / 2,
          w_pq = beta' gamma (D_op + D_po - D_oo - D_pp) / 2
      (o: own, p: partner), which equals the data term plus a constant on binary masks.
    """
    grid = s_own.shape[-1]
    bp = beta / grid / 16.0
    dv = (bp * gamma) * d_v.double()
    dh = (bp * gamma) * d_h.double()
    own_cost = s_partner.double().clone()       # A: cost weight of the own image (m)
    partner_cost = s_own.double().clone()       # B: cost weight of the partner (1 - m)
    (oo, op), (po, pp) = (dv[:, 0, 0], dv[:, 0, 1]), (dv[:, 1, 0], dv[:, 1, 1])
    own_cost[:, :-1, :] += (oo + op) / 2
    partner_cost[:, :-1, :] += (po + pp) / 2
    own_cost[:, 1:, :] += (oo + po) / 2
    partner_cost[:, 1:, :] += (op + pp) / 2
    w_v = (op + po - oo - pp) / 2
    (oo, op), (po, pp) = (dh[:, 0, 0], dh[:, 0, 1]), (dh[:, 1, 0], dh[:, 1, 1])
    own_cost[:, :, :-1] += (oo + op) / 2
    partner_cost[:, :, :-1] += (po + pp) / 2
    own_cost[:, :, 1:] += (oo + po) / 2
    partner_cost[:, :, 1:] += (op + pp) / 2
    w_h = (op + po - oo - pp) / 2

    last = n_labels - 1
    prior = np.array([math.comb(last, k) * alpha ** (last - k) * (1 - alpha) ** k for k in range(n_labels)])
    prior = eta * -np.log(prior + PRIOR_EPS) / grid ** 2
    m = 1.0 - np.arange(n_labels) / last                                   # own weight per label
    a, b = own_cost.cpu().numpy()[..., None], partner_cost.cpu().numpy()[..., None]
    unary = m * a + (1.0 - m) * b + prior
    return GraphCutCosts(unary, w_v.cpu().numpy() + bp, w_h.cpu().numpy() + bp)


def solve_labels(costs: GraphCutCosts) -> np.ndarray:
    """int [B, g, g] labels from pyGCO's alpha-beta swaps, run to convergence, one graph per
    sample. Costs are scaled by 1000 g^2 and truncated to integers as released; the smoothness
    matrix (i - j)^2 / (L - 1)^2 is made integral by scaling every cost by (L - 1)^2 (pyGCO's
    integer mode: no float conversion inside it). Edge weights are clipped at 0 (a graph cut needs
    them non-negative; they are whenever the images lie in [0, 1] and gamma <= 1)."""
    gco = _gco()
    n, grid = costs.unary.shape[0], costs.unary.shape[1]
    n_labels = costs.unary.shape[-1]
    scale = 1000 * grid ** 2
    unary = scale * costs.unary
    unary = unary.astype(np.int32) * (n_labels - 1) ** 2
    edge_v = np.maximum((scale * costs.edge_v).astype(np.int32), 0)
    edge_h = np.maximum((scale * costs.edge_h).astype(np.int32), 0)
    levels = np.arange(n_labels)
    smooth = ((levels[:, None] - levels[None, :]) ** 2).astype(np.int32)
    labels = np.empty((n, grid, grid), dtype=np.int64)
    for i in range(n):          # pyGCO solves one graph per call (C++); the batch is a loop
        labels[i] = gco.cut_grid_graph(np.ascontiguousarray(unary[i]), smooth, np.ascontiguousarray(edge_v[i]),
                                       np.ascontiguousarray(edge_h[i]), algorithm="swap").reshape(grid, grid)
    return labels


def labels_to_mask(labels: np.ndarray, n_labels: int = N_LABELS) -> np.ndarray:
    """Mask levels m = 1 - l / (L - 1): the weight of the sample's own image."""
    return 1.0 - labels / (n_labels - 1)


# ---------------------------------------------------------------------------- 4. the transport
def grid_cost_matrix(side: int, device=None) -> torch.Tensor:
    """C [n, n], n = side^2: squared distance between the cells i and j of a side x side grid
    divided by (side - 1)^2 (OpenMixup ``cost_matrix``)."""
    rows, cols = torch.div(torch.arange(side * side, device=device), side, rounding_mode="floor"), \
        torch.arange(side * side, device=device) % side
    dist = (rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2
    return dist.float() / (side - 1) ** 2


def transport_cost(visible: torch.Tensor, saliency: torch.Tensor, eps: float) -> torch.Tensor:
    """cost [B, n, n] of moving source cell i to destination j: eps C_ij - s_i [j visible], the
    saliency-discounted transport cost (moving a salient cell under the visible part of the mask
    pays; moving far costs)."""
    side = math.isqrt(visible.shape[-1])
    c = grid_cost_matrix(side, visible.device)
    return eps * c[None] - saliency.float()[:, :, None] * visible.float()[:, None, :]


def transport_approx(visible: torch.Tensor, saliency: torch.Tensor, eps: float) -> torch.Tensor:
    """source_of_dest [B, n] (int64; a permutation per row) by OpenMixup's iterative assignment
    (``mask_transport``), run ``side`` times on the cost of ``transport_cost``:

    * each source bids for its cheapest destination (first one on ties);
    * at each destination, the first row of the minimum of (bid cost, 0 for rows that did not
      bid) wins: a bid wins only if it is the cheapest and below 0 (a bid of exactly 0 only if no
      earlier row has a 0 there);
    * every losing bid's cost is raised by 1.

    A visible destination j always has a winner when its saliency s_j > 0 (its own cell bids for
    it first at -s_j < 0, a winner keeps its bid, and only a lower bid replaces it), so it shows
    a block of cost at most -s_j, the identity's. The sources that end without a destination
    are given the destinations without a winner (hidden ones but for zero-saliency ties): their
    own cell when that is free too, else in index order. Every block stays in the image;
    OpenMixup drops them and leaves those destinations black, where the mask hides them.
    """
    cost = transport_cost(visible, saliency, eps)
    b, n, _ = cost.shape
    cell = torch.arange(n, device=cost.device)
    rows = cell.expand(b, n)
    # Per destination, from the bids alone (O(B n) a round, not the dense [B, n, n] resolve): the
    # lowest bid, the first row bidding it, the number of bidders, and the first row that does
    # not bid there (0, unless rows 0..r-1 all bid for the destination row 0 chose).
    for _ in range(math.isqrt(n)):
        choice = cost.argmin(-1)                                              # [B, src] -> dst
        bid = cost.gather(2, choice[..., None])[..., 0]                       # [B, src]
        low = torch.full_like(bid, math.inf).scatter_reduce(1, choice, bid, "amin")
        at_low = bid == low.gather(1, choice)
        first_low = torch.full_like(choice, n).scatter_reduce(1, choice, torch.where(at_low, rows, n), "amin")
        bidders = torch.zeros_like(choice).scatter_add(1, choice, torch.ones_like(choice))
        lead = (choice == choice[:, :1]).long().cumprod(1).sum(1, keepdim=True)
        first_other = torch.where(rows == choice[:, :1], lead, 0)
        # The first row of min(bid, 0 for the other rows) is a bidder: a negative lowest bid; a
        # zero one ahead of every other row; a positive one only if every row bids there.
        taken = torch.where(low < 0, True, torch.where(low == 0, first_low < first_other, bidders == n))
        placed = taken.gather(1, choice) & (first_low.gather(1, choice) == rows)   # [B, src] won its bid
        # +1 on the losing bids: one entry per source, so a plain (deterministic) scatter
        cost.scatter_(2, choice[..., None], (bid + (~placed).float())[..., None])
    source_of_dest = torch.where(taken, first_low, 0)                         # [B, dst]
    # A cell free as both source and destination keeps its own block (a visible destination can
    # be left without a winner only by a tie at zero saliency: OpenMixup leaves it black there);
    # then the k-th free destination (index order) takes the k-th free source.
    stay = ~taken & ~placed
    source_of_dest = torch.where(stay, rows, source_of_dest)
    taken, placed = taken | stay, placed | stay
    free_dst = torch.argsort((~taken).to(torch.int8), dim=1, descending=True, stable=True)
    free_src = torch.argsort((~placed).to(torch.int8), dim=1, descending=True, stable=True)
    rank_ok = rows < (~taken).sum(1, keepdim=True)
    filled = torch.where(rank_ok, free_src, source_of_dest.gather(1, free_dst))
    return source_of_dest.scatter(1, free_dst, filled)


def transport_exact(visible: torch.Tensor, saliency: torch.Tensor, eps: float) -> torch.Tensor:
    """source_of_dest [B, n]: the permutation of minimum total ``transport_cost`` (the paper's
    assignment problem, solved exactly by SciPy's linear_sum_assignment per image on the host;
    the authors' unit test compares their approximation with the same exact solution)."""
    from scipy.optimize import linear_sum_assignment
    cost = transport_cost(visible, saliency, eps).double().cpu().numpy()
    out = np.empty(cost.shape[:2], dtype=np.int64)
    for i, c in enumerate(cost):
        src, dst = linear_sum_assignment(c)
        out[i, dst] = src
    return torch.from_numpy(out).to(visible.device)


def pixel_index(source_of_dest: torch.Tensor, cells: int, cell: int) -> torch.Tensor:
    """int64 [B, S*S] (S = cells * cell): for each pixel of the transported image, the pixel of
    the original it shows; destination cell j shows source cell source_of_dest[:, j]."""
    side = cells * cell
    pos = torch.arange(side, device=source_of_dest.device)
    dest_cell = (pos[:, None] // cell) * cells + pos[None, :] // cell              # [S, S]
    src_cell = source_of_dest[:, dest_cell]                                        # [B, S, S]
    src_row = (src_cell // cells) * cell + (pos % cell)[:, None]
    src_col = (src_cell % cells) * cell + (pos % cell)[None, :]
    return (src_row * side + src_col).flatten(1)


def gather_pixels(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W] with each image's pixels taken at ``index`` [B, H*W]."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h * w).gather(2, index[:, None, :].expand(b, c, h * w)).reshape(b, c, h, w)


# ---------------------------------------------------------------------------- the method
class PuzzlePlan(NamedTuple):
    """lam: 0-dim fp32, alpha ~ Beta(a, a), the graph cut's prior ratio (one per batch); perm:
    int64 [B]; grid: 0-dim int64, the grid side g. Filled in by ``complete_plan`` (empty before):
    mask fp32 [B, 1, H, W], the weight of each sample's own image; own_index / partner_index
    int64 [B, H*W], the transported images as pixel indices into x[b] and x[perm[b]]."""

    lam: torch.Tensor
    perm: torch.Tensor
    grid: torch.Tensor
    mask: torch.Tensor
    own_index: torch.Tensor
    partner_index: torch.Tensor


class PuzzleMix(PairMix):
    name = "puzzlemix"
    title = "PuzzleMix"
    summary = "graph-cut masks on saliency, salient blocks transported"
    rank = 9
    defaults = pair_defaults(cifar=1.0, cifar_transformer=2.0, imagenet=1.0, fine_grained=1.0)
    # OpenMixup's options (the graph cut's label smoothness beta, data smoothness gamma, prior
    # weight eta; the transport, its distance cost and cell side); None: the published value for
    # the image size (``default_settings``).
    options = (
        Option("puzzle_block_num", int, None, optional=True, param="block_num", low=2, high=6,
               range_help="grids are 2^1 .. 2^(n-1) blocks a side",
               help="grids of 2^1 .. 2^(n-1) blocks a side, one drawn per step",
               none_means=f"{default_settings(32)[0]} for images of 32 px or less, else {default_settings(64)[0]} "
                          "(OpenMixup's configs)"),
        Option("puzzle_beta", float, 1.2, param="beta", low=0, help="label smoothness of the graph cut"),
        Option("puzzle_gamma", float, 0.5, param="gamma", low=0, high=1,
               range_help="larger values can make the graph cut's edge weights negative",
               help="data smoothness across block edges, 0..1"),
        Option("puzzle_eta", float, 0.2, param="eta", low=0, help="weight of the mixing-ratio prior"),
        Option("puzzle_transport", str, "approx", param="transport", choices=TRANSPORTS,
               help="move salient blocks under the mask by OpenMixup's iterative assignment (approx), an exact "
                    "assignment, or not at all"),
        Option("puzzle_t_eps", float, 0.8, param="t_eps", low=0, help="transport distance cost"),
        Option("puzzle_t_size", int, None, optional=True, param="t_size", low=1, extra=(-1,),
               range_help="a side in pixels or -1 for the graph-cut blocks",
               help="transport cell side in px, -1 for the graph-cut blocks",
               none_means=f"{default_settings(32)[1]} for images of 32 px or less, else {default_settings(64)[1]} "
                          "(OpenMixup's configs)"),
    )

    @classmethod
    def check_config(cls, cfg, image_side: int) -> None:
        block_num, t_size = resolved_settings(cfg, image_side)
        problem = size_problem(image_side, block_num, t_size)
        if problem:
            raise UsageError(f"PuzzleMix: {problem}; choose --img-size, --puzzle-block-num or --puzzle-t-size to fit")

    @classmethod
    def describe(cls, cfg, image_side: int) -> str:
        blocks, t_size = resolved_settings(cfg, image_side)
        transport = "off" if cfg.puzzle_transport == "off" else \
            f"{cfg.puzzle_transport} (eps {cfg.puzzle_t_eps:g}, {'block' if t_size == -1 else f'{t_size} px'} cells)"
        return f"Beta({cfg.mix_alpha:g}), grids 2-{2 ** (blocks - 1)}, transport {transport}"
    plan_outside_graph = True

    @classmethod
    def missing_requirement(cls):
        try:
            _gco()
        except UsageError as exc:
            return str(exc)
        return None

    def __init__(self, arch: str, num_classes: int, *, cifar_stem: bool, mix_alpha: float = 1.0,
                 label_smoothing: float = 0.0, block_num: int = 5, beta: float = 1.2, gamma: float = 0.5,
                 eta: float = 0.2, transport: str = "approx", t_eps: float = 0.8, t_size: int = 4,
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), drop_path: float = 0.0):
        super().__init__(arch, num_classes, cifar_stem=cifar_stem, mix_alpha=mix_alpha,
                         label_smoothing=label_smoothing, drop_path=drop_path)
        _gco()                                       # a missing package stops the run before it starts
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        self.block_num, self.beta, self.gamma, self.eta = int(block_num), float(beta), float(gamma), float(eta)
        self.transport, self.t_eps, self.t_size = transport, float(t_eps), int(t_size)
        # The data set's normalisation, to compare pixels in [0, 1] in the smoothness term.
        self.register_pixel_stats(mean, std)

    @classmethod
    def complete_settings(cls, values: dict, data: Optional[DataFacts]) -> dict:
        """The grid count and transport cell for the image side (``data``, which the registry's
        ``build_model`` and ``api.mix_model`` pass) where they are left unset, and the data set's
        normalisation (the smoothness term compares pixels in [0, 1])."""
        if data is None:
            raise TypeError("PuzzleMix needs data=DataFacts(image_side, mean, std) to be built from settings; "
                            "adautomix_fast.registry.build_model passes the run's")
        block_num, t_size = default_settings(data.image_side)
        values = dict(values, mean=data.mean, std=data.std)
        if values.get("block_num") is None:
            values["block_num"] = block_num
        if values.get("t_size") is None:
            values["t_size"] = t_size
        return values

    # ------------------------------------------------------------------ plan
    def sample_plan(self, batch_size: int, generator: Optional[torch.Generator] = None,
                    n: Optional[int] = None, image_size: Optional[tuple[int, int]] = None) -> PuzzlePlan:
        """The step's random draws (all of them: ``complete_plan`` draws none): alpha, a plain
        permutation (OpenMixup's randperm) and g = 2^(1 + U{0..block_num-2})."""
        lam = self.sample_lam(generator)
        perm = random_permutation(batch_size, generator, self.device)
        grid = 2 ** (1 + uniform_int(self.block_num - 1, generator, self.device))
        empty = torch.empty(0, device=self.device)
        return PuzzlePlan(lam, perm, grid, empty, empty.long(), empty.long())

    @torch.no_grad()
    def complete_plan(self, x: torch.Tensor, y: torch.Tensor, plan: PuzzlePlan) -> PuzzlePlan:
        """Saliency (one eval-mode forward/backward of the student), the graph-cut masks (pyGCO,
        host) and the transport; returns the plan with mask, own_index and partner_index."""
        b, _, h, w = x.shape
        grid = int(plan.grid)
        problem = "PuzzleMix cuts square images" if h != w else size_problem(h, self.block_num, self.t_size)
        if problem:
            raise ValueError(f"{problem} ({h}x{w} images, block_num {self.block_num}, t_size {self.t_size})")
        block, _, cell = block_sizes(h, grid, self.t_size)
        # A diverged model's NaN gradients would become garbage integer costs: count them as no saliency.
        saliency = input_saliency(self.student, x, y, self.label_smoothing).nan_to_num(0.0, 0.0, 0.0)
        images = self.to_pixels(x)
        s_own = block_saliency(saliency, block)
        d_v, d_h = boundary_penalties(images, plan.perm, grid)
        costs = graphcut_costs(s_own, s_own[plan.perm], d_v, d_h, float(plan.lam), self.beta, self.gamma, self.eta)
        mask_grid = torch.from_numpy(labels_to_mask(solve_labels(costs))).float().to(x.device)   # [B, g, g]

        cells = h // cell
        if self.transport == "off":
            identity = torch.arange(cells * cells, device=x.device).expand(b, -1)
            own, partner = identity, identity
        else:
            solve = transport_approx if self.transport == "approx" else transport_exact
            up = cells // grid
            mask_cells = mask_grid.repeat_interleave(up, 1).repeat_interleave(up, 2).flatten(1)
            s_cells = block_saliency(saliency, cell).flatten(1)
            own = solve(mask_cells > 0, s_cells, self.t_eps)
            partner = solve(mask_cells < 1, s_cells[plan.perm], self.t_eps)
        mask = mask_grid.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, None]
        return plan._replace(mask=mask, own_index=pixel_index(own, cells, cell),
                             partner_index=pixel_index(partner, cells, cell))

    # ------------------------------------------------------------------ mixing
    def sources(self, x: torch.Tensor, plan: PuzzlePlan) -> tuple[torch.Tensor, torch.Tensor]:
        """(own images, partner images), each transported."""
        if plan.mask.numel() == 0:
            raise ValueError("a PuzzleMix plan is mixed after complete_plan(x, y, plan)")
        return gather_pixels(x, plan.own_index), gather_pixels(x[plan.perm], plan.partner_index)

    def mix(self, x: torch.Tensor, plan: PuzzlePlan) -> tuple[torch.Tensor, torch.Tensor]:
        own, partner = self.sources(x, plan)
        m = plan.mask.to(x.dtype)
        return m * own + (1.0 - m) * partner, plan.mask.flatten(1).mean(1)

    def mix_masks(self, x: torch.Tensor, plan: PuzzlePlan) -> torch.Tensor:
        return plan.mask[:, 0]

    @torch.no_grad()
    def visualize(self, x: torch.Tensor, y: torch.Tensor, plan: PuzzlePlan, count: int = 4) -> dict:
        """As PairMix's, with the transported images as the sources (mixed = m own + (1 - m) partner)."""
        out = super().visualize(x, y, plan, count)
        k = out["mixed"].shape[0]
        own, partner = self.sources(x, plan)
        out["sources"] = torch.stack([own[:k], partner[:k]])
        out["title"] = f"{self.name} ({int(plan.grid)}x{int(plan.grid)} grid, transport {self.transport})"
        return out


__all__ = ["PuzzleMix", "PuzzlePlan", "input_saliency", "block_saliency", "boundary_penalties", "graphcut_costs",
           "GraphCutCosts", "solve_labels", "labels_to_mask", "transport_cost", "transport_approx",
           "transport_exact", "pixel_index", "gather_pixels", "default_settings", "size_problem"]
