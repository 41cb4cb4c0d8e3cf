"""Two CPU processes (gloo) train the same run under DistributedDataParallel and must agree."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from landmark_graph.engine.training import TrainConfig, build_model, train

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(**changes) -> TrainConfig:
    return TrainConfig(scheme="cofw29", image_size=32, train_size=32, test_size=4, backbone_width=8,
                       hidden_features=16, num_blocks=1, head_channels=16, epochs=1, steps_per_epoch=3,
                       batch_size=4, lr=1e-2, progress=False, seed=3, **changes)


def _worker(rank: int, world: int, port: int, out: str, changes: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    result = train(_config(**changes))
    model = result["model"]
    params = {name: p.detach() for name, p in model.named_parameters()}
    torch.save({"params": params, "state": model.state_dict()}, os.path.join(out, f"rank{rank}.pt"))
    assert not dist.is_initialized()  # train() leaves no process group behind


def test_two_processes_agree(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), {}), nprocs=2, join=True)
    saved = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # Parameters agree; BatchNorm running statistics do not (each rank keeps its last local
    # update of the buffers, which DDP re-broadcasts from rank 0 at the next forward).
    for name, value in saved[0]["params"].items():
        assert torch.equal(value, saved[1]["params"][name]), f"ranks disagree on {name}"
    initial = dict(build_model(_config(), None).named_parameters())
    assert any(not torch.equal(value, initial[name]) for name, value in saved[0]["params"].items()), (
        "training did not change the parameters")


def test_sync_bn_needs_several_processes():
    with pytest.raises(ValueError, match="sync_bn needs"):
        train(_config(sync_bn=True))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="SyncBatchNorm needs 2 GPUs (PyTorch: GPU only)")
def test_two_gpus_sync_bn_agree(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), {"sync_bn": True}), nprocs=2, join=True)
    saved = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name, value in saved[0]["state"].items():  # running statistics are synchronised too
        assert torch.equal(value, saved[1]["state"][name]), f"ranks disagree on {name}"
