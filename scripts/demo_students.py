"""A student of your own for `make demo-byo`: an ordinary PyTorch module, exported as a
TorchScript student by scripts/export_student.py:

    python3 scripts/export_student.py demo_students:GrayCnn --input-shape 1,20,20 \
        --out runs/byo-student.pt

GrayCnn sees a gray 1 x 20 x 20 image and returns logits [batch, classes]: two blocks of a 3 x 3
convolution, BatchNorm, ReLU and 2 x 2 max pooling (20 -> 10 -> 5), dropout, and a linear head. BatchNorm's running statistics and the dropout follow
PyTorch's train/eval modes in student-trainer as they do in PyTorch, and the trained weights come
back under this class's state_dict() names (model.<hash>.safetensors):

    model = GrayCnn()
    model.load_state_dict(safetensors.torch.load_file(path), strict=True)
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class GrayCnn(nn.Module):
    def __init__(self, classes: int = 10, width: int = 16, size: int = 20, dropout: float = 0.2):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * width * (size // 4) ** 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.head(self.drop(x.flatten(1)))
