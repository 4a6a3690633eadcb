"""Many models trained together equal the same models trained one by one."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from curvfast.errors import DataError
from curvfast.models import build_model
from curvfast.pipelines.common.multitrain import subset_batches, train_subset_models


def _make():
    return build_model("small_cnn", 10, 1)


@pytest.fixture(scope="module")
def data():
    from curvfast.data import DigitsDataset

    ds = DigitsDataset("train")
    x, y = ds.images[:96], ds.targets[:96]
    keep = np.random.default_rng(0).random((3, len(x))) < 0.5
    return x, y, keep


def _plain_training(x, y, keep, model_id, epochs, seed=0):
    """train.train_model's recipe written out for one model on subset_batches' batches."""
    batches = subset_batches(keep, 16, epochs, seed, model_ids=range(keep.shape[0]))
    torch.manual_seed(seed + model_id)
    model = _make().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    for step, idx in enumerate(batches):
        i = torch.from_numpy(idx[model_id])
        opt.zero_grad()
        F.cross_entropy(model(x[i]), y[i]).backward()
        opt.step()
        if (step + 1) % (len(batches) // epochs) == 0:
            sched.step()
    return model.eval()


@pytest.mark.parametrize("stack", [True, False])
def test_matches_one_by_one(data, stack):
    x, y, keep = data
    models = train_subset_models(_make, x, y, keep, epochs=2, batch_size=16, models_per_pass=2, stack=stack)
    ref = _plain_training(x, y, keep, 2, epochs=2)  # model 2 trains in the second group
    for (name, a), b in zip(ref.state_dict().items(), models[2].state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)  # BatchNorm running stats included
    assert not models[2].training


def test_uint8_images_train_the_same_models_as_their_floats(data):
    """materialise's uint8 images (decoded per gathered batch as q / 255) give bit-identical models."""
    _, y, keep = data
    q = torch.randint(0, 256, (len(y), 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    runs = [train_subset_models(_make, x, y, keep, epochs=1, batch_size=16, stack=False) for x in (q, q.float() / 255)]
    for a, b in zip(*runs):
        for (name, u), v in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(u, v), name


def test_batches_stay_in_subset_and_cover_it():
    keep = np.zeros((2, 50), dtype=bool)
    keep[0, :20] = True
    keep[1, 30:] = True
    batches = np.stack(subset_batches(keep, 5, epochs=2, seed=1))
    assert batches.shape == (2 * 4, 2, 5)
    assert set(batches[:, 0].ravel()) == set(range(20)) and set(batches[:, 1].ravel()) == set(range(30, 50))
    # the first epoch of model 0 is a permutation of its subset (20 = 4 steps x 5)
    assert sorted(batches[:4, 0].ravel()) == list(range(20))
    again = np.stack(subset_batches(keep[1:], 5, epochs=2, seed=1, model_ids=[1]))
    np.testing.assert_array_equal(again[:, 0], batches[:, 1])


def test_bad_keep_is_refused(data):
    x, y, keep = data
    with pytest.raises(DataError, match="empty"):
        subset_batches(np.zeros((2, 5), dtype=bool), 4, 1, 0)
    with pytest.raises(DataError, match="columns"):
        train_subset_models(_make, x, y, keep[:, :-1], epochs=1)
