"""C3D (Tran et al. 2015) as its PyTorch ports write it, reduced in width.

Mirrors the widely used port (jfzhang95/pytorch-video-recognition `C3D_model.py`, the same names as
DavideA/c3d-pytorch): plain attributes `conv1, pool1, conv2, pool2, conv3a, conv3b, pool3, conv4a, conv4b,
pool4, conv5a, conv5b, pool5, fc6, fc7, fc8`, one shared `relu` and `dropout`, 3 × 3 × 3 convs with bias,
pool1 spatial only, pool5 with (0, 1, 1) padding, and the flatten written `x.view(-1, 8192)` (a reshape whose
batch is -1). Widths are the original's (64 … 512, fc 4096) divided by `div`; the real input is
3 × 16 × 112 × 112, the reduced one 3 × 16 × 32 × 32, so the flattened size is the reduced pool5's.
"""

from __future__ import annotations

import torch
from torch import nn


class C3D(nn.Module):
    """conv1 → pool1 → conv2 → pool2 → conv3a/b → pool3 → conv4a/b → pool4 → conv5a/b → pool5 → fc6 → fc7 → fc8."""

    def __init__(self, num_classes: int = 487, div: int = 1, flat_spatial: int = 16) -> None:
        super().__init__()

        def c(n: int) -> int:
            return n // div

        self.conv1 = nn.Conv3d(3, c(64), kernel_size=(3, 3, 3), padding=(1, 1, 1))
        self.pool1 = nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.conv2 = nn.Conv3d(c(64), c(128), kernel_size=(3, 3, 3), padding=(1, 1, 1))
        self.pool2 = nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2))
        self.conv3a = nn.Conv3d(c(128), c(256), kernel_size=(3, 3, 3), padding=(1, 1, 1))
        self.conv3b = nn.Conv3d(c(256), c(256), kernel_size=(3, 3, 3), padding=(1, 1, 1))
        self.pool3 = nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2))
        self.conv4a = nn.Conv3d(c(256), c(512), kernel_size=(3, 3, 3), padding=(1, 1, 1))
        self.conv4b = nn.Conv3d(c(512), c(512), kernel_size=(3, 3, 3), padding=(1, 1, 1))
        self.pool4 = nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2))
        self.conv5a = nn.Conv3d(c(512), c(512), kernel_size=(3, 3, 3), padding=(1, 1, 1))
        self.conv5b = nn.Conv3d(c(512), c(512), kernel_size=(3, 3, 3), padding=(1, 1, 1))
        self.pool5 = nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2), padding=(0, 1, 1))
        self.flat = c(512) * flat_spatial  # 8192 = 512 × 1 × 4 × 4 for 16 × 112 × 112 clips
        self.fc6 = nn.Linear(self.flat, c(4096))
        self.fc7 = nn.Linear(c(4096), c(4096))
        self.fc8 = nn.Linear(c(4096), num_classes)
        self.dropout = nn.Dropout(p=0.5)
        self.relu = nn.ReLU()
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                torch.nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        x = self.pool1(x)
        x = self.relu(self.conv2(x))
        x = self.pool2(x)
        x = self.relu(self.conv3a(x))
        x = self.relu(self.conv3b(x))
        x = self.pool3(x)
        x = self.relu(self.conv4a(x))
        x = self.relu(self.conv4b(x))
        x = self.pool4(x)
        x = self.relu(self.conv5a(x))
        x = self.relu(self.conv5b(x))
        x = self.pool5(x)
        x = x.view(-1, self.flat)
        x = self.relu(self.fc6(x))
        x = self.dropout(x)
        x = self.relu(self.fc7(x))
        x = self.dropout(x)
        return self.fc8(x)


def c3d(num_classes: int = 487, div: int = 8) -> C3D:
    """C3D with channels / `div` for 3 × 16 × 32 × 32 clips (pool5 ends at 1 × 2 × 2)."""
    return C3D(num_classes=num_classes, div=div, flat_spatial=4)
