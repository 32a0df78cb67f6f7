"""self_sup.eval.linear: what the notebook tests badly (workers, devices, determinism across calls)."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from self_sup.eval.knn import extract_features
from self_sup.eval.linear import evaluate_representation, linear_probe, linear_probe_model, results_table


class Blobs(Dataset):
    "Module-level (picklable) dataset: 3 well-separated Gaussian blobs in 8 dimensions."
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 3
        self.x = 5 * torch.eye(3, 8)[self.y] + torch.randn(n, 8, generator=g)
    def __len__(self): return len(self.y)
    def __getitem__(self, i): return self.x[i], int(self.y[i])


def test_evaluate_representation_with_worker_loaders():
    enc = nn.Linear(8, 4); torch.nn.init.eye_(enc.weight)
    train, test = Blobs(120, 0), Blobs(60, 1)
    direct = evaluate_representation(enc, train, test, ks=(5, 20), epochs=3)
    loaders = evaluate_representation(enc, DataLoader(train, batch_size=16, num_workers=2),
                                      DataLoader(test, batch_size=16), ks=(5, 20), epochs=3)
    assert direct == loaders
    assert direct['linear_top1'] == 100.0 and direct['knn@20'] == 100.0 and direct['dim'] == 4
    pre = evaluate_representation(None, extract_features(enc, train), extract_features(enc, test), ks=(5, 20), epochs=3)
    assert pre == direct


def test_probe_is_reproducible_whatever_the_global_rng():
    train, test = Blobs(300, 2), Blobs(90, 3)
    a = linear_probe(train.x, train.y, test.x, test.y, epochs=5)
    torch.manual_seed(123); torch.rand(10)                            # global RNG state does not matter
    b = linear_probe(train.x, train.y, test.x, test.y, epochs=5)
    assert torch.equal(a['probe'].linear.weight, b['probe'].linear.weight) and a['losses'] == b['losses']


def test_model_convenience_and_device_errors():
    train, test = Blobs(90, 4), Blobs(30, 5)
    r = linear_probe_model(nn.Identity(), train, test, epochs=3, weight_decay=1e-4, optimizer='adamw', lr=1e-2)
    assert set(r) >= {'top1', 'train_top1', 'losses', 'probe'} and 'top5' not in r
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='CUDA is not available'):
            linear_probe(train.x, train.y, test.x, test.y, device='cuda')


def test_results_table_bad_inputs():
    with pytest.raises(ValueError, match='at least one column'): results_table([{}])
    with pytest.raises(TypeError, match='list of dicts'): results_table([('a', 1)])
    assert results_table([{'x': torch.tensor(2.345)}]) == '| x |\n|---|\n| 2.3 |'
