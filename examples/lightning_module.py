"""AdAutoMix as a Lightning module: the step runs both adversarial updates itself, so the module
uses manual optimisation; Lightning keeps the loop, logging and checkpoints.

    pip install lightning
    python examples/lightning_module.py
"""

import argparse

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from sklearn.datasets import load_digits

from adautomix_fast.api import classifier, mix_model, param_groups, train_step


class AdAutoMixModule(L.LightningModule):
    def __init__(self, num_classes: int = 10, lr: float = 0.05, total_steps: int = 100, impl: str = "reference"):
        super().__init__()
        self.automatic_optimization = False   # the AdAutoMix step updates G, the student and the EMA teacher
        self.model = mix_model("adautomix", torchvision.models.resnet18(weights=None), num_classes)
        self.lr, self.total_steps, self.impl, self.step_fn = lr, total_steps, impl, None

    def configure_optimizers(self):
        return torch.optim.SGD(param_groups(self.model), lr=self.lr, momentum=0.9, weight_decay=5e-4)

    def training_step(self, batch, batch_idx):
        if self.step_fn is None:   # built on the device Lightning moved the model to
            self.step_fn = train_step(self.model, self.optimizers().optimizer, total_steps=self.total_steps,
                                      impl=self.impl)
            if getattr(self, "_step_state", None):
                self.step_fn.load_state_dict(self._step_state)
        losses = self.step_fn(*batch)
        self.log("loss", losses["loss"], prog_bar=True)

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        top1 = (classifier(self.model)(images).argmax(1) == labels).float().mean()
        self.log("teacher_top1", top1, prog_bar=True)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["adautomix_step"] = self.step_fn.state_dict() if self.step_fn is not None else None

    def on_load_checkpoint(self, checkpoint):
        self._step_state = checkpoint.get("adautomix_step")


def digits_loaders(batch_size: int = 50):
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).div(16).unsqueeze(1).repeat(1, 3, 1, 1)
    x = F.interpolate(x, size=32, mode="bilinear", align_corners=False).sub(0.5).div(0.5)
    y = torch.tensor(d.target)
    train = torch.utils.data.TensorDataset(x[:1500], y[:1500])
    val = torch.utils.data.TensorDataset(x[1500:], y[1500:])
    return (torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True),
            torch.utils.data.DataLoader(val, batch_size=100))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=None, help="batches per epoch (the test suite runs a few)")
    parser.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args()
    train, val = digits_loaders(args.batch_size)
    per_epoch = min(len(train), args.max_steps or len(train))
    module = AdAutoMixModule(total_steps=args.epochs * per_epoch)
    # Manual optimisation: Lightning's step counter follows optimizer.step() calls, which the
    # AdAutoMix step makes inside itself, so the budget is in epochs and batches per epoch.
    trainer = L.Trainer(max_epochs=args.epochs, limit_train_batches=per_epoch, accelerator="auto", devices=1,
                        logger=False, enable_checkpointing=False, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(module, train, val)
    print("teacher_top1", float(trainer.callback_metrics["teacher_top1"]))
