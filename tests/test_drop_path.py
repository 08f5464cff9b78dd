"""DropPath draws reproducible decisions: a resumed run (counter restored) continues an unbroken one."""
import mindspore as ms
import numpy as np
import pytest

from src.drop_path import COUNTER, DropPath


@pytest.fixture(autouse=True)
def pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)


def kept(cell, batch=1000, calls=1):
    """Which samples each call keeps, as a (calls, batch) bool array."""
    cell.set_train(True)
    ones = ms.Tensor(np.ones((batch, 1, 1, 1), np.float32))
    return np.stack([cell(ones).asnumpy().reshape(batch) > 0 for _ in range(calls)])


def drop_path(rate, seed=1):
    ms.set_seed(seed)
    return DropPath(rate)


def test_decisions_repeat_for_the_same_seed_and_counter_and_continue_after_a_restore():
    unbroken = kept(drop_path(0.3), calls=4)
    assert not (unbroken == unbroken[0]).all(), "each call draws anew"
    resumed = drop_path(0.3)
    getattr(resumed, COUNTER).set_data(ms.Tensor(2, ms.int64))  # as restored from a checkpoint
    np.testing.assert_array_equal(kept(resumed, calls=2), unbroken[2:])


def test_layers_and_seeds_draw_their_own_decisions_at_the_requested_rate():
    base = kept(drop_path(0.3))[0]
    assert abs((~base).mean() - 0.3) < 0.05
    assert (kept(drop_path(0.25))[0] != base).any()
    assert (kept(drop_path(0.3, seed=2))[0] != base).any()


def test_kept_samples_are_rescaled_and_eval_mode_is_the_identity():
    cell = drop_path(0.5)
    x = ms.Tensor(np.full((64, 2, 3, 3), 3.0, np.float32))
    cell.set_train(True)
    assert set(np.unique(cell(x).asnumpy())) == {0.0, 6.0}
    cell.set_train(False)
    np.testing.assert_array_equal(cell(x).asnumpy(), x.asnumpy())
    assert not hasattr(DropPath(0.0), COUNTER)  # rate 0: no state in checkpoints
