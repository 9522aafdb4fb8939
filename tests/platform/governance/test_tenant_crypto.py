"""The per-tenant crypto handle a stage gets from the governance owner: it pickles, carries
only its own tenant's keys and only the parts asked for (never the master key, nor a data
key), and derives exactly what the governance facade derives."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from pixlake.platform.errors import GovernanceError
from pixlake.platform.governance.cipher import keyed_content_hash
from pixlake.platform.governance.keys import load_master_key
from pixlake.platform.governance.service import Governance
from pixlake.platform.governance.tenant_crypto import TenantCrypto
from pixlake.platform.images import content_hash
from pixlake.platform.records import item_subject
from pixlake.platform.settings import GovernanceSettings


pytestmark = pytest.mark.usefixtures("no_master_key_env")


@pytest.fixture
def governance(tmp_path):
    governance = Governance(tmp_path / "governance", GovernanceSettings(beta=2.0, sensitive_meta=["secret"]))
    yield governance
    governance.close()


def test_a_handle_pickles_with_its_tenants_keys_only(governance):
    alice = governance.pseudonym("acme", "alice")
    data_key = governance.data_keys("acme", [alice])[alice][1]
    governance.keys.rotate_tenant_key("acme")  # two versions: the handle holds the current one alone
    handle = governance.tenant_crypto("acme")
    blob = pickle.dumps(handle)
    master, _ = load_master_key(governance.dir, create=False)
    old_vector_key = governance.tenant_key("acme", 1)[1]
    for secret in (master, data_key, old_vector_key, governance.identity_key("globex"), governance.tenant_key("globex")[1]):
        assert secret not in blob
    copy = pickle.loads(blob)
    assert (copy.tenant, copy.version, copy.beta, copy.encryption, copy.sensitive_meta) == ("acme", 2, 2.0, True, ("secret",))
    assert copy.identity_key == governance.identity_key("acme") and copy.vector_key == governance.tenant_key("acme")[1]
    assert "key" not in repr(copy) and repr(copy).startswith("TenantCrypto(tenant='acme', version=2")  # keys stay out of logs


def test_a_handle_carries_only_the_parts_asked_for(governance):
    identity = governance.tenant_crypto("acme", vectors=False)
    vectors = governance.tenant_crypto("acme", identity=False)
    assert identity.vector_key is None and identity.version is None
    assert vectors.identity_key is None and vectors.version == 1
    assert governance.identity_key("acme") not in pickle.dumps(vectors)
    assert governance.tenant_key("acme")[1] not in pickle.dumps(identity)
    with pytest.raises(GovernanceError, match="no vector key"):
        identity.cipher(4)
    with pytest.raises(GovernanceError, match="no identity key"):
        vectors.pseudonym("alice")


def test_asking_only_for_identities_creates_no_vector_key(governance):
    governance.tenant_crypto("acme", vectors=False).pseudonym("alice")
    assert governance.keys.live_versions("acme") == []


def test_the_handle_derives_what_the_facade_derives(governance):
    handle = pickle.loads(pickle.dumps(governance.tenant_crypto("acme")))
    assert handle.pseudonym("alice") == governance.pseudonym("acme", "alice") != governance.pseudonym("globex", "alice")
    data = b"some image bytes"
    pseudonym, digest = handle.identify("", data)
    assert digest == keyed_content_hash(governance.identity_key("acme"), content_hash(data)) != content_hash(data)
    assert pseudonym == governance.pseudonym("acme", item_subject(digest))  # an item with no subject is its own
    assert handle.identify("alice", data) == (governance.pseudonym("acme", "alice"), digest)
    plain = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    keys, nonces = [b"k" * 32] * 3, [b"n1", b"n2", b"n3"]
    version, facade = governance.cipher("acme", 16)
    assert version == handle.version and facade.beta == handle.cipher(16).beta == 2.0
    np.testing.assert_array_equal(handle.cipher(16).encrypt(plain, keys, nonces), facade.encrypt(plain, keys, nonces))


def test_a_handle_built_by_hand_checks_its_keys():
    with pytest.raises(GovernanceError, match="32 bytes"):
        TenantCrypto("acme", version=1, vector_key=b"short").cipher(4)
