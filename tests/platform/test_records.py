"""Row ids: deterministic and collision-free over what they key."""

from pixlake.platform import records as R


def test_row_id_is_deterministic_and_keys_on_tenant_subject_and_content():
    base = R.row_id("acme", "subj", "hash")
    assert base == R.row_id("acme", "subj", "hash")
    assert len({base, R.row_id("globex", "subj", "hash"), R.row_id("acme", "other", "hash"), R.row_id("acme", "subj", "hash2")}) == 4
    # Field boundaries matter: ("ab", "c") must not collide with ("a", "bc").
    assert R.row_id("ab", "c", "h") != R.row_id("a", "bc", "h")


def test_an_item_without_subject_is_its_own_subject():
    assert R.item_subject("abc") != R.item_subject("abd")


def test_is_row_id_accepts_only_the_shape_row_id_makes():
    good = R.row_id("t", "s", "h")
    assert R.is_row_id(good)
    for bad in (good.upper(), good[:-1], good + "0", f'{good[:30]}" ', "", "g" * 32):
        assert not R.is_row_id(bad), bad
