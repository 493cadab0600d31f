import math

import pytest
import torch

from tv_lens.analyses.answers import answer_tokens
from tv_lens.errors import ShapeError
from tv_lens.metrics import (
    TOLERANCE,
    answer_correct,
    answer_logits,
    answer_loss,
    answer_scores,
    checked_answers,
    mse,
    squared_error,
    token_accuracy,
    token_cross_entropy,
    tolerance_problem,
)


def random_logits(batch=6, n_answer=3, vocab=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, n_answer, vocab, generator=generator, dtype=torch.float64)
    answers = torch.randint(0, vocab, (batch, n_answer), generator=generator)
    return logits, answers


def test_accuracy_matches_a_python_loop():
    logits, answers = random_logits()
    answers[0] = logits[0].argmax(-1)  # one fully correct prompt
    answers[1, 0] = logits[1, 0].argmax()  # first token right, maybe not the rest
    expected_all, expected_first = [], []
    for row in range(len(logits)):
        hits = [int(logits[row, i].argmax()) == int(answers[row, i]) for i in range(3)]
        expected_all.append(float(all(hits)))
        expected_first.append(float(hits[0]))
    assert token_accuracy(logits, answers).tolist() == expected_all
    assert token_accuracy(logits, answers, first_token_only=True).tolist() == expected_first
    assert expected_all[0] == 1.0 and expected_first[1] == 1.0


def test_cross_entropy_matches_log_softmax_by_hand():
    logits, answers = random_logits(seed=1)
    for row in range(len(logits)):
        nll = []
        for i in range(3):
            row_logits = logits[row, i].tolist()
            log_z = math.log(sum(math.exp(v) for v in row_logits))
            nll.append(log_z - row_logits[int(answers[row, i])])
        assert token_cross_entropy(logits, answers)[row].item() == pytest.approx(sum(nll) / 3, abs=1e-9)
        first = token_cross_entropy(logits, answers, first_token_only=True)[row].item()
        assert first == pytest.approx(nll[0], abs=1e-9)


def test_single_token_answers_may_be_one_dimensional():
    logits, answers = random_logits(n_answer=1, seed=2)
    torch.testing.assert_close(token_cross_entropy(logits, answers[:, 0]), token_cross_entropy(logits, answers))


def test_answer_logits_reads_consecutive_positions_per_prompt():
    full = torch.arange(2 * 6 * 4, dtype=torch.float64).view(2, 6, 4)
    picked = answer_logits(full, torch.tensor([1, 3]), n_answer_tokens=2)
    assert torch.equal(picked[0], full[0, 1:3]) and torch.equal(picked[1], full[1, 3:5])
    with pytest.raises(ShapeError, match=r"must lie in \[0, 6\)"):
        answer_logits(full, torch.tensor([1, 5]), n_answer_tokens=2)


def test_mse_matches_numpy():
    generator = torch.Generator().manual_seed(3)
    predictions, targets = torch.randn(4, 2, 3, generator=generator), torch.randn(4, 2, 3, generator=generator)
    expected = ((predictions.numpy() - targets.numpy()) ** 2).reshape(4, -1).mean(axis=1)
    torch.testing.assert_close(mse(predictions, targets), torch.from_numpy(expected))
    with pytest.raises(ShapeError, match="same shape"):
        mse(predictions, targets[:, 0])


def test_bad_answers_are_reported():
    logits, answers = random_logits()
    with pytest.raises(ShapeError, match="n_answer_tokens="):
        token_accuracy(logits, answers[:, :2])
    with pytest.raises(ShapeError, match=r"token ids in \[0, 5\)"):
        token_cross_entropy(logits, answers + 5)
    for not_tokens in ("cold", None, [["a"]], answers > 0, answers.float()):  # were torch errors
        with pytest.raises(ShapeError, match=r"answers must be integer token ids"):
            token_accuracy(logits, not_tokens)
    with pytest.raises(ShapeError, match=r"logits must be floating point, got torch.int64"):
        token_cross_entropy(logits.long(), answers)


def test_one_check_of_answers_serves_every_scorer():
    tokens = torch.tensor([[3, 1], [2, -1], [4, 0]], dtype=torch.int32)
    assert torch.equal(checked_answers(tokens, 3), tokens.long()) and checked_answers(tokens).dtype == torch.long
    assert checked_answers(torch.tensor([3, 2]), 2).tolist() == [[3], [2]]  # one token per prompt
    values = torch.randn(3, 2)
    assert checked_answers(values, 3, continuous=True) is values
    assert checked_answers(values[:, 0], 3, continuous=True).shape == (3, 1)
    wrong = {
        "a padding gap": torch.tensor([[3, -1, 1]]),
        "no token": torch.tensor([[-1, -1]]),
        "below -1": torch.tensor([[3, -2]]),
        "no column": torch.zeros(1, 0, dtype=torch.long),
    }
    for answers in wrong.values():
        with pytest.raises(ShapeError, match=r"answers must be"):
            checked_answers(answers)
        logits = torch.zeros(1, max(answers.shape[1], 1), 5)
        with pytest.raises(ShapeError, match=r"answers must be"):  # the scorers refuse the same
            token_accuracy(logits[:, : answers.shape[1]], answers)
        with pytest.raises(ShapeError, match=r"answers must be"):
            answer_tokens(answers, 1)
    with pytest.raises(ShapeError, match=r"\[batch=4, n_answer\].*got torch\.int32 \(3, 2\)"):
        checked_answers(tokens, 4)
    with pytest.raises(ShapeError, match=r"got torch\.float32"):
        checked_answers(values)  # floats are token ids only where continuous answers are allowed
    with pytest.raises(ShapeError, match=r"or continuous answers \[batch=3, d_out\].*got torch\.bool"):
        checked_answers(values > 0, 3, continuous=True)


def test_the_scorer_scores_token_answers_by_exact_match_and_cross_entropy():
    logits, answers = random_logits(seed=4)
    answers[2, 1:] = -1  # a shorter answer: scored over its own token
    answers[3] = logits[3].argmax(-1)
    correct, loss = answer_scores(logits, answers, tolerance=123.0)  # a tolerance is for continuous answers only
    assert torch.equal(correct, token_accuracy(logits, answers)) and correct[3] == 1.0
    assert torch.equal(loss, token_cross_entropy(logits, answers))
    assert torch.equal(answer_correct(logits, answers), correct) and torch.equal(answer_loss(logits, answers), loss)


def test_the_scorer_scores_continuous_answers_by_squared_error_within_a_tolerance():
    generator = torch.Generator().manual_seed(5)
    outputs = torch.randn(6, 1, 3, generator=generator, dtype=torch.float64)  # the model's d_out = 3
    answers = torch.randn(6, 2, generator=generator, dtype=torch.float64)  # the task's d_out = 2: first 2 outputs
    by_hand = [sum((float(outputs[i, 0, j]) - float(answers[i, j])) ** 2 for j in range(2)) / 2 for i in range(6)]
    tolerance = sorted(by_hand)[2] + 1e-9  # the three smallest errors are within it
    correct, loss = answer_scores(outputs, answers, tolerance)
    assert loss.tolist() == pytest.approx(by_hand, abs=1e-12)
    assert correct.tolist() == [float(e <= tolerance) for e in by_hand] and correct.sum() == 3
    assert correct.dtype == outputs.dtype
    assert torch.equal(answer_correct(outputs, answers), (loss <= TOLERANCE).double())
    assert torch.equal(answer_loss(outputs, answers), squared_error(outputs, answers))
    same_shape = outputs[:, 0, :2]  # outputs of the answers' shape are compared as they are
    torch.testing.assert_close(squared_error(same_shape, answers), loss)


def test_squared_error_and_tolerance_refuse_what_cannot_be_scored():
    logits, answers = random_logits()
    with pytest.raises(ShapeError, match=r"continuous answers .* got torch.int64 token ids"):
        squared_error(logits, answers)
    for bad in (0, -1.0, float("inf"), float("nan"), True, "0.1"):
        assert tolerance_problem(bad).startswith("tolerance must be a finite number > 0 (the squared error up to")
    assert tolerance_problem(0.5) is None and tolerance_problem(2) is None
