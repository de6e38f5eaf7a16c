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


def test_kd_kl_mask_drops_padding_rows():
    from rtune_ds.train.objectives import kd_kl

    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    noisy = s.clone()
    noisy[~mask] = 1e3  # garbage where there is padding
    assert torch.allclose(kd_kl(noisy, t, 2.0, mask), kd_kl(s[mask], t[mask], 2.0), atol=1e-6)


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
