import torch

from rtune_ds.data.blend import Blend


def make_blend(switch_step=None, seed=0, phases=None):
    a = torch.arange(0, 400).view(100, 4)  # values 0..399: source 0
    b = torch.arange(1000, 1200).view(50, 4)  # values >= 1000: source 1
    phases = phases or [[3.0, 1.0], [0.0, 1.0]]
    return Blend(["a", "b"], [a, b], phases, switch_step, seed,
                 collate=lambda rows, keys: {"input_ids": rows})


def source_of(rows):
    return (rows[:, 0] >= 1000).long()


def test_same_seed_same_batches_and_weights_are_respected():
    x, y = make_blend(seed=1), make_blend(seed=1)
    picks = []
    for step in range(200):
        bx, by = x.global_batch(step, 16), y.global_batch(step, 16)
        assert torch.equal(bx, by)
        picks.append(source_of(bx))
    share_b = torch.cat(picks).float().mean().item()
    assert 0.20 < share_b < 0.30  # weight 1 of 4


def test_switch_moves_to_second_blend():
    blend = make_blend(switch_step=10)
    assert blend.phase(9) == 0 and blend.phase(10) == 1
    for step in range(10, 30):
        assert source_of(blend.global_batch(step, 8)).all()
    assert blend.scalars(10) == {"data/phase": 1.0, "data/weight/a": 0.0, "data/weight/b": 1.0}


def test_cursor_walks_a_permutation_without_repeats_within_an_epoch():
    blend = make_blend(phases=[[1.0, 0.0]])
    rows = torch.cat([blend.global_batch(s, 10) for s in range(10)])  # exactly one epoch of a
    assert sorted(rows[:, 0].tolist()) == list(range(0, 400, 4))


def test_state_dict_resumes_the_exact_sequence():
    full = make_blend(switch_step=7, seed=5)
    expected = [full.global_batch(s, 12) for s in range(20)]
    first = make_blend(switch_step=7, seed=5)
    for s in range(9):
        first.global_batch(s, 12)
    resumed = make_blend(switch_step=7, seed=5)
    resumed.load_state_dict(first.state_dict())
    for s in range(9, 20):
        assert torch.equal(resumed.global_batch(s, 12), expected[s])
