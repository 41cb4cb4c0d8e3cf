"""Build the L-GRL neighbourhood (eq. 1-2) from your own training landmarks and train with it.

    python examples/adjacency_from_landmarks.py                      # synthetic stand-in shapes
    python examples/adjacency_from_landmarks.py --landmarks my.npy   # your (M, N, 2) array

The adjacency keeps, for each landmark, the k others whose coordinates are most correlated
with its own over the training set: the points that move together.
"""

import argparse
import itertools

import numpy as np
import torch

from landmark_graph import LGRLHead, RelativeLocationLoss, SoftWingLoss, build_correlation_adjacency
from landmark_graph.data.synthetic import SyntheticFaces
from landmark_graph.engine.backbones import SmallCNN

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--landmarks", help=".npy file of training landmarks (M, N, 2), any units")
parser.add_argument("--k", type=int, default=3)
parser.add_argument("--steps", type=int, default=50)
args = parser.parse_args()
torch.manual_seed(0)

faces = SyntheticFaces("300w68", length=1000, image_size=64, seed=0)
shapes = np.load(args.landmarks) if args.landmarks else faces.landmarks(1000).numpy()
adjacency = build_correlation_adjacency(shapes, k=args.k)  # BoolTensor[N, N], rows are receivers
symmetric = build_correlation_adjacency(shapes, k=args.k, symmetric=True)
print(f"{shapes.shape[0]} shapes of {shapes.shape[1]} landmarks: {int(adjacency.sum())} directed edges, "
      f"{int(symmetric.sum())} after symmetrising")
for node in (30, 36, 48):  # nose tip, an eye corner, a mouth corner in the 68-point ordering
    if node < adjacency.shape[0]:
        print(f"landmark {node} listens to {adjacency[node].nonzero().flatten().tolist()}")

# Train a small model with it; the relative location loss uses the same neighbourhood.
if shapes.shape[1] == 68:
    head = LGRLHead(68, k=args.k, adjacency=adjacency, hidden_features=64, num_blocks=2)
    model = torch.nn.Sequential(SmallCNN(width=16), head)
    absolute, relative = SoftWingLoss(), RelativeLocationLoss(head.adjacency)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loader = torch.utils.data.DataLoader(faces, batch_size=16, shuffle=True)
    for batch in itertools.islice(loader, args.steps):  # steps <= one pass over the data
        pred = (model(batch["image"]) + 1) * 128  # pixels of a 256 crop
        target = batch["landmarks"] * 4.0
        loss = absolute(pred, target) + relative(pred, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"after {args.steps} steps: loss {loss.item():.3f}")
