import math

import pytest
import torch

from rtune_ds.train.objectives import IGNORE, LMObjective


def mlm(seed=0):
    return LMObjective(kind="mlm", seed=seed, mask_token_id=4, vocab_size=100,
                       special_ids=(0, 1, 2, 3, 4), mlm_probability=0.15)


def test_clm_labels_are_the_inputs():
    blocks = torch.randint(5, 100, (2, 16))
    batch = LMObjective(kind="clm").batch(blocks, [0, 1])
    assert torch.equal(batch["labels"], blocks) and torch.equal(batch["input_ids"], blocks)
    assert LMObjective.target_count(batch, "clm") == 2 * 15


def test_mlm_masks_are_seeded_by_key_and_spare_special_tokens():
    blocks = torch.randint(5, 100, (64, 128))
    blocks[:, ::16] = 2  # document separators
    first, again = mlm().batch(blocks, list(range(64))), mlm().batch(blocks, list(range(64)))
    assert torch.equal(first["input_ids"], again["input_ids"])
    other = mlm().batch(blocks, list(range(100, 164)))
    assert not torch.equal(first["labels"], other["labels"])
    chosen = first["labels"] != IGNORE
    assert not chosen[blocks == 2].any()
    rate = chosen.float().mean().item()
    assert 0.12 < rate < 0.16
    replaced_by_mask = (first["input_ids"] == 4) & chosen
    assert 0.75 < replaced_by_mask.sum().item() / chosen.sum().item() < 0.85
    assert torch.equal(first["labels"][chosen], blocks[chosen])


def test_mlm_row_never_empty():
    blocks = torch.randint(5, 100, (1, 8))
    obj = LMObjective(kind="mlm", mask_token_id=4, vocab_size=100, special_ids=(0,),
                      mlm_probability=0.01)
    for key in range(50):
        assert (obj.batch(blocks, [key])["labels"] != IGNORE).any()


# --- distillation losses ------------------------------------------------------------------------

def test_kd_kl_is_zero_for_identical_logits_and_positive_otherwise():
    from rtune_ds.train.objectives import kd_kl

    z = torch.randn(6, 5)
    assert kd_kl(z, z.clone(), 2.0).abs().item() < 1e-6
    assert kd_kl(z, torch.randn(6, 5), 2.0).item() > 0


def test_kd_kl_matches_torch_kl_div_with_temperature_squared():
    from rtune_ds.train.objectives import kd_kl

    s, t = torch.randn(8, 7), torch.randn(8, 7)
    for T in (1.0, 2.0, 4.0):
        want = torch.nn.functional.kl_div(torch.log_softmax(s / T, -1), torch.log_softmax(t / T, -1),
                                          log_target=True, reduction="batchmean") * T * T
        assert torch.allclose(kd_kl(s, t, T), want, atol=1e-6)


def test_kd_kl_gradient_is_t_times_the_softened_probability_gap():
    from rtune_ds.train.objectives import kd_kl

    s, t, T = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3), 3.0
    kd_kl(s, t, T).backward()
    want = T * (torch.softmax(s.detach() / T, -1) - torch.softmax(t / T, -1)) / 4
    assert torch.allclose(s.grad, want, atol=1e-6)


def test_next_token_targets_are_the_positions_before_a_label():
    from rtune_ds.train.objectives import next_token_targets

    labels = torch.tensor([[IGNORE, IGNORE, 7, 8, IGNORE], [IGNORE, 5, 6, IGNORE, IGNORE]])
    assert next_token_targets(labels).tolist() == [[False, True, True, False],
                                                   [True, True, False, False]]


# --- the KL on the teacher's top-k support (the bounded LM teacher cache) -------------------------

def top_k_of(teacher: torch.Tensor, k: int, temperature: float):
    """What the cache keeps of `teacher` logits: the top k, their ids, logsumexp(z/T)."""
    top = teacher.topk(k, dim=-1)
    return top.values, top.indices.int(), torch.logsumexp(teacher / temperature, dim=-1)


def coarse_kl_by_hand(student, teacher, k, temperature) -> float:
    """T²·KL of the two tempered distributions merged to the teacher's top k + the rest, in
    float64, written out row by row; the mean over rows."""
    total = 0.0
    for s_row, t_row in zip(student.double(), teacher.double()):
        p, q = torch.softmax(t_row / temperature, -1), torch.softmax(s_row / temperature, -1)
        top = torch.argsort(t_row, descending=True)[:k]
        coarse_p = [*p[top].tolist(), 1 - p[top].sum().item()]
        coarse_q = [*q[top].tolist(), 1 - q[top].sum().item()]
        total += sum(a * math.log(a / b) for a, b in zip(coarse_p, coarse_q) if a > 0)
    return temperature ** 2 * total / len(student)


def test_kd_kl_top_k_against_a_hand_computation_on_a_tiny_example():
    from rtune_ds.train.objectives import kd_kl_top_k

    teacher = torch.tensor([[4.0, 2.0, 0.0, -2.0]])
    student = torch.tensor([[1.0, 3.0, 0.0, 0.0]])
    t = 2.0
    # teacher at T = 2: ∝ e², e¹, e⁰, e⁻¹; its top 2 are tokens 0 and 1, the rest is tokens 2, 3
    zt = math.e ** 2 + math.e + 1 + math.e ** -1
    p = [math.e ** 2 / zt, math.e / zt, (1 + math.e ** -1) / zt]
    zs = math.e ** 0.5 + math.e ** 1.5 + 2
    q = [math.e ** 0.5 / zs, math.e ** 1.5 / zs, 2 / zs]
    want = t * t * sum(a * math.log(a / b) for a, b in zip(p, q))
    got = kd_kl_top_k(student, *top_k_of(teacher, 2, t), t).item()
    assert got == pytest.approx(want, rel=1e-6)
    assert got == pytest.approx(coarse_kl_by_hand(student, teacher, 2, t), rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_kd_kl_top_k_is_the_full_kl_at_k_v_and_a_lower_bound_rising_with_k(temperature):
    from rtune_ds.train.objectives import kd_kl, kd_kl_top_k

    g = torch.Generator().manual_seed(4)
    vocab = 50
    student, teacher = torch.randn(12, vocab, generator=g) * 3, torch.randn(12, vocab, generator=g) * 3
    full = kd_kl(student, teacher, temperature).item()
    bounded = [kd_kl_top_k(student, *top_k_of(teacher, k, temperature), temperature).item()
               for k in (1, 4, 16, 49, vocab)]
    assert bounded[-1] == pytest.approx(full, rel=1e-5)
    assert all(a <= b + 1e-6 for a, b in zip(bounded, bounded[1:]))  # merging never adds
    assert 0 < bounded[0] < full
    for k, got in zip((1, 4, 16, 49), bounded):
        assert got == pytest.approx(coarse_kl_by_hand(student, teacher, k, temperature), rel=1e-4)


def test_kd_kl_top_k_keeps_a_students_tiny_rest_exact():
    """A student whose three top tokens hold all but ~1e-10 of its mass, against a teacher that
    leaves 13-50% outside its top 3: the rest term weighs, and 1 − Σ top-k in fp32 would make the
    student's rest 0 or a rounding error (an infinite or wrong log)."""
    from rtune_ds.train.objectives import kd_kl_top_k

    g = torch.Generator().manual_seed(5)
    teacher, student = torch.randn(6, 30, generator=g), torch.randn(6, 30, generator=g)
    teacher[:, :3] += 3.0
    student[:, :3] += 25.0
    got = kd_kl_top_k(student, *top_k_of(teacher, 3, 1.0), 1.0).item()
    assert got == pytest.approx(coarse_kl_by_hand(student, teacher, 3, 1.0), rel=1e-5)


def test_kd_kl_top_k_gradient_flows_to_the_student_and_vanishes_at_the_teacher():
    from rtune_ds.train.objectives import kd_kl_top_k

    g = torch.Generator().manual_seed(6)
    teacher = torch.randn(5, 20, generator=g)
    student = torch.randn(5, 20, generator=g).requires_grad_()
    for k in (4, 20):
        student.grad = None
        kd_kl_top_k(student, *top_k_of(teacher, k, 2.0), 2.0).backward()
        assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
        # the gradient of the coarse KL, written out in float64
        s64 = student.detach().double().requires_grad_()
        p = torch.softmax(teacher.double() / 2.0, -1)
        q = torch.softmax(s64 / 2.0, -1)
        top = teacher.topk(k, -1).indices
        pk, qk = p.gather(-1, top), q.gather(-1, top)
        pr, qr = 1 - pk.sum(-1), 1 - qk.sum(-1)
        rest = pr * (pr.log() - qr.log()) if k < 20 else 0
        (4.0 * ((pk * (pk.log() - qk.log())).sum(-1) + rest).mean()).backward()
        torch.testing.assert_close(student.grad.double(), s64.grad, rtol=1e-4, atol=1e-6)
    same = teacher.clone().requires_grad_()
    loss = kd_kl_top_k(same, *top_k_of(teacher, 4, 2.0), 2.0)
    loss.backward()
    assert abs(loss.item()) < 1e-6 and same.grad.abs().max() < 1e-6


def test_kd_kl_top_k_is_finite_when_the_teachers_rest_is_zero():
    from rtune_ds.train.objectives import kd_kl_top_k

    teacher = torch.full((2, 8), -1e4)
    teacher[:, :2] = torch.tensor([3.0, 1.0])  # all the mass on two tokens: the rest is 0
    student = torch.randn(2, 8, requires_grad=True)
    loss = kd_kl_top_k(student, *top_k_of(teacher, 2, 1.0), 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    assert loss.item() == pytest.approx(coarse_kl_by_hand(student.detach(), teacher, 2, 1.0),
                                        rel=1e-5)


def test_hidden_mse_ignores_padding_and_is_zero_for_identical_states():
    from rtune_ds.train.objectives import hidden_mse

    a, mask = torch.randn(2, 4, 8), torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert hidden_mse([a, a], [a.clone(), a.clone()], mask).item() == 0
    b = a.clone()
    b[mask == 0] += 5.0  # differs only at padding
    assert hidden_mse([a], [b], mask).item() == 0
    c = a + 1.0
    assert abs(hidden_mse([a], [c], mask).item() - 1.0) < 1e-6


def test_kd_total_weights_the_terms():
    from rtune_ds.train.objectives import kd_total

    ce, kl, hid = torch.tensor(2.0), torch.tensor(4.0), torch.tensor(10.0)
    assert kd_total(ce, kl, None, 0.25, 0.0).item() == 0.75 * 2 + 0.25 * 4
    assert kd_total(ce, kl, hid, 0.5, 0.1).item() == 1 + 2 + 1
