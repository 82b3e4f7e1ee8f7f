import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retrievals.losses import InfoNCELoss, TripletMarginLoss, get_loss
from retrievals.utils import UsageError


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
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got 0"):
        PointwiseBCELoss(temperature=0)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got inf"):
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
                                      "distill": 0.0, "normalize": True, "loss": {"name": "infonce", "temperature": 0.05, "use_inbatch_neg": True,
                                               "negatives_cross_device": False}}
    for bad in ([], [4, 4]):
        with pytest.raises(ValueError, match="distinct integers"):
            MatryoshkaLoss(base, dims=bad)
    with pytest.raises(ValueError, match=r"dims\[0\] must be >= 1, got 0"):
        MatryoshkaLoss(base, dims=[0])
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
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="matryoshka distill must be a finite number >= 0"):
            MatryoshkaLoss(base, dims=[8, 4], distill=bad)
    for bad in (True, "1"):
        with pytest.raises(TypeError, match="matryoshka distill must be a number"):
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
    # the wrapped loss's optional text ids last: positional calls keep the teacher's vectors third and fourth
    assert loss.reads == ("query_embeddings", "document_embeddings", "teacher_query_embeddings", "teacher_document_embeddings",
                          "document_text_ids")
    assert loss.get_config_dict() == {"name": "teacher_distill", "weight": 2.0, "teacher_temperature": 0.02,
                                      "loss": base.get_config_dict()}
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="distill weight must be a finite number >= 0"):
            TeacherDistillLoss(base, weight=bad)
    for bad in (True, "1"):
        with pytest.raises(TypeError, match="distill weight must be a number"):
            TeacherDistillLoss(base, weight=bad)
    for bad in (0, -0.1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="teacher temperature must be a finite number > 0"):
            TeacherDistillLoss(base, teacher_temperature=bad)
    with pytest.raises(TypeError, match="teacher temperature must be a number, got bool"):
        TeacherDistillLoss(base, teacher_temperature=True)
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
    assert wrapped.reads == (*colbert.reads[:4], "scores", "teacher_query_embeddings", "teacher_document_embeddings",
                             "document_text_ids")
    qv, dv = F.normalize(torch.randn(b, 5, 8), dim=-1), F.normalize(torch.randn(b * g, 7, 8), dim=-1)
    qm, dm = torch.ones(b, 5, dtype=torch.long), torch.ones(b * g, 7, dtype=torch.long)
    from retrievals.models.rankers import maxsim

    group_scores = maxsim(qv, qm, dv.view(b, g, 7, 8), dm.view(b, g, 7))
    got = wrapped(query_vectors=qv, query_mask=qm, document_vectors=dv, document_mask=dm, scores=group_scores,
                  teacher_query_embeddings=tq, teacher_document_embeddings=td)
    assert got.item() == pytest.approx((colbert(qv, qm, dv, dm) + kl(group_logits, group_scores / 0.05)).item(), rel=1e-5)


# --- false negatives: other copies of a query's own positive (FAQ data where queries share an answer) -------------

def one_hot_batch():
    """A perfect embedder's vectors: each query is its positive's vector, every distinct text orthogonal to the
    others. Queries 0 and 1 share the positive "P" (two copies in the batch, columns 0 and 2); query 2's group holds
    its positive "R" twice (a hard negative equal to the positive, column 5). Group size 2."""
    texts = ["P", "N0", "P", "N1", "R", "R"]
    vocab = sorted(set(texts))
    d = torch.stack([F.one_hot(torch.tensor(vocab.index(t)), len(vocab)).float() for t in texts])
    q = d[0::2].clone()
    from retrievals.data.collator import hash_text_ids

    return q, d, hash_text_ids(texts)


def test_infonce_leaves_out_other_copies_of_the_positive():
    import math

    q, d, ids = one_hot_batch()
    assert ids[0] == ids[2] and ids[4] == ids[5] and len(set(ids[[0, 1, 3, 4]].tolist())) == 4
    loss = InfoNCELoss(temperature=0.02)
    # unmasked, each query's own positive is also scored as a negative: a perfect embedder stays at log 2
    assert loss(q, d).item() == pytest.approx(math.log(2), rel=1e-4)
    assert loss(q, d, ids).item() == pytest.approx(0.0, abs=1e-6)
    # the same as dropping those columns by hand: query 0 without column 2, query 1 without 0, query 2 without 5
    q2, d2 = F.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), dim=-1), d + 0.1
    scores = q2 @ d2.T / 0.02
    keep = [[0, 1, 3, 4, 5], [1, 2, 3, 4, 5], [0, 1, 2, 3, 4]]
    by_hand = -torch.stack([scores[i, keep[i]].log_softmax(-1)[keep[i].index(2 * i)] for i in range(3)]).mean()
    assert loss(q2, d2, ids).item() == pytest.approx(by_hand.item(), rel=1e-5)
    q2.requires_grad_(True)
    d2.requires_grad_(True)
    loss(q2, d2, ids).backward()
    assert d2.grad.abs().sum() > 0 and torch.isfinite(d2.grad).all() and torch.isfinite(q2.grad).all()
    # each query's own group only: the copy of query 2's positive among its negatives is left out too
    group_only = InfoNCELoss(temperature=0.02, use_inbatch_neg=False)
    assert group_only(q, d).item() == pytest.approx(math.log(2) / 3, rel=1e-4)
    assert group_only(q, d, ids).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="has 5 ids for 6 documents"):
        loss(q, d, ids[:5])
    with pytest.raises(TypeError, match="1-D integer tensor"):
        loss(q, d, ids.float())


def test_every_softmax_loss_and_wrapper_takes_the_text_ids():
    """MaxSim CE scores the same columns; the wrappers hand the ids to the loss they wrap; the trainer takes them from
    the batch by name (``inputs_from``) and leaves them out when the batch has none."""
    import math

    from retrievals.losses import FlopsRegularizedLoss, MatryoshkaLoss, MaxSimCrossEntropyLoss, TeacherDistillLoss

    q, d, ids = one_hot_batch()
    mask_q, mask_d = torch.ones(3, 1, dtype=torch.long), torch.ones(6, 1, dtype=torch.long)
    for inbatch, unmasked in ((True, math.log(2)), (False, math.log(2) / 3)):
        maxsim_ce = MaxSimCrossEntropyLoss(temperature=0.02, use_inbatch_neg=inbatch)
        assert maxsim_ce(q[:, None], mask_q, d[:, None], mask_d).item() == pytest.approx(unmasked, rel=1e-4)
        assert maxsim_ce(q[:, None], mask_q, d[:, None], mask_d, ids).item() == pytest.approx(0.0, abs=1e-6)
    base = InfoNCELoss(temperature=0.02)
    for wrapper in (FlopsRegularizedLoss(base, 0.0, 0.0), MatryoshkaLoss(base, dims=[4], normalize=False)):
        assert "document_text_ids" in wrapper.reads and wrapper.optional == ("document_text_ids",)
        assert wrapper(q, d, document_text_ids=ids).item() == pytest.approx(0.0, abs=1e-6)
        assert wrapper(q, d).item() == pytest.approx(math.log(2), rel=1e-4)
    teacher = TeacherDistillLoss(base, weight=1.0)
    assert teacher(q, d, q, d, document_text_ids=ids).item() == pytest.approx(0.0, abs=1e-4)
    assert teacher(q, d, q, d).item() == pytest.approx(math.log(2), rel=1e-3)  # the teacher misses nothing, the base does
    outputs = {"query_embeddings": q, "document_embeddings": d}
    assert base.inputs_from(outputs, {"document_text_ids": ids}).keys() == {*outputs, "document_text_ids"}
    assert base.inputs_from(outputs, {}).keys() == outputs.keys()  # optional: absent, not an error
    assert TeacherDistillLoss(base).inputs_from(outputs, {"teacher_query_embeddings": q, "teacher_document_embeddings": d})
    # the triplet loss leaves a "negative" equal to the positive out of its average
    assert TripletMarginLoss(margin=0.5)(q, d).item() == pytest.approx(0.5 / 3 + 0.0, abs=1e-6)  # query 2's copy: 0.5
    assert TripletMarginLoss(margin=0.5)(q, d, ids).item() == pytest.approx(0.0, abs=1e-6)


def test_collated_batch_gives_the_loss_its_text_ids(tmp_path, tiny_bert):
    """The audit's FAQ data end to end: load_records drops the negative equal to the positive, the collator's text
    ids reach the loss through the trainer's compute_loss, and a perfect embedder's loss is 0, not log 2."""
    import json
    import math
    from types import SimpleNamespace

    from retrievals import AutoModelForEmbedding
    from retrievals.data import EmbeddingCollator, TextIdsCollator, TrainDataset, load_records
    from retrievals.training.trainer import RetrievalTrainer

    path = tmp_path / "faq.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"query": "renew passport", "positive": ["passport office form"], "negative": ["passport office form", "tax fee"]},
        {"query": "how to renew a passport", "positive": ["passport office form"], "negative": ["birth certificate"]},
    ]) + "\n")
    records = load_records(str(path), min_negatives=1)
    items = [TrainDataset(records, train_group_size=2, seed=0)[i] for i in range(2)]
    assert [item["documents"] for item in items] == [["passport office form", "tax fee"],
                                                     ["passport office form", "birth certificate"]]
    texts = sorted({t for item in items for t in item["documents"]})
    vector = {t: F.one_hot(torch.tensor(i), len(texts)).float() for i, t in enumerate(texts)}
    documents = [t for item in items for t in item["documents"]]

    class Perfect(torch.nn.Module):  # each query is its positive's vector: a perfect embedder of these texts
        def forward(self, query, document):
            return {"query_embeddings": torch.stack([vector[item["documents"][0]] for item in items]),
                    "document_embeddings": torch.stack([vector[t] for t in documents])}

    model = AutoModelForEmbedding.from_pretrained(tiny_bert)
    loss = InfoNCELoss(temperature=0.02)
    plain = EmbeddingCollator(model.processor)(items)
    assert "document_text_ids" not in plain  # off by default: model(**batch) keeps working
    batch = TextIdsCollator(EmbeddingCollator(model.processor))(items)
    assert batch["document_text_ids"].tolist()[0] == batch["document_text_ids"].tolist()[2]
    trainer = SimpleNamespace(loss_fn=loss)
    assert RetrievalTrainer.compute_loss(trainer, Perfect(), plain).item() == pytest.approx(math.log(2), rel=1e-4)
    assert RetrievalTrainer.compute_loss(trainer, Perfect(), batch).item() == pytest.approx(0.0, abs=1e-6)
    assert RetrievalTrainer.compute_loss(trainer, model, batch).requires_grad  # the real model takes the batch too


@pytest.mark.slow
def test_text_ids_are_gathered_with_cross_device_negatives(tmp_path):
    """Copies of a positive on another process are left out too: 2 processes give the single process's loss and
    gradients (the shared positives sit on different processes)."""
    from pathlib import Path

    from ..conftest import run_torchrun

    script = str(Path(__file__).parent / "dist_text_ids_check.py")
    run_torchrun(1, script, str(tmp_path / "one.pt"))
    run_torchrun(2, script, str(tmp_path / "two.pt"))
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one.keys() == two.keys() == {"infonce", "infonce_unmasked", "maxsim", "grad_q", "grad_d"}
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)
    assert one["infonce"] < one["infonce_unmasked"] - 0.3  # every query had a copy of its positive as a negative
    torch.testing.assert_close(one["maxsim"], one["infonce"])  # one token each: MaxSim is the dot product


# --- wrappers and settings ------------------------------------------------------------------------------------

def test_wrappers_give_the_wrapped_losses_temperature():
    """A sparse student with a teacher: the KL term scored the student at 1.0, not the InfoNCE's temperature,
    because the FLOPS wrapper hid it."""
    from retrievals.losses import FlopsRegularizedLoss, MatryoshkaLoss, TeacherDistillLoss

    inner = InfoNCELoss(temperature=0.05)
    flops = FlopsRegularizedLoss(inner, 0.0, 0.0)
    assert flops.temperature == 0.05 and MatryoshkaLoss(inner, dims=[4]).temperature == 0.05
    assert MatryoshkaLoss(TeacherDistillLoss(flops), dims=[4]).temperature == 0.05
    distill = TeacherDistillLoss(flops, 1.0, 0.02)
    assert distill.temperature == 0.05 and TeacherDistillLoss(flops).teacher_temperature == 0.05
    q, d = embeddings(d=8)
    torch.manual_seed(5)
    tq, td = F.normalize(torch.randn(4, 6), dim=-1), F.normalize(torch.randn(12, 6), dim=-1)
    assert distill(q, d, tq, td).item() == pytest.approx((inner(q, d) + kl(tq @ td.T / 0.02, q @ d.T / 0.05)).item(),
                                                         rel=1e-5)
    # a wrapped loss without a temperature: none through the wrapper either; a teacher refuses it (the student's
    # cosines at 1 gave a near-uniform softmax: the KL could not fall below about 1.2 whatever the student learned)
    assert not hasattr(FlopsRegularizedLoss(TripletMarginLoss()), "temperature")
    for student in (TripletMarginLoss(), FlopsRegularizedLoss(TripletMarginLoss())):
        with pytest.raises(UsageError, match="a teacher needs a loss with a temperature; 'triplet'|'flops'"):
            TeacherDistillLoss(student)


def test_loss_weights_must_be_finite():
    from retrievals.losses import FlopsRegularizedLoss, MatryoshkaLoss

    base = InfoNCELoss()
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="query_weight must be a finite number >= 0"):
            FlopsRegularizedLoss(base, query_weight=bad)
        with pytest.raises(ValueError, match="document_weight must be a finite number >= 0"):
            FlopsRegularizedLoss(base, document_weight=bad)
    for bad in (True, "1e-4", None):
        with pytest.raises(TypeError, match="query_weight must be a number"):
            FlopsRegularizedLoss(base, query_weight=bad)
    assert FlopsRegularizedLoss(base, 0, np.float32(1e-4)).document_weight == pytest.approx(1e-4)
    for bad in (float("inf"), float("nan"), 0.0, -1.0):
        with pytest.raises(ValueError, match=r"matryoshka weights\[0\] must be a finite number > 0"):
            MatryoshkaLoss(base, dims=[4], weights=[bad])
    with pytest.raises(TypeError, match=r"matryoshka weights\[0\] must be a number, got bool"):
        MatryoshkaLoss(base, dims=[4], weights=[True])


def test_loss_inputs_and_settings_are_named():
    from retrievals.losses import ListwiseCrossEntropyLoss, MatryoshkaLoss, MaxSimCrossEntropyLoss, PointwiseBCELoss

    q, d = torch.randn(2, 8), torch.randn(4, 8)
    with pytest.raises(TypeError, match="document vectors must be a tensor, got NoneType"):
        InfoNCELoss()(q, None)
    for loss in (InfoNCELoss(), TripletMarginLoss()):
        with pytest.raises(ValueError, match=r"empty batch \(0 queries, 0 documents\)"):
            loss(torch.zeros(0, 8), torch.zeros(0, 8))
        with pytest.raises(ValueError, match="5 documents do not split into groups for 2 queries"):
            loss(q, torch.randn(5, 8))
        with pytest.raises(ValueError, match=r"query vectors must have 2 dimensions, got shape \(8,\)"):
            loss(q[0], d)
    with pytest.raises(ValueError, match="empty batch"):
        MaxSimCrossEntropyLoss()(torch.zeros(0, 3, 8), torch.zeros(0, 3), torch.zeros(0, 3, 8), torch.zeros(0, 3))
    for loss in (ListwiseCrossEntropyLoss(), PointwiseBCELoss()):
        with pytest.raises(ValueError, match=r"scores must be a \[queries, candidates\] tensor, got \(4,\)"):
            loss(torch.randn(4), torch.zeros(4, dtype=torch.long))
        with pytest.raises(ValueError, match=r"targets must be a \[2\] tensor"):
            loss(torch.randn(2, 3), torch.zeros(3, dtype=torch.long))
    for bad in (16.9, True, "16"):
        with pytest.raises(TypeError, match=r"matryoshka dims\[0\] must be an int"):
            MatryoshkaLoss(InfoNCELoss(), [bad])
    assert MatryoshkaLoss(InfoNCELoss(), [np.int64(4)]).dims == [4]
    with pytest.raises(TypeError, match="temperature must be a number, got bool"):
        InfoNCELoss(temperature=True)
    with pytest.raises(TypeError, match="use_inbatch_neg must be True or False, got str"):
        InfoNCELoss(use_inbatch_neg="false")
    with pytest.raises(ValueError, match="margin must be a finite number >= 0, got inf"):
        TripletMarginLoss(margin=float("inf"))


def test_matryoshka_records_normalize_and_distils_only_with_a_temperature():
    from retrievals.losses import MatryoshkaLoss, TripletMarginLoss

    q, d = embeddings(d=8)
    on, off = MatryoshkaLoss(InfoNCELoss(), dims=[8, 4]), MatryoshkaLoss(InfoNCELoss(), dims=[8, 4], normalize=False)
    assert on(q, d).item() != pytest.approx(off(q, d).item())  # a setting that changes the loss is in its record
    assert on.get_config_dict()["normalize"] is True and off.get_config_dict()["normalize"] is False
    MatryoshkaLoss(TripletMarginLoss(), dims=[8, 4])  # without distillation a margin loss is fine
    with pytest.raises(UsageError, match="matryoshka distill needs a loss with a temperature; 'triplet'"):
        MatryoshkaLoss(TripletMarginLoss(), dims=[8, 4], distill=1.0)


def test_bce_needs_negatives():
    from retrievals.losses import PointwiseBCELoss

    with pytest.raises(UsageError, match="needs train_group_size >= 2"):
        PointwiseBCELoss()(torch.randn(3, 1), torch.zeros(3, dtype=torch.long))
    assert PointwiseBCELoss()(torch.randn(3, 2), torch.zeros(3, dtype=torch.long)).isfinite()


def test_teacher_vectors_must_be_finite():
    from retrievals.data import TeacherVectors

    good = torch.ones(2, 4)
    for bad in (float("nan"), float("inf")):
        vectors = good.clone()
        vectors[1, 2] = bad
        with pytest.raises(ValueError, match="teacher's vectors of 1 document texts are not finite.*'b'"):
            TeacherVectors(["q1", "q2"], good, ["a", "b"], vectors)
        with pytest.raises(ValueError, match="1 query texts"):
            TeacherVectors(["q1", "q2"], vectors, ["a", "b"], good)
