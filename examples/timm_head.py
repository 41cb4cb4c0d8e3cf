"""Attach LGRLHead (or FCHead) to any timm backbone through ``features_only``.

    python examples/timm_head.py --model resnet18 --steps 100
"""

import argparse
import itertools

import timm
import torch

from landmark_graph import FCHead, LGRLHead, SoftWingLoss
from landmark_graph.data.synthetic import SyntheticFaces
from landmark_graph.metrics import nme

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="resnet18", help="any timm model with features_only support")
parser.add_argument("--head", choices=["lgrl", "fc"], default="lgrl")
parser.add_argument("--steps", type=int, default=100)
parser.add_argument("--image-size", type=int, default=128)
args = parser.parse_args()
torch.manual_seed(0)


class Aligner(torch.nn.Module):
    """timm trunk (last feature map only) + landmark head, coordinates in [-1, 1]."""

    def __init__(self, name: str, head: str, num_landmarks: int = 68) -> None:
        super().__init__()
        self.trunk = timm.create_model(name, pretrained=False, features_only=True, out_indices=(-1,))
        channels = self.trunk.feature_info.channels()[-1]
        self.head = (LGRLHead(num_landmarks, k=3, in_channels=channels) if head == "lgrl"
                     else FCHead(num_landmarks, in_channels=channels))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images)[-1])


size = args.image_size
data = SyntheticFaces("300w68", length=2000, image_size=size, seed=0)
loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True)
model = Aligner(args.model, args.head)
criterion = SoftWingLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

for step, batch in enumerate(itertools.islice(loader, args.steps)):
    pred = (model(batch["image"]) + 1) * 128  # pixels of a 256 crop: Soft Wing's scale
    loss = criterion(pred, batch["landmarks"] * (256 / size))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if (step + 1) % 25 == 0 or step + 1 == args.steps:
        print(f"step {step + 1}: loss {loss.item():.3f}")

model.eval()
with torch.no_grad():
    pred = (model(batch["image"]) + 1) * (size / 2)
print(f"training-batch NME: {nme(pred, batch['landmarks'], scheme='300w68').mean():.4f}")
