"""ONNX export of LGRLHead's occlusion-aware outputs, checked with ONNX Runtime."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from landmark_graph import LGRLHead
from landmark_graph.onnx import export_onnx

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

SHAPE = (8, 4, 4)  # backbone map (C, H, W)


class Details(nn.Module):
    """Three heads' :class:`HeadOutput` as one flat tuple (``None`` fields left out): attention +
    gating, map-to-node + gating, attention + gating with a 3x3 window (last, so that the first
    two draw the same random parameters as before it was added)."""

    def __init__(self) -> None:
        super().__init__()
        options = dict(hidden_features=8, num_blocks=1, hidden_channels=8, visibility=True, gate_edges=True,
                       uncertainty=True)
        self.attention = LGRLHead(6, 2, embedding="attention", **options)
        self.paper = LGRLHead(6, 2, expansion=2, **options)
        self.windowed = LGRLHead(6, 2, embedding="attention", attention_window=3, **options)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = (*self.attention(x, return_details=True), *self.paper(x, return_details=True),
                   *self.windowed(x, return_details=True))
        return tuple(t for t in outputs if t is not None)


def test_onnx_runtime_matches_pytorch_on_every_output(tmp_path):
    torch.manual_seed(0)
    model = Details()
    model(torch.randn(4, *SHAPE))  # lazy init and one BN statistics update
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised layers would make outputs trivial
            p.add_(0.3 * torch.randn_like(p))
    path = export_onnx(model, tmp_path / "details.onnx", torch.randn(2, *SHAPE))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert len(session.get_outputs()) == 11
    model.eval()
    for batch in (1, 5):
        x = torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(x)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        names = ("landmarks", "visibility", "log_scale", "attention_logits", "paper landmarks",
                 "paper visibility", "paper log_scale", "windowed landmarks", "windowed visibility",
                 "windowed log_scale", "windowed attention_logits")
        for name, g, e in zip(names, got, expected, strict=True):
            assert e.abs().max() > 1e-2, name  # an output of ~0 would make the check vacuous
            torch.testing.assert_close(torch.from_numpy(g), e, rtol=0, atol=1e-4, msg=name)
