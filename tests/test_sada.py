"""SADA (the spectral method's single-domain core): the amplitude attack against a transcription
of the official ``attack_amp`` (github.com/DIAL-RPI/Spectral-Adversarial-Data-Augmentation,
``sada.py``) given the same draws, its consistency loss against ``train_test.py``'s, the early
stop, the warm-up. The step itself runs through both implementations and the CLI in the registry
walks (tests/test_methods.py, tests/test_cli_methods.py)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from adautomix_fast.methods.sada import SADA, amplitude_attack, amplitude_phase, js_consistency, reconstruct

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class TinyNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, classes)

    def forward(self, pixels):
        return self.fc(F.adaptive_avg_pool2d(torch.tanh(self.conv(pixels)), 1).flatten(1))


def official_attack_amp(model, image_origin, labels, dc_rand, brightness, step_size=0.08, num_steps=5, tau=1):
    """``attack_amp`` with config defaults (ce, neg, random_init normal, weight_map None), its
    two draws (``torch.rand_like`` of the DC amplitude, ``np.random.uniform(0, 0.6)``) passed in."""
    def get_ap(image):
        img_fft = torch.fft.fft2(image)
        return torch.abs(img_fft), torch.angle(img_fft)

    def get_image(amp, phase):
        img_recon = amp * torch.exp(1j * phase)
        img_recon = torch.abs(torch.fft.ifft2(img_recon))
        return img_recon / torch.max(img_recon)

    model.eval()
    budget = torch.ones(len(labels)) * tau
    w_map = torch.Tensor([1]).to(image_origin.dtype)
    loss_fn = nn.CrossEntropyLoss(reduction="mean")
    with torch.no_grad():
        amp, phase = get_ap(image_origin)
        amp, phase = amp.detach(), phase.detach()
    amp[:, :, 0, 0] = (dc_rand * 4 + 1) * amp[:, :, 0, 0]
    amp.detach_()
    amp.requires_grad = True
    for _ in range(num_steps):
        image_recon = torch.clamp(get_image(amp, phase), 0.0, 1.0)
        output = model(image_recon)
        pred = output.max(1, keepdim=True)[1]
        incorrect = pred.squeeze() != labels
        budget[torch.logical_and(incorrect, budget != 0)] -= 1
        attack_idx = (budget > 0).detach().cpu().numpy()
        if attack_idx.sum() == 0:
            break
        loss_adv = loss_fn(output, labels)
        grad = torch.autograd.grad(loss_adv, [amp])[0]
        grad.data[~attack_idx] = 0
        amp = amp.detach() + step_size * torch.sign(grad.detach()) * amp.detach() * w_map.detach()
        amp = torch.clamp(amp, 0.0)
        amp.requires_grad = True
    image_recon = torch.clamp(get_image(amp, phase), 0.0, 1.0).detach()
    return (image_recon * (1.0 + brightness)).clamp(0.0, 1.0)   # TF.adjust_brightness on a float tensor


def test_the_amplitude_attack_equals_the_official_one_given_the_same_draws():
    torch.manual_seed(0)
    net = TinyNet().double()
    pixels = torch.rand(8, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        y = net(pixels).argmax(1)          # correctly classified: every sample is attacked
    y[:2] = (y[:2] + 1) % 5                # two misclassified from the start: never attacked
    dc_rand = torch.rand(8, 3, dtype=torch.float64)
    want = official_attack_amp(net, pixels, y, dc_rand, 0.37)
    got = amplitude_attack(net, pixels, y, dc_rand * 4 + 1, 0.37)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    # The attack moved the images beyond the random start and the brightness.
    start = amplitude_attack(net, pixels, y, dc_rand * 4 + 1, 0.37, steps=0)
    assert (got - start).abs().max() > 1e-3
    assert all(p.grad is None for p in net.parameters())


def test_the_attack_keeps_the_phase_and_changes_the_amplitude():
    torch.manual_seed(1)
    pixels = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    amp, phase = amplitude_phase(pixels)
    torch.testing.assert_close(reconstruct(amp, phase), pixels / pixels.max())


def test_the_consistency_is_the_official_jensen_shannon_term():
    torch.manual_seed(2)
    logits = [torch.randn(6, 10, dtype=torch.float64) for _ in range(4)]
    p = [F.softmax(z, dim=1) for z in logits]
    mixture = torch.clamp((p[0] + p[1] + p[2] + p[3]) / 4.0, 1e-7, 1).log()
    want = (F.kl_div(mixture, p[0], reduction="batchmean") + F.kl_div(mixture, p[1], reduction="batchmean")
            + F.kl_div(mixture, p[2], reduction="batchmean") + F.kl_div(mixture, p[3], reduction="batchmean")) / 4.0
    torch.testing.assert_close(js_consistency(logits).double(), want, rtol=1e-5, atol=1e-7)
    assert js_consistency([logits[0]] * 4) < 1e-7


def test_the_consistency_of_a_saturated_softmax_has_a_finite_gradient():
    """A logit gap of 120 makes a softmax probability exactly 0 in float32: the gradient stays
    finite (with the probabilities as KL targets it was NaN and the run diverged on CIFAR-10)."""
    z = torch.tensor([[0.0, 120.0, 0.0], [1.0, 2.0, 3.0]], requires_grad=True)
    w = torch.tensor([[0.0, 1.0, 0.0], [1.0, 2.0, 3.0]], requires_grad=True)
    loss = js_consistency([z, w])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all() and torch.isfinite(w.grad).all()
    assert w.grad[0].abs().sum() > 0            # the unsaturated view is still pulled towards the mixture


def test_the_warm_up_trains_without_attack_and_then_attacks():
    torch.manual_seed(3)
    model = SADA("tiny", 10, cifar_stem=True, warmup=0.25, mean=MEAN, std=STD)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    model.set_schedule(24, 100)
    plan = model.complete_plan(x, y, model.sample_plan(4))
    assert float(model.consistency_weight) == 10.0 and plan.views.shape == (3, 4, 3, 16, 16)
    assert all(torch.equal(v, x) for v in plan.views)
    assert float(model.step_losses(x, y, plan)["consistency"]) < 1e-6
    model.set_schedule(25, 100)
    plan = model.complete_plan(x, y, model.sample_plan(4))
    assert float(model.consistency_weight) == torch.tensor(0.025).item()
    assert not torch.allclose(plan.views[0], x) and not torch.allclose(plan.views[0], plan.views[1])
    out = model.step_losses(x, y, plan)
    assert float(out["consistency"]) > 0
    torch.testing.assert_close(out["loss"], out["loss_ce"] + 0.025 * out["consistency"])
    assert model.training and all(m.training for m in model.modules())


def test_the_plans_draws_follow_the_official_laws():
    model = SADA("tiny", 10, cifar_stem=True)
    plan = model.sample_plan(5000, generator=torch.Generator().manual_seed(0))
    assert plan.dc_scale.shape == (3, 5000, 3) and plan.brightness.shape == (3,)
    assert 1.0 <= plan.dc_scale.min() and plan.dc_scale.max() <= 5.0 and abs(plan.dc_scale.mean() - 3.0) < 0.05
    assert 0.0 <= plan.brightness.min() and plan.brightness.max() <= 0.6
