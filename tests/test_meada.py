"""ME-ADA's generation pass: the ascent against a direct re-implementation of the official loop
(github.com/garyzhao/ME-ADA, ``ModelMEADA.maximize``) on a tiny model, across the two input
normalisations, and the uint8 images it stores."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from adautomix_fast.methods.meada import ascend, engine_step_size, entropy, meada_objective, to_uint8

MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)     # CIFAR-100's, as the engine's


class TinyNet(nn.Module):
    """A network of pixels in [0, 1]: (logits, penultimate features)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, pixels):
        emb = F.adaptive_avg_pool2d(F.relu(self.conv(pixels)), 1).flatten(1)
        return self.fc(emb), emb


def official_maximize(net, pixels, y, lr_max=20.0, loops_adv=15, eta=10.0, gamma=1.0):
    """The official loop on [-1, 1] inputs: a fresh SGD on the input, descent on -loss."""
    inputs = (pixels - 0.5) / 0.5

    def network(x):
        return net(x * 0.5 + 0.5)

    inputs_embedding = network(inputs)[-1].detach().clone()
    inputs_max = inputs.detach().clone()
    inputs_max.requires_grad_(True)
    optimizer = torch.optim.SGD(params=[inputs_max], lr=lr_max, momentum=0.0, weight_decay=0.0)
    for _ in range(loops_adv):
        logits, emb = network(inputs_max)
        out = F.softmax(logits, dim=1) * F.log_softmax(logits, dim=1)
        loss = (nn.CrossEntropyLoss()(logits, y) + eta * (-1.0 * out.sum(dim=1)).mean()
                - gamma * nn.MSELoss()(emb, inputs_embedding))
        net.zero_grad()
        optimizer.zero_grad()
        (-loss).backward()
        optimizer.step()
    return inputs_max.detach() * 0.5 + 0.5           # pixels, before the clamp


def test_the_ascent_equals_the_official_loop_in_the_engines_normalisation():
    torch.manual_seed(0)
    net = TinyNet().double().eval()
    pixels = torch.rand(6, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))
    want = official_maximize(net, pixels, y)
    m = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)

    def classify(x):
        return net(x * s + m)

    x_adv = ascend(classify, (pixels - m) / s, y, engine_step_size(STD))
    torch.testing.assert_close(x_adv * s + m, want, rtol=1e-9, atol=1e-10)
    assert (want - pixels).abs().max() > 1e-3                          # the images moved
    stored = to_uint8(x_adv, MEAN, STD)
    official = want.clamp(0.0, 1.0).mul(255).byte()                     # ToPILImage's conversion
    assert stored.dtype == torch.uint8 and torch.equal(stored, official)


def test_the_ascent_raises_the_objective():
    torch.manual_seed(1)
    net = TinyNet().eval()
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
    before = meada_objective(*net(x), net(x)[1].detach(), y)
    x_adv = ascend(lambda z: net(z), x, y, torch.full((3,), 0.5), steps=5)
    after = meada_objective(*net(x_adv), net(x)[1].detach(), y)
    assert after > before
    assert all(p.grad is None for p in net.parameters())               # the network is not trained


def test_entropy_is_maximal_for_uniform_logits():
    assert torch.isclose(entropy(torch.zeros(4, 10)), torch.log(torch.tensor(10.0)))
    assert entropy(torch.tensor([[50.0, 0.0, 0.0]])) < 1e-6
