"Bad inputs and edge cases of the dense (unsupervised segmentation) evaluation, self_sup.eval.dense."
import matplotlib
import pytest
import torch

from self_sup.eval.dense import (cluster_miou, cluster_patches, confusion_matrix, evaluate_dense, iou_per_class,
                                 kmeans, plot_clusters)


def _data(B=2, grid=(4, 4), C=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    truth = torch.randint(0, C, (B, *grid), generator=g)
    feats = torch.nn.functional.one_hot(truth, C).float() + 0.05 * torch.randn(B, *grid, C, generator=g)
    return feats.reshape(B, -1, C), truth


def test_bad_inputs():
    feats, truth = _data()
    with pytest.raises(TypeError, match='integer label maps'): confusion_matrix(truth.float(), truth, 3, 3)
    with pytest.raises(ValueError, match='target holds class ids from 0 to 2; expected 0..1'): confusion_matrix(truth, truth, 3, 2)
    with pytest.raises(ValueError, match='no scored pixel'): cluster_miou(truth, torch.full_like(truth, 255))
    with pytest.raises(ValueError, match="matching must be one of"): cluster_miou(truth, truth, matching='greedy')
    with pytest.raises(ValueError, match='masks must have shape \\[B, H, W\\]'): evaluate_dense(feats, truth[0], 3)
    with pytest.raises(TypeError, match='features must be a float tensor'): evaluate_dense(feats.long(), truth, 3)
    with pytest.raises(ValueError, match='tokens \\[B, N, D\\] or maps \\[B, D, h, w\\]'): evaluate_dense(feats[0], truth, 3)
    with pytest.raises(ValueError, match='grid \\(3, 3\\) does not match'): cluster_patches(feats.reshape(2, 4, 4, 3).permute(0, 3, 1, 2), 3, grid=(3, 3))
    with pytest.raises(ValueError, match='num_classes'): evaluate_dense(feats, truth, 0)
    with pytest.raises(ValueError, match='one entry per cluster \\(3\\)'): iou_per_class(torch.eye(3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match='n_iters'): kmeans(feats.reshape(-1, 3), 2, n_iters=0)
    with pytest.raises(ValueError, match='k must be an integer'): kmeans(feats.reshape(-1, 3), 2.0)


def test_ignore_index_and_absent_classes():
    _, truth = _data()
    target = truth.clone(); target[0] = 255                              # a whole image not scored
    s = cluster_miou(truth, target, 3, 5)                                 # classes 3, 4 never occur
    assert s.iou[3:].isnan().all() and s.miou == 1.0 and s.confusion.sum() == truth[1].numel()
    s = cluster_miou(truth, truth, ignore_index=None)
    assert s.miou == 1.0


def test_kmeans_seeded_and_independent_of_global_rng():
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0); a = kmeans(x, 7, seed=3)
    torch.manual_seed(123); b = kmeans(x, 7, seed=3)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)
    c = kmeans(x, 7, seed=3, n_init=4)
    assert c.inertia <= a.inertia + 1e-6                                  # restarts keep the best


def test_many_clusters_and_plot():
    matplotlib.use('Agg')
    feats, truth = _data(B=3, grid=(8, 8))
    scores, maps = evaluate_dense(feats, truth, 3, num_clusters=20)      # over-clustering: majority matching
    assert scores.mapping.shape == (20,) and maps.shape == (3, 8, 8) and scores.miou == 1.0
    fig = plot_clusters(torch.rand(32, 32), maps[0], truth[0], scores.mapping)
    assert len(fig.axes) == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_kmeans_on_cuda():
    feats, truth = _data(B=4, grid=(8, 8))
    scores, maps = evaluate_dense(feats.cuda(), truth, 3)
    assert scores.miou == 1.0
    r = kmeans(feats.reshape(-1, 3).cuda(), 3)
    assert r.labels.is_cuda and r.centroids.is_cuda
