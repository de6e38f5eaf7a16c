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
