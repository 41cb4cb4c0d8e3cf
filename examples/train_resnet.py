"""A plain PyTorch training loop: a torchvision ResNet-18 trunk with LGRLHead on synthetic faces.

    python examples/train_resnet.py --steps 300
"""

import argparse

import torch
import torchvision
from torch import nn

from landmark_graph import LGRLHead, RelativeLocationLoss, SoftWingLoss
from landmark_graph.data.synthetic import SyntheticFaces
from landmark_graph.metrics import nme

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=300)
parser.add_argument("--batch-size", type=int, default=16)
parser.add_argument("--image-size", type=int, default=128)
args = parser.parse_args()
torch.manual_seed(0)

size = args.image_size
train_set = SyntheticFaces("wflw98", length=5000, image_size=size, seed=0)
test_set = SyntheticFaces("wflw98", length=64, image_size=size, seed=1, occlusion=1.0)
loader = torch.utils.data.DataLoader(train_set, args.batch_size, shuffle=True)

resnet = torchvision.models.resnet18(weights=None)  # weights="DEFAULT" for ImageNet weights
backbone = nn.Sequential(*list(resnet.children())[:-2])  # (B, 512, S/32, S/32)
# The neighbourhood of eq. 1-2, from the training landmarks (no images are rendered for this).
head = LGRLHead(98, k=3, adjacency=train_set.landmarks(500), in_channels=512)
model = nn.Sequential(backbone, head)

# The head predicts coordinates in [-1, 1]; the losses see pixels of a 256x256 crop (their scale).
absolute, relative = SoftWingLoss(), RelativeLocationLoss(head.adjacency)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)

step = 0
while step < args.steps:
    for batch in loader:
        pred = (model(batch["image"]) + 1) * 128
        target = batch["landmarks"] * (256 / size)
        loss = absolute(pred, target) + 1.0 * relative(pred, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        step += 1
        if step % 50 == 0 or step == args.steps:
            print(f"step {step}: loss {loss.item():.3f}")
        if step == args.steps:
            break

model.eval()
with torch.no_grad():
    batch = next(iter(torch.utils.data.DataLoader(test_set, len(test_set))))
    pred = (model(batch["image"]) + 1) * (size / 2)
    print(f"NME on occluded test faces: {nme(pred, batch['landmarks'], scheme='wflw98').mean():.4f}")
