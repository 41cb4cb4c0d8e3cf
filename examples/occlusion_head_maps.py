"""One occluded face through the paper head and the occlusion-aware head: edges, attention, visibility.

    python examples/occlusion_head_maps.py                       # ~10 min on one CPU thread
    python examples/occlusion_head_maps.py --out docs/img/occlusion_head.png

Trains both heads on the same synthetic COFW-29 faces (a small CNN with a 128x8x8 map at 64 px,
the profile of ``benchmarks/ablation.py --study occlusion_head``): the
paper's ``LGRLHead`` and ``LGRLHead(embedding="attention", visibility=True, gate_edges=True,
uncertainty=True)`` with its losses at their default weights and occlusion-consistency
training (the best variant of the study in docs/results.md). Then draws, for one test face with
occluders: each head's edge weights as lines from sender to receiver (the occlusion-aware
head's gated by the senders' predicted visibility), the attention maps of a few landmarks, and
the predicted visibility against the true occlusion flags.
"""

import argparse
import dataclasses
import sys

import numpy as np
import torch

from landmark_graph.data.synthetic import SyntheticConfig, SyntheticFaces, synthesize_face
from landmark_graph.engine.drawing import pyplot
from landmark_graph.engine.training import CachedDataset, TrainConfig, train
from landmark_graph.metrics import nme

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=600, help="training steps per head (default: 600)")
parser.add_argument("--train-size", type=int, default=2000, help="training faces (default: 2000)")
parser.add_argument("--face", type=int, default=0, help="which occluded test face to draw (default: 0)")
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--out", default="occlusion_head.png")
args = parser.parse_args()
torch.set_num_threads(args.threads)

paper = TrainConfig(scheme="cofw29", image_size=64, train_size=args.train_size, test_size=50,
                    backbone_width=32, backbone_depth=3, hidden_features=64, num_blocks=2,
                    head_channels=128, batch_size=32, lr=2e-3, epochs=1, steps_per_epoch=args.steps,
                    progress=False)
aware = dataclasses.replace(paper, embedding="attention", visibility=True, gate_edges=True, uncertainty=True,
                            consistency_weight=1.0)
train_set = CachedDataset(SyntheticFaces("cofw29", args.train_size, 64, seed=0, occlusion=0.5))
test_sets = {"occluded": CachedDataset(SyntheticFaces("cofw29", 50, 64, seed=2, occlusion=1.0))}
models = {}
for name, config in (("paper head", paper), ("occlusion-aware head", aware)):
    result = train(config, train_set=train_set, test_sets=test_sets)
    models[name] = result["model"].eval()
    print(f"{name}: occluded test NME {result['metrics']['occluded']['nme']:.4f} ({result['seconds']:.0f}s)")

# A face with a fair share of its landmarks occluded (20-45 %).
heavy = SyntheticConfig(occlusion=1.0, max_occluders=2, occluder_size=(0.25, 0.45))
faces = (synthesize_face("cofw29", 7, i, 64, heavy) for i in range(200))
face = [f for f in faces if 0.2 <= f["occluded"].float().mean() <= 0.45][args.face]
image, target, occluded = face["image"][None], face["landmarks"][None], face["occluded"]
with torch.no_grad():
    outputs = {name: model(image, return_details=True) for name, model in models.items()}
    features = {name: model.backbone(image) for name, model in models.items()}
    edges = {name: model.head.dense_edge_weights(features[name])[0] for name, model in models.items()}
    attention = models["occlusion-aware head"].head.attention_maps(features["occlusion-aware head"])[0]
for name, out in outputs.items():
    print(f"{name}: this face's NME {nme(out.landmarks, target).item():.4f}, visible-only "
          f"{nme(out.landmarks, target, mask=~occluded[None]).item():.4f}")

plt = pyplot(required=False)
if plt is None:
    sys.exit(0)
from matplotlib.collections import LineCollection  # noqa: E402  (matplotlib is optional)

picture = image[0].permute(1, 2, 0).numpy()
fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
for ax, (name, out) in zip(axes[:2], outputs.items(), strict=True):
    points = out.landmarks[0].numpy()
    weights = edges[name].numpy()  # (receiver, sender)
    receivers, senders = np.nonzero(weights * (1 - np.eye(len(weights))))
    segments = np.stack([points[senders], points[receivers]], axis=1)
    colours = np.zeros((len(segments), 4))
    colours[:, :3] = (0.1, 0.8, 1.0)
    colours[:, 3] = np.clip(weights[receivers, senders] / weights.max(), 0.05, 1.0)
    ax.imshow(picture)
    ax.add_collection(LineCollection(segments, colors=colours, linewidths=1.2))
    judged = (np.zeros(len(points), bool) if out.visibility_logits is None
              else torch.sigmoid(out.visibility_logits[0]).numpy() < 0.5)
    ax.scatter(*points[~judged].T, s=5, c="lime", label="predicted")
    if judged.any():
        ax.scatter(*points[judged].T, s=14, c="red", marker="x", linewidths=1, label="judged occluded")
    ax.set_title(f"{name}:\nedges (input layer){', gated' if 'aware' in name else ''}", fontsize=9)
    ax.legend(fontsize=6, loc="lower left")
# Attention of six landmarks spread over the scheme's order.
chosen = np.linspace(0, target.shape[1] - 1, 6).round().astype(int).tolist()
size = picture.shape[0]
maps = attention[chosen] / attention[chosen].amax(dim=(-2, -1), keepdim=True)  # each map's peak at 1
axes[2].imshow(picture)
axes[2].imshow(maps.amax(0).numpy(), cmap="magma", alpha=0.6, interpolation="bilinear",
               extent=(-0.5, size - 0.5, size - 0.5, -0.5))
axes[2].scatter(*target[0, chosen].numpy().T, s=18, c="white", marker="+", label="true position")
axes[2].set_title("occlusion-aware head: attention of\n6 landmarks, each scaled to its peak", fontsize=9)
axes[2].legend(fontsize=6, loc="lower left")
probability = torch.sigmoid(outputs["occlusion-aware head"].visibility_logits[0]).numpy()
axes[3].imshow(picture)
shown = axes[3].scatter(*target[0].numpy().T, s=10, c=probability, cmap="RdYlGn", vmin=0, vmax=1)
axes[3].scatter(*target[0, occluded].numpy().T, s=30, facecolors="none", edgecolors="white", linewidths=0.6,
                label="truly occluded")
axes[3].set_title("occlusion-aware head:\npredicted visibility (green = visible)", fontsize=9)
axes[3].legend(fontsize=6, loc="lower left")
fig.colorbar(shown, ax=axes[3], fraction=0.046)
for ax in axes:
    ax.set_xlim(-0.5, size - 0.5)
    ax.set_ylim(size - 0.5, -0.5)
    ax.axis("off")
fig.tight_layout()
fig.savefig(args.out, dpi=110)
print(f"wrote {args.out}")
