import hashlib
import os
import random

import pytest

from ota.transfer import MAX_CHUNKS, BadChunk, ChunkAssembler, Offer, TransferError, chunk_digests


def _offer(data: bytes, chunk_size: int) -> Offer:
    return Offer(
        digest=hashlib.sha256(data).hexdigest(),
        size=len(data),
        chunk_size=chunk_size,
        chunks=-(-len(data) // chunk_size),
    )


def _chunks(data: bytes, chunk_size: int):
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]


def test_chunks_in_any_order_with_duplicates_assemble_the_exact_bytes(tmp_path):
    data = os.urandom(10_000)
    offer = _offer(data, 1024)
    assembler = ChunkAssembler(tmp_path, offer)
    order = list(enumerate(_chunks(data, 1024))) * 2
    random.Random(7).shuffle(order)
    for index, chunk in order:
        assembler.add(index, offer.chunks, chunk)
    assert assembler.complete
    assert assembler.finish().read_bytes() == data


def test_missing_ranges_name_exactly_the_gaps(tmp_path):
    data = os.urandom(10 * 100)
    offer = _offer(data, 100)
    assembler = ChunkAssembler(tmp_path, offer)
    for index in (0, 1, 4, 9):
        assembler.add(index, 10, _chunks(data, 100)[index])
    assert assembler.missing_ranges() == [(2, 3), (5, 8)]


def test_progress_survives_a_restart_and_only_missing_chunks_are_needed(tmp_path):
    data = os.urandom(5000)
    offer = _offer(data, 1000)
    first = ChunkAssembler(tmp_path, offer)
    for index in (0, 2, 4):
        first.add(index, 5, _chunks(data, 1000)[index])
    first.save_progress()
    second = ChunkAssembler(tmp_path, offer)
    assert second.missing_ranges() == [(1, 1), (3, 3)]
    for index in (1, 3):
        second.add(index, 5, _chunks(data, 1000)[index])
    assert second.finish().read_bytes() == data


def test_wrong_digest_is_refused_and_forgotten(tmp_path):
    data = os.urandom(3000)
    offer = Offer(digest="0" * 64, size=3000, chunk_size=1000, chunks=3)
    assembler = ChunkAssembler(tmp_path, offer)
    for index, chunk in enumerate(_chunks(data, 1000)):
        assembler.add(index, 3, chunk)
    with pytest.raises(TransferError):
        assembler.finish()
    assert not assembler.part_path.exists()
    assert not assembler.final_path.exists()
    assert assembler.missing_ranges() == [(0, 2)]


@pytest.mark.parametrize(
    "index,total,size", [(3, 3, 1000), (0, 4, 1000), (0, 3, 999), (2, 3, 1000)]
)
def test_chunks_that_do_not_fit_the_offer_are_refused(tmp_path, index, total, size):
    offer = Offer(digest="0" * 64, size=2500, chunk_size=1000, chunks=3)
    with pytest.raises(TransferError):
        ChunkAssembler(tmp_path, offer).add(index, total, b"x" * size)


def test_offer_that_does_not_add_up_is_refused():
    with pytest.raises(TransferError):
        Offer(digest="0" * 64, size=2500, chunk_size=1000, chunks=2)


def test_chunk_digests_cut_the_file_as_the_offer_does(tmp_path):
    data = os.urandom(2500)
    path = tmp_path / "b"
    path.write_bytes(data)
    digests = chunk_digests(path, 1000)
    assert digests == tuple(hashlib.sha256(c).hexdigest() for c in _chunks(data, 1000))


def test_a_chunk_that_fails_its_digest_is_dropped_alone_and_can_come_again(tmp_path):
    data = os.urandom(3000)
    source = tmp_path / "src"
    source.write_bytes(data)
    plain = _offer(data, 1000)
    offer = Offer(plain.digest, 3000, 1000, 3, chunk_digests(source, 1000))
    assembler = ChunkAssembler(tmp_path / "dl", offer)
    parts = _chunks(data, 1000)
    assembler.add(0, 3, parts[0])
    with pytest.raises(BadChunk):
        assembler.add(1, 3, os.urandom(1000))
    # nothing of it was written, and the good chunk stays
    assert assembler.missing_ranges() == [(1, 2)]
    assert assembler.part_path.read_bytes()[1000:2000] in (b"", b"\0" * 1000)
    assert assembler.add(1, 3, parts[1]) and assembler.add(2, 3, parts[2])
    assert assembler.finish().read_bytes() == data


def test_offer_whose_digest_list_does_not_match_its_chunks_is_refused():
    with pytest.raises(TransferError):
        Offer(digest="0" * 64, size=2500, chunk_size=1000, chunks=3, chunk_digests=("0" * 64,))


def test_offer_of_more_chunks_than_the_map_may_hold_is_refused():
    size = (MAX_CHUNKS + 1) * 16
    with pytest.raises(TransferError):
        Offer(digest="0" * 64, size=size, chunk_size=16, chunks=MAX_CHUNKS + 1)
