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
    with pytest.raises(ValueError, match="temperature must be > 0 and finite"):
        PointwiseBCELoss(temperature=float("inf"))
    from retrievals.losses import InfoNCELoss

    with pytest.raises(ValueError, match="needs use_inbatch_neg"):  # it was ignored
        InfoNCELoss(use_inbatch_neg=False, negatives_cross_device=True)


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


def test_matryoshka_trains_each_size_as_the_model_serves_it(tiny_bert):
    # unnormalised vectors were rescaled to the full vector's norm in training but sliced when served: the top
    # document of a query could differ between the two
    from retrievals import AutoModelForEmbedding
    from retrievals.losses import MatryoshkaLoss

    q, d = torch.tensor([[1.0, 0, 0, 0]]), torch.tensor([[0.9, 0.1, 0, 0], [0.5, 0, 3, 0]])
    loss = MatryoshkaLoss(InfoNCELoss(temperature=1.0), dims=[4, 2], normalize=False)
    assert torch.equal(loss.truncate(d, 2), d[:, :2])
    texts = ["a first text", "another one, longer than the first"]
    for normalize in (True, False):
        model = AutoModelForEmbedding.from_pretrained(tiny_bert, normalize_embeddings=normalize)
        full = model.encode(texts, convert_to_tensor=True)
        served = model.encode(texts, convert_to_tensor=True, truncate_dim=8)
        trained = MatryoshkaLoss(InfoNCELoss(), dims=[8], normalize=normalize).truncate(full, 8)
        torch.testing.assert_close(trained, served, atol=1e-6, rtol=1e-5)


def test_matryoshka_distillation_adds_the_kl_to_the_full_vectors_ranking():
    from retrievals.losses import MatryoshkaLoss

    q, d = embeddings(d=8)
    q.requires_grad_(True)
    base = InfoNCELoss(temperature=0.05)
    plain = MatryoshkaLoss(base, dims=[8, 4], weights=[1.0, 0.5])
    distilled = MatryoshkaLoss(base, dims=[8, 4], weights=[1.0, 0.5], distill=2.0)
    teacher = torch.log_softmax(q @ d.T / 0.05, dim=-1)
    q4, d4 = plain.truncate(q, 4), plain.truncate(d, 4)  # unit vectors: the full ones are
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


def kl(teacher_logits, student_logits):
    """KL(teacher || student) of each row's softmax, averaged over rows (by hand)."""
    t, s = teacher_logits.log_softmax(-1), student_logits.log_softmax(-1)
    return (t.exp() * (t - s)).sum(-1).mean()


def test_teacher_distillation_is_the_loss_plus_the_kl_to_the_teachers_ranking():
    from retrievals.losses import TeacherDistillLoss

    q, d = embeddings(d=8)
    q.requires_grad_(True)
    torch.manual_seed(1)
    tq, td = F.normalize(torch.randn(4, 5), dim=-1), F.normalize(torch.randn(12, 5), dim=-1)  # another width
    tq.requires_grad_(True)
    base = InfoNCELoss(temperature=0.05)
    loss = TeacherDistillLoss(base, weight=2.0, teacher_temperature=0.02)
    expected = base(q, d) + 2.0 * kl(tq @ td.T / 0.02, q @ d.T / 0.05)
    assert loss(q, d, tq, td).item() == pytest.approx(expected.item(), rel=1e-5)
    grad_q, grad_t = torch.autograd.grad(loss(q, d, tq, td), [q, tq], allow_unused=True)
    assert grad_t is None or not grad_t.abs().sum()  # the teacher is a target, never trained
    np.testing.assert_allclose(grad_q.numpy(), torch.autograd.grad(expected, q)[0].numpy(), atol=1e-5)
    # the teacher's own vectors at the student's temperature: nothing to learn; weight 0: the plain loss
    assert TeacherDistillLoss(base)(q, d, q, d).item() == pytest.approx(base(q, d).item(), rel=1e-5)
    assert TeacherDistillLoss(base, weight=0)(q, d, tq, td).item() == pytest.approx(base(q, d).item(), rel=1e-6)
    assert TeacherDistillLoss(base).teacher_temperature == 0.05  # default: the student's
    assert loss.reads == ("query_embeddings", "document_embeddings", "teacher_query_embeddings", "teacher_document_embeddings")
    assert loss.get_config_dict() == {"name": "teacher_distill", "weight": 2.0, "teacher_temperature": 0.02,
                                      "loss": base.get_config_dict()}
    for bad in (-1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="distill weight must be a finite number"):
            TeacherDistillLoss(base, weight=bad)
    for bad in (0, -0.1, float("inf"), float("nan"), True):
        with pytest.raises(ValueError, match="teacher temperature must be a finite number > 0"):
            TeacherDistillLoss(base, teacher_temperature=bad)
    with pytest.raises(ValueError, match="missing teacher_document_embeddings"):
        loss(q, d, tq)
    with pytest.raises(ValueError, match="teacher vectors for 3 queries"):
        loss(q, d, tq[:3], td)


def test_matryoshka_hands_the_teacher_to_every_size():
    from retrievals.losses import MatryoshkaLoss, TeacherDistillLoss

    q, d = embeddings(d=8)
    torch.manual_seed(2)
    tq, td = F.normalize(torch.randn(4, 6), dim=-1), F.normalize(torch.randn(12, 6), dim=-1)
    base = InfoNCELoss(temperature=0.05)
    inner = TeacherDistillLoss(base, weight=0.5)
    loss = MatryoshkaLoss(inner, dims=[8, 4], weights=[1.0, 2.0], distill=1.0)
    assert loss.reads == inner.reads
    q4, d4 = loss.truncate(q, 4), loss.truncate(d, 4)
    teacher_part = lambda a, b: base(a, b) + 0.5 * kl(tq @ td.T / 0.05, a @ b.T / 0.05)  # noqa: E731
    expected = teacher_part(q, d) + 2.0 * teacher_part(q4, d4) + 2.0 * 1.0 * kl(q @ d.T / 0.05, q4 @ d4.T / 0.05)
    assert loss(q, d, teacher_query_embeddings=tq, teacher_document_embeddings=td).item() == \
        pytest.approx(expected.item(), rel=1e-5)


def test_teacher_distillation_alone_teaches_the_teachers_ranking():
    """Free student vectors trained on the KL term only end up ranking every document as the teacher does."""
    from retrievals.losses import TeacherDistillLoss

    torch.manual_seed(3)
    tq, td = F.normalize(torch.randn(6, 10), dim=-1), F.normalize(torch.randn(18, 10), dim=-1)
    q = torch.randn(6, 16, requires_grad=True)
    d = torch.randn(18, 16, requires_grad=True)
    loss = TeacherDistillLoss(InfoNCELoss(temperature=0.05), weight=1.0)
    optimizer = torch.optim.Adam([q, d], lr=0.05)
    start = loss.divergence(F.normalize(q, dim=-1), F.normalize(d, dim=-1), tq, td).item()
    for _ in range(400):
        optimizer.zero_grad()
        loss.divergence(F.normalize(q, dim=-1), F.normalize(d, dim=-1), tq, td).backward()
        optimizer.step()
    end = loss.divergence(F.normalize(q, dim=-1), F.normalize(d, dim=-1), tq, td).item()
    assert start > 0.5 and end < 0.01 * start
    student = F.normalize(q, dim=-1) @ F.normalize(d, dim=-1).T
    assert torch.equal(student.argsort(dim=-1, descending=True)[:, :3], (tq @ td.T).argsort(dim=-1, descending=True)[:, :3])


def test_teacher_distillation_of_a_reranker_is_over_each_querys_group():
    """A reranker's ``scores``: the KL to the teacher's softmax over the same columns, each query's own group ([B, G])
    or every document of the batch ([B, B * G]); a loss that does not read scores (ColBERT's) gets them anyway."""
    from retrievals.losses import ListwiseCrossEntropyLoss, MaxSimCrossEntropyLoss, TeacherDistillLoss

    torch.manual_seed(4)
    b, g = 3, 4
    tq, td = F.normalize(torch.randn(b, 6), dim=-1), F.normalize(torch.randn(b * g, 6), dim=-1)
    group_logits = torch.stack([tq[i] @ td[i * g:(i + 1) * g].T for i in range(b)]) / 0.02  # by hand, row by row
    scores = torch.randn(b, g, requires_grad=True)
    targets = torch.zeros(b, dtype=torch.long)
    base = ListwiseCrossEntropyLoss(temperature=0.5)
    loss = TeacherDistillLoss(base, weight=3.0, teacher_temperature=0.02)
    assert loss.reads == ("scores", "targets", "teacher_query_embeddings", "teacher_document_embeddings")
    expected = base(scores, targets) + 3.0 * kl(group_logits, scores / 0.5)
    assert loss(scores, targets, tq, td).item() == pytest.approx(expected.item(), rel=1e-5)
    np.testing.assert_allclose(torch.autograd.grad(loss(scores, targets, tq, td), scores)[0].numpy(),
                               torch.autograd.grad(expected, scores)[0].numpy(), atol=1e-6)
    wide = torch.randn(b, b * g)  # every document of the batch a candidate
    assert loss(wide, targets, tq, td).item() == pytest.approx(
        (base(wide, targets) + 3.0 * kl(tq @ td.T / 0.02, wide / 0.5)).item(), rel=1e-5)
    with pytest.raises(ValueError, match="expected the group \\(4\\) or the batch \\(12\\)"):
        loss(torch.randn(b, 5), targets, tq, td)
    with pytest.raises(ValueError, match="teacher vectors for 2 queries"):
        loss(scores, targets, tq[:2], td)
    with pytest.raises(ValueError, match="missing teacher_query_embeddings"):
        loss(scores, targets, None, td)
    # ColBERT's loss reads token vectors: the KL reads the model's group scores beside them
    colbert = MaxSimCrossEntropyLoss(temperature=0.05, use_inbatch_neg=False)
    wrapped = TeacherDistillLoss(colbert, teacher_temperature=0.02)
    assert wrapped.reads == (*colbert.reads, "scores", "teacher_query_embeddings", "teacher_document_embeddings")
    qv, dv = F.normalize(torch.randn(b, 5, 8), dim=-1), F.normalize(torch.randn(b * g, 7, 8), dim=-1)
    qm, dm = torch.ones(b, 5, dtype=torch.long), torch.ones(b * g, 7, dtype=torch.long)
    from retrievals.models.rankers import maxsim

    group_scores = maxsim(qv, qm, dv.view(b, g, 7, 8), dm.view(b, g, 7))
    got = wrapped(query_vectors=qv, query_mask=qm, document_vectors=dv, document_mask=dm, scores=group_scores,
                  teacher_query_embeddings=tq, teacher_document_embeddings=td)
    assert got.item() == pytest.approx((colbert(qv, qm, dv, dm) + kl(group_logits, group_scores / 0.05)).item(), rel=1e-5)
