r"""Training a :class:`~graphrerank.models.LocalMatcher` from class labels, in one call."""

from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from .._checks import (
    Check,
    Features,
    Int,
    Ref,
    as_tensor,
    check_features,
    check_in,
    check_index,
    check_int,
    check_real,
    checked,
)
from .._progress import Progress, ProgressCallback
from ..graph import knn_search
from ..graph.knn import check_magnitude
from .fusion import rerank_shortlist
from .matcher import LocalMatcher
from .scoring import score_shortlist
from .storage import STORAGES, compress_local, decode_local

__all__ = ["TrainResult", "mine_shortlists", "train_matcher"]

log = logging.getLogger(__name__)


class TrainResult(NamedTuple):
    """Outcome of :func:`train_matcher`.

    Attributes:
        model: The trained model (the weights of the best validation epoch), in eval mode.
        history: One dict per epoch: ``epoch``, ``loss`` (mean training loss), ``seconds``,
            and ``val_map`` (validation mAP as a fraction, or ``None`` when not validated).
        best_epoch: Epoch (1-based) whose weights were kept.
        best_map: Its validation mAP (``None`` without validation).
        checkpoint: The best checkpoint written (``None`` without ``checkpoint_dir``).
    """

    model: LocalMatcher
    history: list[dict[str, Any]]
    best_epoch: int
    best_map: float | None
    checkpoint: Path | None


def _subset(value: Tensor, name: str, *, items: int) -> Tensor:
    """Distinct ids of a subset of the ``items`` rows of ``global_descriptors``, at least 2."""
    try:
        ids = check_index(value, name, high=items, ndim=1, unique=True)
    except ValueError as err:
        if "out of range" not in str(err):
            raise
        raise ValueError(f"{err} (global_descriptors holds {items} row(s))") from None
    if ids.numel() < 2:
        raise ValueError(
            f"{name} must hold at least 2 ids (a shortlist needs 2 items), got {ids.numel()}"
        )
    return ids


@checked(
    global_descriptors=Features(),
    index=Check(_subset, items=Ref("global_descriptors", dim=0)),
    length=Int(low=1),
)
def mine_shortlists(
    global_descriptors: Tensor, index: Tensor, length: int, *, backend: str = "auto"
) -> Tensor:
    r"""Global-descriptor shortlists within a subset: for each item of ``index``, the
    ``length`` most similar other items of ``index`` (database indices, best first).

    These are the candidates the re-ranker will see at test time, so they hold the hard
    negatives: different-class images that the global descriptor ranks high.

    Args:
        global_descriptors: :math:`(N, D)` finite float global descriptors.
        index: :math:`(S,)` distinct ids in :math:`[0, N)` of the subset.
        length: Shortlist length (capped at :math:`S - 1`).
        backend: As in :func:`~graphrerank.graph.knn_search`.

    Returns:
        :math:`(S, \min(\text{length}, S - 1))` int64 database indices.

    Raises:
        ValueError: ``global_descriptors`` is not 2-D, empty or not finite, ``index`` holds
            an id out of range or twice, or the subset holds fewer than 2 items.
        TypeError: an input is not an array of the right kind.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> mine_shortlists(x, torch.tensor([0, 1, 3]), 2, backend="torch")
        tensor([[1, 3],
                [0, 3],
                [1, 0]])
    """
    sub = global_descriptors[index]
    n = sub.shape[0]
    length = min(length, n - 1)
    # faiss searches in float32: descriptors whose scores would overflow it are refused here,
    # by their own name (the search would name its queries and database)
    check_magnitude(sub, "global_descriptors", torch.float32)
    _, idx = knn_search(sub, sub, length + 1, backend=backend)
    own = torch.arange(n, device=idx.device).view(-1, 1)
    keep = idx != own
    # drop the item itself wherever it ranks (ties), keep the first `length` others
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :length]
    return index[idx.gather(1, order)]


def _sample(pool: Tensor, count: int, gen: torch.Generator) -> Tensor:
    """``count`` entries of ``pool`` (CPU), without replacement when possible."""
    if pool.numel() >= count:
        return pool[torch.randperm(pool.numel(), generator=gen)[:count]]
    return pool[torch.randint(pool.numel(), (count,), generator=gen)]


def _ranking_loss(logits: Tensor, target: Tensor, group: Tensor) -> Tensor:
    r"""Softmax ranking loss of every positive against the negatives of its list.

    For a positive :math:`p` of list :math:`g` with negatives :math:`N_g`,
    :math:`-\log \frac{e^{\ell_p}}{e^{\ell_p} + \sum_{n \in N_g} e^{\ell_n}}
    = \operatorname{softplus}(\operatorname{LSE}_{n \in N_g} \ell_n - \ell_p)`, averaged
    over the positives of lists with at least one negative (0 when there is none).

    Args:
        logits: :math:`(P,)` float logits.
        target: :math:`(P,)` 1 for a positive, 0 for a negative.
        group: :math:`(P,)` int64 list id of each entry.

    Returns:
        The scalar loss.
    """
    neg = target < 0.5
    n_groups = int(group.max()) + 1 if group.numel() else 1
    # per-list log-sum-exp of the negatives, shifted by their (detached) maximum
    big = torch.full((n_groups,), float("-inf"), dtype=logits.dtype, device=logits.device)
    big = big.scatter_reduce(0, group[neg], logits[neg].detach(), "amax")
    shift = torch.where(torch.isfinite(big), big, torch.zeros_like(big))
    sums = torch.zeros_like(big).index_add(0, group[neg], (logits[neg] - shift[group[neg]]).exp())
    pos = ~neg & torch.isfinite(big[group])
    if not bool(pos.any()):
        return logits.sum() * 0.0
    lse = shift[group[pos]] + sums[group[pos]].log()
    return torch.nn.functional.softplus(lse - logits[pos]).mean()


def _pairs(short, labels, train, positives, negatives, hard_pool, gen):
    """(query, candidate, target, group) of one pairwise epoch (CPU tensors); ``group`` is
    the row of the query in ``short``."""
    q_out, c_out, t_out, g_out = [], [], [], []
    for r in range(short.shape[0]):
        q = int(train[r])
        row = short[r]
        same = labels[row] == labels[q]
        pos, neg = row[same], row[~same][:hard_pool]
        if pos.numel() == 0:
            pos = train[(labels[train] == labels[q]) & (train != q)]
        if neg.numel() == 0:
            neg = train[labels[train] != labels[q]]
        chosen = []
        if pos.numel() and positives:
            chosen.append((_sample(pos, positives, gen), 1.0))
        if neg.numel() and negatives:
            chosen.append((_sample(neg, negatives, gen), 0.0))
        for cand, target in chosen:
            q_out.append(torch.full((cand.numel(),), q, dtype=torch.long))
            c_out.append(cand)
            t_out.append(torch.full((cand.numel(),), target))
            g_out.append(torch.full((cand.numel(),), r, dtype=torch.long))
    return torch.cat(q_out), torch.cat(c_out), torch.cat(t_out), torch.cat(g_out)


def _validate(model, mode, window, g, qloc, dloc, labels, index, top_m, batch_size, pos, dpos):
    from ..metrics import class_map

    sub = g[index]
    n = sub.shape[0]
    scores, idx = knn_search(sub, sub, n, backend="torch")
    m = min(top_m, n)
    gidx = index[idx]
    logits = score_shortlist(
        model,
        qloc[index],
        dloc,
        gidx[:, :m],
        mode=mode,
        window=window,
        stride=max(1, window // 2),
        batch_size=batch_size,
        query_positions=None if pos is None else pos[index],
        database_positions=dpos,
        query_global=g[index],
        database_global=g,
        own_index=index,
    )
    out = rerank_shortlist(scores, idx, logits, lambda_value=0.0, gamma=1.0)
    return class_map(out.indices, labels[index], leave_one_out=True)


def train_matcher(
    model: LocalMatcher,
    global_descriptors: Tensor,
    local: Tensor,
    labels: Tensor,
    *,
    positions: Tensor | None = None,
    train_index: Tensor | None = None,
    val_index: Tensor | None = None,
    mode: Literal["pairwise", "listwise"] = "pairwise",
    loss: Literal["bce", "softmax"] = "bce",
    shortlist: int = 100,
    positives: int = 4,
    negatives: int = 12,
    hard_pool: int = 50,
    window: int = 16,
    query_descriptors: int | None = None,
    db_descriptors: int | None = None,
    db_storage: Literal["float32", "float16", "binary"] = "float32",
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    val_every: int = 1,
    val_top_m: int = 100,
    patience: int = 5,
    checkpoint_dir: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool | None = None,
    callback: ProgressCallback | None = None,
) -> TrainResult:
    r"""Train ``model`` to tell same-class (query, candidate) images from different-class ones.

    **Mining.** Every training image is a query; its candidates come from its global-descriptor
    shortlist within the training images (:func:`mine_shortlists`, ``shortlist`` long), so the
    negatives are the hard ones the re-ranker meets at test time.

    * ``mode="pairwise"`` (RRT, AMES): per query and epoch, ``positives`` same-class candidates
      of the shortlist and ``negatives`` different-class ones among its first ``hard_pool``
      negatives; one graph per pair, ``batch_size`` pairs per step.
    * ``mode="listwise"`` (LOCORE): per query and epoch, one window of ``window`` consecutive
      shortlist entries from a random start; one graph per list, ``batch_size // window``
      lists per step.

    **Loss.** ``loss="bce"``: binary cross-entropy on every (query, candidate) logit
    :math:`\ell`, :math:`-y \log\sigma(\ell) - (1 - y)\log(1 - \sigma(\ell))`, :math:`y = 1`
    for the same class. ``loss="softmax"``: that binary cross-entropy plus a list-wise softmax
    term in which every positive of a query's list (its sampled
    candidates in pairwise mode, its window in list-wise mode) is ranked against that list's
    negatives, :math:`\operatorname{softplus}(\operatorname{LSE}_n \ell_n - \ell_p)`; the
    binary term keeps the logits calibrated for the fusion. In pairwise mode each step then
    takes whole queries' lists (``batch_size // (positives + negatives)`` queries). AdamW.

    **Asymmetry and memory.** The candidate side is stored as the re-ranker will store it
    (``db_descriptors`` first descriptors in ``db_storage``, see
    :func:`~graphrerank.models.compress_local`); queries keep ``query_descriptors``.

    **Validation and stopping.** Give ``val_index`` the images of classes *unseen in
    training* (:func:`~graphrerank.models.class_disjoint_split`): held-back images of the
    training classes reward memorising those classes. Every ``val_every`` epochs, the images of
    ``val_index`` are ranked all-vs-all by their global descriptors, the top ``val_top_m`` are re-ranked by the
    logit alone and the leave-one-out class mAP is recorded; training stops after ``patience``
    validations without improvement and the best weights are restored. Without ``val_index``
    the last epoch is kept.

    **Checkpoints.** With ``checkpoint_dir``, ``best.npz`` (and ``last.npz`` after each
    validation) are written with :meth:`LocalMatcher.save`: weights only, atomic,
    checksummed; reload them with :meth:`LocalMatcher.load`.

    Training is deterministic on a CPU for a given ``seed`` (sampling uses its own generator
    and dropout runs under a forked, seeded RNG); it runs on the device of the data, where the
    model must already be.

    Args:
        model: The :class:`LocalMatcher` to train (in place).
        global_descriptors: :math:`(N, D_g)` global descriptors (mining, validation, and the
            model's global nodes when it has ``global_dim``).
        local: :math:`(N, L, D)` local descriptors (raw ones, :attr:`LocalMatcher.input_dim`
            wide, for a model with ``whitening``: it is applied once here).
        labels: :math:`(N,)` integer classes.
        positions: :math:`(N, L, 2)` descriptor positions, for models that use them.
        train_index: Images to train on (default: all not in ``val_index``).
        val_index: Held-out images for validation (default: none).
        mode: ``"pairwise"`` or ``"listwise"``.
        loss: ``"bce"`` or ``"softmax"`` (binary cross-entropy plus the list-wise term).
        shortlist: Shortlist length for mining.
        positives: Pairwise: positives per query and epoch.
        negatives: Pairwise: negatives per query and epoch.
        hard_pool: Pairwise: negatives are drawn from this many best-ranked negatives.
        window: List-wise: candidates per list (also the validation window).
        query_descriptors: Query-side descriptors kept (``None``: all).
        db_descriptors: Candidate-side descriptors kept (``None``: all).
        db_storage: Candidate-side storage, ``"float32"``, ``"float16"`` or ``"binary"``.
        epochs: Maximum number of epochs.
        batch_size: Pairs per optimisation step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        val_every: Validate every this many epochs.
        val_top_m: Shortlist re-ranked in validation.
        patience: Validations without improvement before stopping.
        checkpoint_dir: Folder for ``best.npz`` / ``last.npz``.
        seed: Seed of sampling and dropout.
        progress: Draw a progress bar (``None``: when stderr is a terminal).
        callback: ``callback(done_steps, total_steps)``.

    Returns:
        :class:`TrainResult`.

    Raises:
        ValueError: inconsistent shapes or devices, bad settings, a split without two
            images of a class.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> labels = torch.arange(12) % 2
        >>> local = torch.randn(2, 4, 8, generator=g)[labels] + 0.3 * torch.randn(12, 4, 8, generator=g)
        >>> glob = torch.nn.functional.normalize(local.mean(1), dim=1)
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = LocalMatcher(8, hidden=16, heads=2, num_layers=1, ffn=16, k_intra=2)
        >>> result = train_matcher(model, glob, local, labels, epochs=3, positives=2,
        ...                        negatives=2, shortlist=5, progress=False)
        >>> len(result.history), result.best_epoch
        (3, 3)
    """
    if not isinstance(model, LocalMatcher):
        raise TypeError(f"model must be a LocalMatcher, got {type(model).__name__}")
    g = check_features(global_descriptors, "global_descriptors")
    dev = g.device
    n = g.shape[0]
    local = as_tensor(local, "local")
    if local.dim() != 3 or local.shape[0] != n or not local.is_floating_point():
        raise ValueError(
            f"local must be a float (N, L, D) array with N={n}, got shape {tuple(local.shape)} "
            f"and dtype {local.dtype}"
        )
    if local.shape[2] != model.input_dim:
        raise ValueError(f"local has dimension {local.shape[2]}, the model takes {model.input_dim}")
    gdim = model.config["global_dim"]
    if gdim is not None and g.shape[1] != gdim:
        raise ValueError(
            f"global_descriptors have dimension {g.shape[1]}, the model takes {gdim} (global_dim)"
        )
    labels = as_tensor(labels, "labels")
    if labels.shape != (n,) or labels.is_floating_point():
        raise ValueError(
            f"labels must be (N,) integers with N={n}, got shape {tuple(labels.shape)}"
        )
    for name, t in (("local", local), ("labels", labels)):
        if t.device != dev:
            raise ValueError(f"{name} is on {t.device} but global_descriptors on {dev}")
    mdev = next(model.parameters()).device
    if mdev != dev:
        raise ValueError(f"the model is on {mdev} but the data on {dev}; use model.to(device)")
    if model.config["use_positions"] and positions is None:
        raise ValueError("the model uses descriptor positions: pass positions")
    check_in(mode, "mode", ("pairwise", "listwise"))
    check_in(loss, "loss", ("bce", "softmax"))
    check_in(db_storage, "db_storage", STORAGES)
    epochs = check_int(epochs, "epochs", low=1)
    batch_size = check_int(batch_size, "batch_size", low=1)
    window = check_int(window, "window", low=1)
    positives = check_int(positives, "positives", low=0)
    negatives = check_int(negatives, "negatives", low=0)
    if positives + negatives == 0:
        raise ValueError("positives + negatives must be at least 1")
    hard_pool = check_int(hard_pool, "hard_pool", low=1)
    val_every = check_int(val_every, "val_every", low=1)
    patience = check_int(patience, "patience", low=1)
    lr = check_real(lr, "lr", low=0, low_open=True)
    weight_decay = check_real(weight_decay, "weight_decay", low=0)

    labels_cpu = labels.cpu()
    all_idx = torch.arange(n)
    val = None if val_index is None else as_tensor(val_index, "val_index").long().cpu()
    if train_index is None:
        train = all_idx if val is None else all_idx[~torch.isin(all_idx, val)]
    else:
        train = as_tensor(train_index, "train_index").long().cpu()
    if train.numel() < 2:
        raise ValueError(f"train_index must hold at least 2 images, got {train.numel()}")
    if val is not None and val.numel() < 2:
        raise ValueError(f"val_index must hold at least 2 images, got {val.numel()}")

    local = model.preprocess(local.float())  # the model's whitening, once
    qloc = local
    if query_descriptors is not None:
        qloc = qloc[:, : check_int(query_descriptors, "query_descriptors", low=1)]
    stored = compress_local(local.float(), num_descriptors=db_descriptors, storage=db_storage)
    dloc = decode_local(stored)
    qpos = dpos = None
    if model.config["use_positions"]:
        positions = as_tensor(positions, "positions").float()
        qpos = positions[:, : qloc.shape[1]]
        dpos = positions[:, : dloc.shape[1]]

    short = mine_shortlists(g, train.to(dev), shortlist).cpu()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    lists_per_step = max(1, batch_size // window)
    win = min(window, short.shape[1])
    if mode == "listwise":
        steps = -(-train.numel() // lists_per_step)
    elif loss == "bce":
        steps = -(-train.numel() * (positives + negatives) // batch_size)
    else:
        steps = -(-train.numel() // max(1, batch_size // (positives + negatives)))
    ckdir = None if checkpoint_dir is None else Path(checkpoint_dir)
    model.metadata.update(
        mode=mode,
        query_descriptors=query_descriptors,
        db_descriptors=db_descriptors,
        db_storage=db_storage,
        window=window,
        loss=loss,
    )
    history: list[dict[str, Any]] = []
    best_map, best_epoch, best_state, stale = None, 0, None, 0
    best_path = None
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        with Progress(steps * epochs, "training", show=progress, callback=callback) as bar:
            for epoch in range(1, epochs + 1):
                t0 = time.perf_counter()
                model.train()
                total, count = 0.0, 0
                if mode == "pairwise":
                    qi, ci, yi, gi = _pairs(
                        short, labels_cpu, train, positives, negatives, hard_pool, gen
                    )
                    if loss == "bce":
                        perm = torch.randperm(qi.numel(), generator=gen)
                        qi, ci, yi = qi[perm].to(dev), ci[perm].to(dev), yi[perm].to(dev)
                        batches = [
                            (qi[s : s + batch_size], ci[s : s + batch_size, None], yi[s : s + batch_size, None], None)
                            for s in range(0, qi.numel(), batch_size)
                        ]  # fmt: skip
                    else:
                        # whole lists per step: shuffle the queries, keep each list together
                        rank = torch.randperm(short.shape[0], generator=gen)[gi]
                        perm = torch.argsort(rank, stable=True)
                        qi, ci, yi, gi = qi[perm], ci[perm], yi[perm], rank[perm]
                        per_step = max(1, batch_size // max(1, positives + negatives))
                        step_of = gi // per_step
                        bounds = torch.cumsum(torch.bincount(step_of), 0).tolist()
                        batches, lo = [], 0
                        for hi in bounds:
                            if hi > lo:
                                q, c, y, grp = qi[lo:hi], ci[lo:hi], yi[lo:hi], gi[lo:hi]
                                grp = torch.unique(grp, return_inverse=True)[1]
                                batches.append((q.to(dev), c[:, None].to(dev), y[:, None].to(dev), grp.to(dev)))  # fmt: skip
                            lo = hi
                else:
                    starts = torch.randint(
                        short.shape[1] - win + 1, (train.numel(),), generator=gen
                    )
                    cols = starts[:, None] + torch.arange(win)
                    cand = short.gather(1, cols)
                    target = (labels_cpu[cand] == labels_cpu[train][:, None]).float()
                    perm = torch.randperm(train.numel(), generator=gen)
                    qi, ci, yi = train[perm].to(dev), cand[perm].to(dev), target[perm].to(dev)
                    batches = [
                        (qi[s : s + lists_per_step], ci[s : s + lists_per_step], yi[s : s + lists_per_step], None)
                        for s in range(0, qi.numel(), lists_per_step)
                    ]  # fmt: skip
                for q, c, y, grp in batches:
                    logits = model.score(
                        qloc[q],
                        dloc[c],
                        None if qpos is None else qpos[q],
                        None if dpos is None else dpos[c],
                        g[q],
                        g[c],
                    )
                    y = y.to(logits.dtype)
                    value = bce(logits, y)
                    if loss == "softmax":
                        if grp is None:  # one list per row
                            grp = torch.arange(y.shape[0], device=dev)[:, None].expand_as(y)
                        value = value + _ranking_loss(
                            logits.reshape(-1), y.reshape(-1), grp.reshape(-1)
                        )
                    opt.zero_grad(set_to_none=True)
                    value.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    opt.step()
                    total += float(value.detach()) * y.numel()
                    count += y.numel()
                    bar.update(1)
                record: dict[str, Any] = {
                    "epoch": epoch,
                    "loss": total / max(count, 1),
                    "val_map": None,
                }
                if val is not None and (epoch % val_every == 0 or epoch == epochs):
                    vm = _validate(
                        model, mode, window, g, qloc, dloc, labels, val.to(dev),
                        val_top_m, batch_size, qpos, dpos,
                    )  # fmt: skip
                    record["val_map"] = vm
                    if best_map is None or vm > best_map:
                        best_map, best_epoch, stale = vm, epoch, 0
                        best_state = copy.deepcopy(model.state_dict())
                        if ckdir is not None:
                            best_path = model.save(ckdir / "best.npz", epoch=epoch, val_map=vm)
                    else:
                        stale += 1
                    if ckdir is not None:
                        model.save(ckdir / "last.npz", epoch=epoch, val_map=vm)
                record["seconds"] = time.perf_counter() - t0
                history.append(record)
                log.info(
                    "epoch %d: loss %.4f, val mAP %s, %.1fs",
                    epoch,
                    record["loss"],
                    record["val_map"],
                    record["seconds"],
                )
                if val is not None and stale >= patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = len(history)
        if ckdir is not None:
            best_path = model.save(ckdir / "best.npz", epoch=best_epoch)
    model.metadata.update(best_epoch=best_epoch, best_val_map=best_map)
    model.eval()
    return TrainResult(model, history, best_epoch, best_map, best_path)
