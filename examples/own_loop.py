"""AdAutoMix in a plain PyTorch loop: your backbone, your data loader, your optimizer.

    python examples/own_loop.py                 # a few epochs on scikit-learn's digits, CPU or GPU
    python examples/own_loop.py --impl fused    # the compiled step (CUDA-graph captured on a GPU)
"""

import argparse

import torch
import torch.nn.functional as F
import torchvision
from sklearn.datasets import load_digits

from adautomix_fast.api import classifier, mix_model, param_groups, train_step

parser = argparse.ArgumentParser()
parser.add_argument("--impl", default="reference", choices=["reference", "fused"])
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--max-steps", type=int, default=None, help="stop early (the test suite runs a few)")
parser.add_argument("--batch-size", type=int, default=50)
args = parser.parse_args()
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# Data: any loader of (images, labels) batches. Digits are 8x8 grey: 32x32 RGB here.
digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32).div(16).unsqueeze(1).repeat(1, 3, 1, 1)
x = F.interpolate(x, size=32, mode="bilinear", align_corners=False).sub(0.5).div(0.5)
y = torch.tensor(digits.target)
train = torch.utils.data.TensorDataset(x[:1500], y[:1500])
loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True)

# Any backbone: a module (here torchvision's ResNet-18), or a name such as "timm/resnet50".
backbone = torchvision.models.resnet18(weights=None)
model = mix_model("adautomix", backbone, num_classes=10, mix_samples=3).to(device)

optimizer = torch.optim.SGD(param_groups(model), lr=0.05, momentum=0.9, weight_decay=5e-4)
total = args.epochs * len(loader)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
step = train_step(model, optimizer, total_steps=total, impl=args.impl)

done = 0
for epoch in range(args.epochs):
    for images, labels in loader:
        losses = step(images.to(device), labels.to(device))
        scheduler.step()
        done += 1
        if args.max_steps and done >= args.max_steps:
            break
    print(f"epoch {epoch + 1}: loss {float(losses['loss']):.3f}")
    if args.max_steps and done >= args.max_steps:
        break

# The EMA teacher as a plain classifier (logits), and the state for your own checkpoints.
net = classifier(model).eval()
with torch.no_grad():
    top1 = (net(x[1500:].to(device)).argmax(1).cpu() == y[1500:]).float().mean()
print(f"teacher top-1 on {len(y) - 1500} held-out digits: {100 * top1:.1f}%")
torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()},   # rng: the fused step's draws
           "own_loop_checkpoint.pt")
