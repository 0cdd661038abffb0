import pytest

from intermod.data.splits import make_split

SUBJECTS = [f"sub-{i:03d}" for i in range(15)]


@pytest.mark.parametrize("fold", range(5))
def test_no_subject_has_two_roles(fold):
    split = make_split(SUBJECTS, fold, seed=3)
    train, val, test = map(set, (split.train, split.val, split.test))
    assert (len(train), len(val), len(test)) == (12, 1, 2)  # the paper's 12/1/2
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == set(SUBJECTS)


def test_test_sets_are_disjoint_across_folds_and_deterministic():
    tests = [set(make_split(SUBJECTS, f, seed=0).test) for f in range(5)]
    assert len(set().union(*tests)) == 10
    assert make_split(SUBJECTS, 2, seed=0) == make_split(list(reversed(SUBJECTS)), 2, seed=0)
    assert make_split(SUBJECTS, 2, seed=0) != make_split(SUBJECTS, 2, seed=1)


def test_invalid_requests_raise():
    with pytest.raises(ValueError, match="fold must be"):
        make_split(SUBJECTS, 5)
    with pytest.raises(ValueError, match="cannot give"):
        make_split(SUBJECTS[:3], 0)
