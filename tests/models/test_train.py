"""train_matcher: mining, overfitting a tiny set, determinism, validation, checkpoints."""

import pytest
import torch

from graphrerank.models import LocalMatcher, mine_shortlists, train_matcher


def _toy(n=16, classes=2, lq=4, d=8, noise=0.6, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    protos = torch.randn(classes, lq, d, generator=g)
    local = protos[labels] + noise * torch.randn(n, lq, d, generator=g)
    glob = torch.nn.functional.normalize(
        local.mean(1) + 0.5 * torch.randn(n, d, generator=g), dim=1
    )
    return glob, local, labels


def _model(d=8, **kw):
    torch.manual_seed(0)
    cfg = dict(hidden=16, heads=2, num_layers=1, ffn=32, k_intra=2, k_cross=2)
    cfg.update(kw)
    return LocalMatcher(d, **cfg)


def test_mine_shortlists_is_the_global_knn_within_the_subset():
    glob, _, _ = _toy(n=20)
    subset = torch.tensor([1, 4, 5, 8, 11, 12, 19])
    short = mine_shortlists(glob, subset, 4, backend="torch")
    for row, item in zip(short, subset):
        others = subset[subset != item]
        sims = glob[others].double() @ glob[item].double()
        assert row.tolist() == others[sims.argsort(descending=True)[:4]].tolist()


def test_a_tiny_set_is_learned_to_near_zero_loss():
    # 6 images whose labels have nothing to do with their content: only memorising works
    g = torch.Generator().manual_seed(3)
    local = torch.randn(6, 3, 8, generator=g)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    glob = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    model = _model(hidden=32, num_layers=1, ffn=64)
    result = train_matcher(model, glob, local, labels, epochs=60, positives=2, negatives=3,
                           shortlist=5, lr=3e-3, weight_decay=0.0, progress=False)  # fmt: skip
    assert result.history[0]["loss"] > 0.5
    assert result.history[-1]["loss"] < 0.05


@pytest.mark.parametrize("mode", ["pairwise", "listwise"])
def test_training_is_deterministic_on_cpu(mode):
    glob, local, labels = _toy()
    runs = []
    for _ in range(2):
        model = _model(dropout=0.1)
        train_matcher(model, glob, local, labels, mode=mode, epochs=2, window=4, shortlist=8,
                      batch_size=8, seed=5, progress=False)  # fmt: skip
        runs.append(model.state_dict())
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key
    other = _model(dropout=0.1)
    train_matcher(other, glob, local, labels, mode=mode, epochs=2, window=4, shortlist=8,
                  batch_size=8, seed=6, progress=False)  # fmt: skip
    assert not torch.equal(other.state_dict()["embed.weight"], runs[0]["embed.weight"])


def test_validation_early_stopping_and_checkpoints(tmp_path):
    glob, local, labels = _toy(n=24, classes=3)
    val = torch.arange(18, 24)
    model = _model()
    seen = []
    result = train_matcher(model, glob, local, labels, val_index=val, epochs=8, patience=2,
                           lr=3e-2, checkpoint_dir=tmp_path, progress=False,
                           callback=lambda d, t: seen.append((d, t)))  # fmt: skip
    maps = [h["val_map"] for h in result.history]
    assert all(m is not None and 0 <= m <= 1 for m in maps)
    assert result.best_map == max(maps)
    assert result.history[result.best_epoch - 1]["val_map"] == result.best_map
    if len(maps) < 8:  # stopped early: the last `patience` validations did not improve
        assert all(m <= result.best_map for m in maps[-2:])
        assert len(maps) - result.best_epoch == 2
    assert seen and seen[-1][0] == len(result.history) * (seen[-1][1] // 8)
    best = LocalMatcher.load(result.checkpoint)
    assert result.checkpoint == tmp_path / "best.npz" and (tmp_path / "last.npz").exists()
    for key, value in model.state_dict().items():
        assert torch.equal(best.state_dict()[key], value), key
    assert best.metadata["epoch"] == result.best_epoch
    assert (
        model.metadata["mode"] == "pairwise" and model.metadata["best_epoch"] == result.best_epoch
    )
    assert not model.training


def test_asymmetric_binary_database_side_trains():
    glob, local, labels = _toy(lq=6, d=16)
    model = _model(d=16)
    result = train_matcher(model, glob, local, labels, db_descriptors=2, db_storage="binary",
                           query_descriptors=5, epochs=1, progress=False)  # fmt: skip
    assert model.metadata["db_descriptors"] == 2 and model.metadata["db_storage"] == "binary"
    assert result.history[0]["loss"] > 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "triplet"}, ValueError, "mode must be one of"),
        ({"loss": "hinge"}, ValueError, "loss must be one of"),
        ({"epochs": 0}, ValueError, "epochs must be >= 1"),
        ({"positives": 0, "negatives": 0}, ValueError, "at least 1"),
        ({"db_storage": "int4"}, ValueError, "db_storage must be one of"),
        ({"train_index": torch.tensor([3])}, ValueError, "at least 2 images"),
        ({"lr": 0.0}, ValueError, "lr must be > 0"),
    ],
)
def test_bad_settings(kwargs, error, match):
    glob, local, labels = _toy()
    with pytest.raises(error, match=match):
        train_matcher(_model(), glob, local, labels, progress=False, **kwargs)


def test_bad_data():
    glob, local, labels = _toy()
    with pytest.raises(ValueError, match="the model takes 8"):
        train_matcher(_model(), glob, local[..., :5], labels)
    with pytest.raises(ValueError, match="labels must be"):
        train_matcher(_model(), glob, local, labels[:-1])
    with pytest.raises(ValueError, match="local must be a float"):
        train_matcher(_model(), glob, local[:-1], labels)
    with pytest.raises(TypeError, match="must be a LocalMatcher"):
        train_matcher(torch.nn.Linear(2, 2), glob, local, labels)
    with pytest.raises(ValueError, match="uses descriptor positions"):
        train_matcher(_model(use_positions=True), glob, local, labels)


def test_ranking_loss_hand_worked():
    from graphrerank.models.train import _ranking_loss

    # list 0: positive 2 against negatives 0 and 1: softplus(log(e^0 + e^1) - 2)
    # list 1: positives 0.5 and -1 against the negative 1: softplus(0.5), softplus(2)
    # list 2: a positive with no negative: left out
    logits = torch.tensor([2.0, 0.0, 1.0, 0.5, -1.0, 1.0, 3.0], dtype=torch.float64)
    target = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    group = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    hand = (0.4076059644 + 0.9740769842 + 2.1269280110) / 3
    assert float(_ranking_loss(logits, target, group)) == pytest.approx(hand, abs=1e-9)
    # the definition, -log(e^p / (e^p + sum_n e^n)), term by term in float64
    terms = [-torch.log(torch.exp(p) / (torch.exp(p) + torch.exp(n).sum()))
             for p, n in ((logits[0], logits[1:3]), (logits[3], logits[5:6]),
                          (logits[4], logits[5:6]))]  # fmt: skip
    assert float(_ranking_loss(logits, target, group)) == pytest.approx(
        float(torch.stack(terms).mean()), abs=1e-12
    )
    # large logits stay finite (shifted log-sum-exp); no positive with a negative -> 0
    assert torch.isfinite(_ranking_loss(logits * 400, target, group))
    assert float(_ranking_loss(logits, torch.ones(7, dtype=torch.float64), group)) == 0.0


def test_ranking_loss_gradient_matches_autograd_of_the_definition():
    from graphrerank.models.train import _ranking_loss

    logits = torch.tensor([0.3, -0.2, 1.1, 0.7], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    group = torch.zeros(4, dtype=torch.long)
    _ranking_loss(logits, target, group).backward()
    ref = logits.detach().clone().requires_grad_(True)
    neg = ref[[1, 3]].exp().sum()
    ((-torch.log(ref[0].exp() / (ref[0].exp() + neg))
      - torch.log(ref[2].exp() / (ref[2].exp() + neg))) / 2).backward()  # fmt: skip
    assert torch.allclose(logits.grad, ref.grad, atol=1e-12)


@pytest.mark.parametrize("mode", ["pairwise", "listwise"])
def test_softmax_loss_trains_deterministically_and_learns(mode):
    glob, local, labels = _toy()
    runs = []
    for _ in range(2):
        model = _model()
        result = train_matcher(model, glob, local, labels, mode=mode, loss="softmax", epochs=8,
                               window=4, shortlist=8, batch_size=8, positives=2, negatives=2,
                               lr=3e-3, seed=5, progress=False)  # fmt: skip
        runs.append(model.state_dict())
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key
    assert result.model.metadata["loss"] == "softmax"
    # the loss (binary + list-wise terms) goes down on this separable toy set
    assert result.history[-1]["loss"] < result.history[0]["loss"]
