"""Row ids and subject pseudonyms: deterministic, collision-free over what they key, never raw."""

from pixlake.platform import records as R


def test_row_id_is_deterministic_and_keys_on_tenant_subject_and_content():
    base = R.row_id("acme", "subj", "hash")
    assert base == R.row_id("acme", "subj", "hash")
    assert len({base, R.row_id("globex", "subj", "hash"), R.row_id("acme", "other", "hash"), R.row_id("acme", "subj", "hash2")}) == 4
    # Field boundaries matter: ("ab", "c") must not collide with ("a", "bc").
    assert R.row_id("ab", "c", "h") != R.row_id("a", "bc", "h")


def test_pseudonym_hides_the_subject_and_differs_per_tenant():
    p = R.pseudonym("acme", "alice@example.com")
    assert p == R.pseudonym("acme", "alice@example.com")
    assert "alice" not in p and len(p) == 32
    assert p != R.pseudonym("globex", "alice@example.com")


def test_an_item_without_subject_is_its_own_subject():
    assert R.item_subject("abc") != R.item_subject("abd")
    assert R.pseudonym("t", R.item_subject("abc")) != R.pseudonym("t", R.item_subject("abd"))
