import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retrievals.losses import InfoNCELoss, TripletMarginLoss, get_loss


def embeddings(b=4, g=3, d=8):
    torch.manual_seed(0)
    return F.normalize(torch.randn(b, d), dim=-1), F.normalize(torch.randn(b * g, d), dim=-1)


def test_infonce_inbatch_matches_manual():
    q, d = embeddings()
    loss = InfoNCELoss(temperature=0.05)(q, d)
    scores = q @ d.T / 0.05
    manual = -torch.stack([scores[i].log_softmax(-1)[i * 3] for i in range(4)]).mean()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)


def test_infonce_group_only():
    q, d = embeddings()
    loss = InfoNCELoss(temperature=0.05, use_inbatch_neg=False)(q, d)
    scores = torch.einsum("bd,bgd->bg", q, d.view(4, 3, -1)) / 0.05
    assert loss.item() == pytest.approx(F.cross_entropy(scores, torch.zeros(4, dtype=torch.long)).item(), rel=1e-5)
    with pytest.raises(ValueError, match="train_group_size >= 2"):
        InfoNCELoss(use_inbatch_neg=False)(q, d[:4])


def test_loss_lowers_for_better_embeddings_and_has_gradient():
    q, d = embeddings()
    q.requires_grad_(True)
    loss = InfoNCELoss(temperature=0.05)(q, d)
    loss.backward()
    assert q.grad.abs().sum() > 0
    aligned = d.view(4, 3, -1)[:, 0]
    assert InfoNCELoss(temperature=0.05)(aligned, d) < loss


def test_triplet():
    q, d = embeddings()
    positives = d.view(4, 3, -1)[:, 0]
    assert TripletMarginLoss(margin=0.0)(positives, d).item() == pytest.approx(0.0, abs=1e-6)
    assert TripletMarginLoss(margin=2.0)(positives, d).item() > 0
    with pytest.raises(ValueError, match="train_group_size >= 2"):
        TripletMarginLoss()(q, d[:4])


def test_unknown_loss_lists_choices():
    with pytest.raises(ValueError, match=r"Unknown loss 'cosine_magic'; choose one of \['infonce', 'triplet'\]"):
        get_loss("cosine_magic")
    assert isinstance(get_loss("InfoNCE", temperature=0.1), InfoNCELoss)
    with pytest.raises(ValueError, match="has no setting margin"):  # a setting the loss does not have is refused
        get_loss("InfoNCE", temperature=0.1, margin=1.0)
    loss = get_loss("triplet", margin=0.3)
    assert loss.get_config_dict() == {"name": "triplet", "margin": 0.3}
    with pytest.raises(ValueError, match="reads 'query_embeddings'"):  # by name: a ranker's output does not fit
        loss.inputs_from({"scores": torch.zeros(2, 2), "targets": torch.zeros(2)})


def test_triplet_matches_hand_computed():
    q = torch.tensor([[1.0, 0.0]])
    d = torch.tensor([[0.6, 0.8], [0.8, 0.6], [0.0, 1.0]])  # positive, then two negatives
    # scores 0.6 (positive), 0.8 and 0.0: hinge(0.2 - 0.6 + 0.8) = 0.4 and hinge(0.2 - 0.6 + 0.0) = 0
    assert TripletMarginLoss(margin=0.2)(q, d).item() == pytest.approx(0.2, abs=1e-6)


def test_listwise_ce_and_pointwise_bce_match_hand_computed():
    import math

    from retrievals.losses import ListwiseCrossEntropyLoss, PointwiseBCELoss

    scores = torch.tensor([[2.0, 0.0, -1.0]])
    targets = torch.tensor([0])
    expected = -(2.0 - math.log(math.exp(2.0) + math.exp(0.0) + math.exp(-1.0)))
    assert ListwiseCrossEntropyLoss()(scores, targets).item() == pytest.approx(expected, rel=1e-6)
    halved = -(1.0 - math.log(math.exp(1.0) + math.exp(0.0) + math.exp(-0.5)))
    assert ListwiseCrossEntropyLoss(temperature=2.0)(scores, targets).item() == pytest.approx(halved, rel=1e-6)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    bce = -(math.log(sig(2.0)) + math.log(1 - sig(0.0)) + math.log(1 - sig(-1.0))) / 3
    assert PointwiseBCELoss()(scores, targets).item() == pytest.approx(bce, rel=1e-6)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        PointwiseBCELoss(temperature=0)


def test_matryoshka_is_the_weighted_loss_at_each_size():
    from retrievals.losses import MatryoshkaLoss

    q, d = embeddings(d=8)
    base = InfoNCELoss(temperature=0.05)
    loss = MatryoshkaLoss(base, dims=[8, 4, 2], weights=[1.0, 0.5, 0.25])
    expected = base(q, d) + 0.5 * base(F.normalize(q[:, :4], dim=-1), F.normalize(d[:, :4], dim=-1)) \
        + 0.25 * base(F.normalize(q[:, :2], dim=-1), F.normalize(d[:, :2], dim=-1))
    assert loss(q, d).item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.get_config_dict() == {"name": "matryoshka", "dims": [8, 4, 2], "weights": [1.0, 0.5, 0.25],
                                      "distill": 0.0, "loss": {"name": "infonce", "temperature": 0.05, "use_inbatch_neg": True,
                                               "negatives_cross_device": False}}
    for bad in ([], [0], [4, 4]):
        with pytest.raises(ValueError, match="distinct integers"):
            MatryoshkaLoss(base, dims=bad)
    with pytest.raises(ValueError, match="one per dim"):
        MatryoshkaLoss(base, dims=[8, 4], weights=[1.0])
    with pytest.raises(ValueError, match="exceed the embedding size"):
        MatryoshkaLoss(base, dims=[16])(q, d)


def test_matryoshka_distillation_adds_the_kl_to_the_full_vectors_ranking():
    from retrievals.losses import MatryoshkaLoss

    q, d = embeddings(d=8)
    q.requires_grad_(True)
    base = InfoNCELoss(temperature=0.05)
    plain = MatryoshkaLoss(base, dims=[8, 4], weights=[1.0, 0.5])
    distilled = MatryoshkaLoss(base, dims=[8, 4], weights=[1.0, 0.5], distill=2.0)
    teacher = torch.log_softmax(q @ d.T / 0.05, dim=-1)
    q4, d4 = MatryoshkaLoss.truncate(q, 4), MatryoshkaLoss.truncate(d, 4)  # unit vectors: the full ones are
    student = torch.log_softmax(q4 @ d4.T / 0.05, dim=-1)
    kl = (teacher.exp() * (teacher - student)).sum(-1).mean()  # KL(teacher || student), per query, averaged
    assert distilled(q, d).item() == pytest.approx((plain(q, d) + 0.5 * 2.0 * kl).item(), rel=1e-5)
    # the teacher is detached: its gradient flows through the truncated student only
    detached = teacher.detach()
    expected = plain(q, d) + 0.5 * 2.0 * (detached.exp() * (detached - student)).sum(-1).mean()
    np.testing.assert_allclose(torch.autograd.grad(distilled(q, d), q)[0].numpy(),
                               torch.autograd.grad(expected, q)[0].numpy(), atol=1e-5)
    assert distilled.get_config_dict()["distill"] == 2.0
    for bad in (-1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="distill must be a finite number"):
            MatryoshkaLoss(base, dims=[8, 4], distill=bad)
