"""self_sup.eval.knn: what the notebook tests badly (DataLoader workers, devices, large chunked inputs)."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from self_sup.eval.knn import extract_features, knn_accuracy, knn_classify


class Squares(Dataset):
    "Module-level, so DataLoader workers can pickle it: item i is (a [2, 3] tensor filled with i, i % 4)."
    def __len__(self): return 37
    def __getitem__(self, i): return torch.full((2, 3), float(i)), i % 4


def test_workers_keep_dataset_order():
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5))
    f0, l0 = extract_features(model, Squares(), batch_size=8, num_workers=0)
    f2, l2 = extract_features(model, Squares(), batch_size=8, num_workers=2)
    assert torch.equal(f0, f2) and torch.equal(l0, l2)
    assert torch.equal(l0, torch.arange(37) % 4)
    f3, l3 = extract_features(model, DataLoader(Squares(), batch_size=5, num_workers=2))
    assert torch.allclose(f0, f3, rtol=1e-5, atol=1e-4) and torch.equal(l0, l3)   # other batch size: gemm rounding differs


def test_explicit_device_leaves_model_where_it_was():
    model = nn.Linear(6, 3)
    extract_features(nn.Sequential(nn.Flatten(), model), Squares(), device='cpu')
    assert model.weight.device.type == 'cpu'
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda' was requested but CUDA is not available"):
            extract_features(nn.Sequential(nn.Flatten(), model), Squares(), device='cuda')
        assert model.weight.device.type == 'cpu'


def test_model_error_restores_training_mode():
    class Bad(nn.Module):
        def forward(self, x): raise RuntimeError('boom')
    m = Bad().train()
    with pytest.raises(RuntimeError, match='boom'): extract_features(m, Squares())
    assert m.training


def test_chunking_and_numpy_inputs():
    g = torch.Generator().manual_seed(1)
    tr, te = torch.randn(2000, 64, generator=g), torch.randn(300, 64, generator=g)
    lab = torch.randint(0, 7, (2000,), generator=g)
    one = knn_classify(tr, lab, te, k=50, chunk_size=300)
    assert torch.equal(one, knn_classify(tr, lab, te, k=50, chunk_size=1))
    assert torch.equal(one, knn_classify(tr.numpy(), lab.numpy(), te.numpy(), k=50))
    half = knn_classify(tr.half(), lab, te.half(), k=50)          # low-precision features are computed in float32
    assert (half == one).float().mean() > 0.95
    acc = knn_accuracy(tr, lab, te, one, ks=[50])
    assert acc == {50: 100.0}
