"""The plain conditional DCGAN the GAN benchmark compares against (issue 3's reference).

Deliberately textbook (Radford et al. 2016 + projection conditioning, Miyato & Koyama 2018):

* G: [z (100), class embedding (50)] → linear → 256×4×4 → three stride-2 transposed 4×4 convs
  (256 → 128 → 64 → 1) with BatchNorm + ReLU, tanh output; 32² (28² data is reflect-padded
  to 32² exactly as for our models, and cropped back for scoring);
* D: three stride-2 4×4 convs (64 → 128 → 256) with LeakyReLU(0.2), no normalisation,
  linear logit + projection ⟨embed(c), φ(x)⟩;
* BCE (non-saturating) loss, Adam lr 2e-4, β = (0.5, 0.999), batch 64, no augmentation,
  no EMA, no regularisation. Sampling uses batch statistics, as the PyTorch DCGAN example.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional as F


class DCGenerator(nn.Module):
    def __init__(self, num_classes: int, z_dim: int = 100, emb: int = 50, ngf: int = 64,
                 resolution: int = 32) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.embed = nn.Embedding(num_classes, emb)
        self.fc = nn.Linear(z_dim + emb, ngf * 4 * 16)
        self.bn0 = nn.BatchNorm2d(ngf * 4)
        layers: list[nn.Module] = []
        ch = ngf * 4
        r = 4
        while r < resolution // 2:
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
            r *= 2
        layers += [nn.ConvTranspose2d(ch, 1, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.ngf = ngf

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, self.embed(c)], 1)).view(-1, self.ngf * 4, 4, 4)
        out: torch.Tensor = self.net(F.relu(self.bn0(h)))
        return out


class DCDiscriminator(nn.Module):
    def __init__(self, num_classes: int, ndf: int = 64, resolution: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, ch, r = 1, ndf, resolution
        while r > 4:
            layers += [nn.Conv2d(cin, ch, 4, 2, 1), nn.LeakyReLU(0.2, True)]
            cin, ch, r = ch, ch * 2, r // 2
        self.net = nn.Sequential(*layers)
        self.feat = cin * 16
        self.out = nn.Linear(self.feat, 1)
        self.embed = nn.Embedding(num_classes, self.feat)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.net(x).flatten(1)
        out: torch.Tensor = self.out(h).squeeze(1) + (self.embed(c) * h).sum(1)
        return out


class DCGANTrainer:
    """Same driving interface as :class:`node.training.loop.Trainer` for the benchmark."""

    def __init__(self, data: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 seed: int = 0, batch: int = 64) -> None:
        torch.manual_seed(seed)
        self.data = data  # float (N, 1, 32, 32) in [-1, 1]
        self.labels = labels
        self.batch = batch
        self.G = DCGenerator(num_classes, resolution=data.shape[-1])
        self.D = DCDiscriminator(num_classes, resolution=data.shape[-1])
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.nimg = 0

    def step(self) -> dict[str, float]:
        n = len(self.labels)
        idx = torch.randint(n, (self.batch,), generator=self.gen)
        real, c = self.data[idx], self.labels[idx]
        z = torch.randn(self.batch, self.G.z_dim)
        cf = self.labels[torch.randint(n, (self.batch,), generator=self.gen)]
        fake = self.G(z, cf)
        self.opt_D.zero_grad(set_to_none=True)
        loss_d = F.softplus(-self.D(real, c)).mean() + F.softplus(self.D(fake.detach(), cf)).mean()
        loss_d.backward()
        self.opt_D.step()
        self.opt_G.zero_grad(set_to_none=True)
        loss_g = F.softplus(-self.D(fake, cf)).mean()
        loss_g.backward()
        self.opt_G.step()
        self.nimg += self.batch
        return {"d_loss": float(loss_d), "g_adv": float(loss_g)}

    @torch.no_grad()
    def sample(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        self.G.train()  # batch statistics, as in the PyTorch DCGAN example
        out: torch.Tensor = self.G(z, c)
        return out


def params(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def as_uint8(x: torch.Tensor) -> npt.NDArray[np.uint8]:
    return np.clip(np.rint((x.squeeze(1).numpy() + 1) * 127.5), 0, 255).astype(np.uint8)
