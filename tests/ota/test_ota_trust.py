from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from ota.keys import SigningKey
from ota.root import trust_store_from_bytes
from ota.trust import TrustStore
from ota.trust_file import load_trust_store, save_trust_store


def test_trust_store_round_trips_through_a_file(key: SigningKey, tmp_path: Path) -> None:
    other = SigningKey.generate()
    store = TrustStore.from_keys(
        [key.public_key(), other.public_key()], threshold=2, revoked=[other.keyid]
    )
    path = tmp_path / "trust.json"

    save_trust_store(store, path)
    loaded = load_trust_store(path)

    assert loaded == store
    assert loaded.threshold == 2
    assert loaded.revoked == {other.keyid}
    assert [p.name for p in tmp_path.iterdir()] == ["trust.json"]


def test_saving_the_same_store_gives_the_same_file(tmp_path: Path) -> None:
    keys = [SigningKey.generate().public_key() for _ in range(3)]
    store = TrustStore.from_keys(keys, revoked=[k.keyid for k in keys])

    save_trust_store(store, tmp_path / "one.json")
    save_trust_store(store, tmp_path / "two.json")

    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()


def test_trusted_key_is_none_for_unknown_and_revoked(key: SigningKey) -> None:
    store = TrustStore.from_keys([key.public_key()])

    assert store.trusted_key(key.keyid) == key.public_key()
    assert store.trusted_key(SigningKey.generate().keyid) is None
    assert store.revoke(key.keyid).trusted_key(key.keyid) is None
    assert store.trusted_key(key.keyid) is not None, "revoke returns a copy"


def test_keyid_that_is_not_the_keys_digest_is_refused(key: SigningKey) -> None:
    other = SigningKey.generate()

    with pytest.raises(ValidationError, match="does not match"):
        TrustStore(release_keys={other.keyid: key.public_key().to_hex()})


def test_threshold_above_key_count_is_refused(key: SigningKey) -> None:
    with pytest.raises(ValidationError, match="threshold"):
        TrustStore.from_keys([key.public_key()], threshold=2)
    with pytest.raises(ValidationError):
        TrustStore.from_keys([key.public_key()], threshold=0)


def test_unknown_fields_in_a_trust_file_are_refused(key: SigningKey, tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    save_trust_store(TrustStore.from_keys([key.public_key()]), path)
    data = json.loads(path.read_text())
    data["root_keys"] = {}
    path.write_text(json.dumps(data))

    with pytest.raises(ValidationError, match="root_keys"):
        load_trust_store(path)


def test_store_json_is_what_the_file_holds_and_reads_back(key: SigningKey, tmp_path: Path) -> None:
    store = TrustStore.from_keys([key.public_key()])
    path = tmp_path / "trust.json"

    save_trust_store(store, path)

    assert path.read_bytes() == store.to_json()
    assert trust_store_from_bytes(store.to_json()) == store
