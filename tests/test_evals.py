"""Representation evaluators' metrics against NumPy loops and hand-worked cases: retrieval
recall@k in both directions (with repeated captions), k-NN accuracy, zero-shot accuracy and
prompt ensembling."""
import collections

import numpy as np
import pytest

from jaxbig.evals.knn import knn_accuracy
from jaxbig.evals.retrieval import recall_at_k, retrieval_metrics, same_caption
from jaxbig.evals.zero_shot import ensemble_prompts, zero_shot_accuracy


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- retrieval

def loop_recall(sim, correct, k):
    """Fraction of query rows with a correct item among their k highest similarities."""
    hits = 0
    for q in range(sim.shape[0]):
        top = sorted(range(sim.shape[1]), key=lambda j: -sim[q, j])[:k]
        hits += any(correct[q, j] for j in top)
    return hits / sim.shape[0]


def test_recall_at_k_hand_worked():
    sim = np.array([[0.9, 0.1, 0.5, 0.2],    # correct item 0 ranked 1st
                    [0.8, 0.3, 0.7, 0.6],    # correct item 1 ranked 4th
                    [0.1, 0.2, 0.4, 0.3]])   # correct items 1 and 3: item 3 ranked 2nd
    correct = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 1]], bool)
    assert recall_at_k(sim, correct, (1, 2, 3, 4)) == {1: 1 / 3, 2: 2 / 3, 3: 2 / 3, 4: 1.0}
    assert recall_at_k(sim, np.zeros_like(correct), (4,)) == {4: 0.0}  # nothing to find


def test_same_caption_groups_identical_token_rows():
    texts = np.array([[5, 6, 1, 0], [7, 1, 0, 0], [5, 6, 1, 0], [5, 6, 2, 1]])
    expected = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]], bool)
    np.testing.assert_array_equal(same_caption(texts), expected)


def test_retrieval_both_directions_match_loops():
    """Image i's caption is caption id[i] (repeats, as with the shapes grammar): an image
    is right to retrieve any text with its caption, and a text any image with it."""
    rng = np.random.default_rng(0)
    n, dim = 40, 8
    caption_id = rng.integers(0, 12, n)
    texts = np.stack([[c + 3, 1, 0] for c in caption_id])
    centres = rng.normal(size=(12, dim))
    images = unit(centres[caption_id] + 0.9 * rng.normal(size=(n, dim)))
    text_emb = unit(centres[caption_id] + 0.9 * rng.normal(size=(n, dim)))
    correct = same_caption(texts)
    np.testing.assert_array_equal(correct, caption_id[:, None] == caption_id[None, :])
    metrics = retrieval_metrics(images, text_emb, correct, (1, 5, 10))
    sim = images @ text_emb.T
    for k in (1, 5, 10):
        assert metrics[f'i2t_r{k}'] == pytest.approx(loop_recall(sim, correct, k))
        assert metrics[f't2i_r{k}'] == pytest.approx(loop_recall(sim.T, correct.T, k))
    assert metrics['i2t_chance_r1'] == pytest.approx(
        np.mean([np.mean(caption_id == c) for c in caption_id]))
    # Directions really differ: an image that finds its text is not the same event as that
    # text finding its image.
    assert metrics['i2t_r1'] != metrics['t2i_r1']
    assert 0 < metrics['i2t_r1'] < metrics['i2t_r5'] <= metrics['i2t_r10'] < 1


def test_retrieval_perfect_and_reversed_embeddings():
    emb = unit(np.random.default_rng(1).normal(size=(6, 6)))
    correct = np.eye(6, dtype=bool)
    perfect = retrieval_metrics(emb, emb, correct, (1,))
    assert perfect['i2t_r1'] == perfect['t2i_r1'] == 1.0
    assert retrieval_metrics(emb, -emb, correct, (1, 5))['i2t_r5'] == 0.0  # own text last


# ----------------------------------------------------------------------------- k-NN

def loop_knn(train_x, train_y, test_x, test_y, k):
    right = 0
    for x, y in zip(test_x, test_y):
        cos = [x @ t / np.linalg.norm(x) / np.linalg.norm(t) for t in train_x]
        nearest = sorted(range(len(train_x)), key=lambda j: -cos[j])[:k]
        votes = collections.Counter(int(train_y[j]) for j in nearest)
        best = max(votes.values())
        right += min(c for c, v in votes.items() if v == best) == y
    return right / len(test_x)


def test_knn_hand_worked():
    train_x = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0]], float)
    train_y = np.array([0, 0, 1, 1, 2])
    test_x = np.array([[1, 0.05], [0.05, 1], [-1, 0.1], [2, 0.01]])  # scale must not matter
    assert knn_accuracy(train_x, train_y, test_x, np.array([0, 1, 2, 0]), k=1) == 1.0
    assert knn_accuracy(train_x, train_y, test_x, np.array([0, 1, 0, 0]), k=1) == 0.75
    # k=3 around [-1, 0.1]: neighbours labelled 2, then 1 ([0, 1], [0.1, 0.9]) -> 1 wins.
    assert knn_accuracy(train_x, train_y, test_x[2:3], np.array([1]), k=3) == 1.0
    # k=2 over two training points, one vote each: the tie goes to the smaller label.
    tie_x = np.array([[1, 0], [-1, 0]], float)
    assert knn_accuracy(tie_x, np.array([2, 0]), np.array([[0, 1.0]]), np.array([0]), k=2) == 1


def test_knn_matches_loop_on_random_features():
    rng = np.random.default_rng(2)
    train_x, test_x = rng.normal(size=(60, 5)), rng.normal(size=(25, 5))
    train_y, test_y = rng.integers(0, 4, 60), rng.integers(0, 4, 25)
    for k in (1, 4, 7, 100):  # k above the train size uses them all
        assert knn_accuracy(train_x, train_y, test_x, test_y, k=k) == pytest.approx(
            loop_knn(train_x, train_y, test_x, test_y, min(k, 60)))


# ----------------------------------------------------------------------------- zero-shot

def test_zero_shot_hand_worked_and_scale_free():
    classes = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    images = np.array([[5, 1, 0], [0.2, 0.1, 3], [0, 2, 1.9], [1, 1.1, 0]])
    assert zero_shot_accuracy(images, classes, np.array([0, 2, 1, 1])) == 1.0
    assert zero_shot_accuracy(images, 7 * classes, np.array([0, 2, 2, 0])) == 0.5


def test_prompt_ensembling_and_accuracy_match_loops():
    rng = np.random.default_rng(3)
    num_classes, num_templates, dim = 5, 3, 6
    prompts = rng.normal(size=(num_classes * num_templates, dim)) * rng.uniform(0.5, 4, (15, 1))
    class_emb = ensemble_prompts(prompts, num_classes, num_templates)
    for c in range(num_classes):
        rows = prompts[c * num_templates:(c + 1) * num_templates]
        mean = np.mean([r / np.linalg.norm(r) for r in rows], axis=0)
        np.testing.assert_allclose(class_emb[c], mean / np.linalg.norm(mean), atol=1e-12)
    images, labels = rng.normal(size=(50, dim)), rng.integers(0, num_classes, 50)
    expected = np.mean([
        max(range(num_classes), key=lambda c: x @ class_emb[c] / np.linalg.norm(x)) == y
        for x, y in zip(images, labels)])
    assert zero_shot_accuracy(images, class_emb, labels) == pytest.approx(expected)
    assert 0 < expected < 1
