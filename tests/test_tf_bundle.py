"""Tests of tf_bundle: the real TensorFlow fixture, the writer, and corrupt inputs."""

import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tf_bundle
import untrusted
from tf_bundle import (latest_checkpoint, read_tf_checkpoint, tf_checkpoint_entries,
                       write_tf_checkpoint)

FIXTURES = Path(__file__).resolve().parent / 'fixtures' / 'gpt2'
FIXTURE_DIR = str(FIXTURES / 'ckpt_small')  # written by TensorFlow's tf.train.Saver (tests/fixtures/make_gpt2_fixtures.py)
NPZ = str(FIXTURES / 'tf_gpt2_small.npz')
DATA = 'model.ckpt.data-00000-of-00001'
INDEX = 'model.ckpt.index'

FUZZ = settings(max_examples=300, deadline=None)


# A reader refuses a file with the project's BadFile (MissingFile for a missing one); the writer refuses bad arguments
# with a plain ValueError.
READER_ERRORS = {ValueError: untrusted.BadFile, FileNotFoundError: untrusted.MissingFile}


def expect_error(exc_type, path, fn, *args, reader=True):
    """Call fn(*args); require exactly exc_type (a reader's: BadFile for ValueError, MissingFile for
    FileNotFoundError) with a one-line message naming path."""
    exc_type = READER_ERRORS[exc_type] if reader else exc_type
    with pytest.raises(Exception) as info:
        fn(*args)
    assert type(info.value) is exc_type, f'{type(info.value).__name__}: {info.value}'
    message = str(info.value)
    assert str(path) in message, message
    assert '\n' not in message, message
    return message


@pytest.fixture(scope='module')
def weights():
    """The fixture's weights from the npz, under their checkpoint names."""
    with np.load(NPZ) as npz:
        return {key: npz[key] for key in npz.files if key.startswith('model/')}


def copy_fixture(directory):
    """Copy the TF checkpoint into a writable directory; return its prefix."""
    shutil.copytree(FIXTURE_DIR, directory)
    for name in os.listdir(directory):
        os.chmod(os.path.join(directory, name), 0o644)
    return os.path.join(directory, 'model.ckpt')


@pytest.fixture
def ckpt(tmp_path):
    """A private writable copy of the TF checkpoint; returns its prefix."""
    return copy_fixture(tmp_path / 'ckpt')


@pytest.fixture(scope='module')
def shared_ckpt(tmp_path_factory):
    """A module-wide writable copy for hypothesis tests, which restore what they change."""
    return copy_fixture(tmp_path_factory.mktemp('shared') / 'ckpt')


def read_bytes(path):
    """Return a file's bytes."""
    with open(path, 'rb') as handle:
        return handle.read()


def write_bytes(path, data):
    """Replace a file's bytes."""
    with open(path, 'wb') as handle:
        handle.write(data)


# ------------------------------------------------------------------ the real fixture


def test_reads_every_tensor_of_the_tf_checkpoint_exactly(weights):
    arrays = read_tf_checkpoint(os.path.join(FIXTURE_DIR, 'model.ckpt'))
    assert sorted(arrays) == sorted(weights)
    for name, expected in weights.items():
        got = arrays[name]
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        assert got.tobytes() == expected.tobytes(), name
        assert got.flags.c_contiguous and got.flags.writeable


def test_entries_list_names_shapes_dtypes_without_the_data_file(ckpt, weights):
    os.remove(f'{ckpt}.data-00000-of-00001')
    entries = tf_checkpoint_entries(ckpt)
    assert list(entries) == sorted(weights)
    for name, entry in entries.items():
        assert entry.shape == weights[name].shape and entry.dtype == 'float32'
        assert entry.shard == 0 and entry.size == weights[name].nbytes
    expect_error(FileNotFoundError, f'{ckpt}.data-00000-of-00001', read_tf_checkpoint, ckpt)


def test_tf_stores_masked_crcs_and_packs_tensors_in_key_order(weights):
    entries = tf_checkpoint_entries(os.path.join(FIXTURE_DIR, 'model.ckpt'))
    offset = 0
    for name, entry in entries.items():
        assert entry.offset == offset, name
        offset += entry.size
        raw = weights[name].astype('<f4').tobytes()
        assert entry.crc32c == tf_bundle.mask_crc(tf_bundle.crc32c(raw)) != tf_bundle.crc32c(raw)
    assert offset == os.path.getsize(os.path.join(FIXTURE_DIR, DATA))


def test_writer_reproduces_the_tf_files_byte_for_byte(tmp_path, weights):
    write_tf_checkpoint(tmp_path / 'model.ckpt', weights)
    for name in (INDEX, DATA, 'checkpoint'):
        assert read_bytes(tmp_path / name) == read_bytes(os.path.join(FIXTURE_DIR, name)), name


def test_latest_checkpoint_reads_the_checkpoint_file():
    assert latest_checkpoint(FIXTURE_DIR) == os.path.join(FIXTURE_DIR, 'model.ckpt')


# ------------------------------------------------------------------------ round trips


def test_round_trip_of_many_dtypes_and_shapes(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        'f32': rng.standard_normal((3, 4)).astype(np.float32),
        'f16': rng.standard_normal(7).astype(np.float16),
        'f64': rng.standard_normal((2, 1, 3)),
        'i8': np.arange(-5, 5, dtype=np.int8),
        'i16': np.arange(6, dtype=np.int16).reshape(2, 3),
        'i32': np.array([1, -2, 2**31 - 1], dtype=np.int32),
        'i64': np.array([-(2**63), 2**63 - 1], dtype=np.int64),
        'u8': np.arange(256, dtype=np.uint8),
        'u16': np.array([65535], dtype=np.uint16),
        'u32': np.array([2**32 - 1], dtype=np.uint32),
        'u64': np.array([2**64 - 1], dtype=np.uint64),
        'bool': np.array([True, False, True]),
        'c64': np.array([1 + 2j], dtype=np.complex64),
        'c128': np.array([3 - 4j]),
        'scalar': np.float32(2.5),
        'empty': np.zeros((0, 5), np.float32),
        'big_endian': np.arange(4, dtype='>f4'),
        'strided': np.arange(20, dtype=np.int32).reshape(4, 5)[:, ::2],
        'model/h0/attn/c_attn/w': np.ones((1, 4, 12), np.float32),
        'unicode/é': np.ones(2, np.float32),
    }
    write_tf_checkpoint(tmp_path / 'm.ckpt', arrays)
    back = read_tf_checkpoint(tmp_path / 'm.ckpt')
    assert sorted(back) == sorted(arrays)
    for name, array in arrays.items():
        expected = np.asarray(array)
        assert back[name].shape == expected.shape, name
        assert back[name].dtype == expected.dtype.newbyteorder('='), name
        np.testing.assert_array_equal(back[name], expected)
    assert latest_checkpoint(tmp_path) == str(tmp_path / 'm.ckpt')


def test_empty_checkpoint_round_trips(tmp_path):
    write_tf_checkpoint(tmp_path / 'e', {})
    assert read_tf_checkpoint(tmp_path / 'e') == {}


def test_bfloat16_is_returned_widened_to_float32(tmp_path):
    values = np.array([1.0, -2.5, 3.140625, 0.0], np.float32)
    raw = (values.view(np.uint32) >> 16).astype('<u2').view(np.uint8)
    tf_bundle._write_bundle(str(tmp_path / 'b'), [tf_bundle._Record('x', 14, (2, 2), raw)])
    got = read_tf_checkpoint(tmp_path / 'b')['x']
    assert got.dtype == np.float32 and got.shape == (2, 2)
    np.testing.assert_array_equal(got.reshape(-1), values)
    assert tf_checkpoint_entries(tmp_path / 'b')['x'].dtype == 'bfloat16'


def test_many_tensors_make_a_multi_block_index_that_reads_back(tmp_path):
    names = [f'layer{i:05d}/{i * 2654435761 % 2**32:08x}/weight_matrix' for i in range(9000)]
    arrays = {name: np.full(2, i, np.int32) for i, name in enumerate(names)}
    write_tf_checkpoint(tmp_path / 'many', arrays, write_state=False)
    buf = read_bytes(tmp_path / 'many.index')
    _, index_handle = tf_bundle._parse_footer(buf)
    index = tf_bundle._read_block(memoryview(buf), index_handle, len(buf), 'index')
    assert len(tf_bundle._block_entries(index, 'index')) >= 2
    back = read_tf_checkpoint(tmp_path / 'many')
    assert all(back[name][0] == i for i, name in enumerate(names))
    assert not os.path.exists(tmp_path / 'checkpoint')


def test_small_blocks_table_round_trip_and_every_flip_is_caught():
    items = [(b'', b'header')] + [(f"key/{i:03d}/{'x' * (i % 7)}".encode(), bytes([i]) * (i % 5))
                                  for i in range(60)]
    table = tf_bundle._build_table(items, block_size=128)
    assert tf_bundle._table_items(memoryview(table)) == items
    _, index_handle = tf_bundle._parse_footer(table)
    index = tf_bundle._read_block(memoryview(table), index_handle, len(table), 'index')
    assert len(tf_bundle._block_entries(index, 'index')) > 3
    for i in range(len(table)):
        damaged = bytearray(table)
        damaged[i] ^= 0x20
        with pytest.raises(tf_bundle._Problem):
            tf_bundle._table_items(memoryview(damaged))


def test_separators_follow_leveldb():
    assert tf_bundle._shortest_separator(b'abcd', b'abzz') == b'abd'
    assert tf_bundle._shortest_separator(b'abc', b'abd') == b'abc'
    assert tf_bundle._shortest_separator(b'ab', b'abc') == b'ab'
    assert tf_bundle._shortest_separator(b'a\xff', b'b') == b'a\xff'
    assert tf_bundle._short_successor(b'model/wte') == b'n'
    assert tf_bundle._short_successor(b'\xff\xffa') == b'\xff\xffb'
    assert tf_bundle._short_successor(b'\xff') == b'\xff'


def test_crc32c_matches_the_standard_check_value():
    assert tf_bundle.crc32c(b'123456789') == 0xE3069283
    assert tf_bundle.mask_crc(0) == 0xA282EAD8


def test_writer_rejects_what_a_checkpoint_cannot_hold(tmp_path):
    message = expect_error(ValueError, 'obj', write_tf_checkpoint, tmp_path / 'w',
                           {'obj': np.array([object()])}, reader=False)
    assert 'dtype' in message
    expect_error(ValueError, "''", write_tf_checkpoint, tmp_path / 'w', {'': np.zeros(1)}, reader=False)
    expect_error(ValueError, 's', write_tf_checkpoint, tmp_path / 'w', {'s': np.array(['a'])}, reader=False)
    assert not os.path.exists(tmp_path / 'w.index')


def test_checkpoint_file_escapes_names(tmp_path):
    prefix = tmp_path / 'we"ird\\näme'
    write_tf_checkpoint(prefix, {'a': np.zeros(1, np.float32)})
    text = read_bytes(tmp_path / 'checkpoint').decode('ascii')
    assert '\\"' in text and "\\\\" in text and '\\303\\244' in text
    assert latest_checkpoint(tmp_path) == str(prefix)
    assert list(read_tf_checkpoint(latest_checkpoint(tmp_path))) == ['a']


# ---------------------------------------------------------- hand-made unusual indexes


def write_custom(prefix, items, data=b''):
    """Write an index made of the given (key, value) items and a data file."""
    write_bytes(f'{prefix}.index', tf_bundle._build_table(items))
    write_bytes(f'{prefix}.data-00000-of-00001', data)


def entry_for(data, dtype_enum=1, shape=None, **changes):
    """A BundleEntryProto for data stored at offset 0, with fields overridden."""
    fields = dict(dtype_enum=dtype_enum, shape=(len(data) // 4,) if shape is None else shape,
                  shard=0, offset=0, size=len(data),
                  masked_crc=tf_bundle.mask_crc(tf_bundle.crc32c(data)))
    fields.update(changes)
    return tf_bundle._entry_proto(**fields)


def test_hand_made_index_reads(tmp_path):
    data = np.arange(3, dtype='<f4').tobytes()
    write_custom(tmp_path / 'h', [(b'', tf_bundle._header_proto()), (b'v', entry_for(data))], data)
    np.testing.assert_array_equal(read_tf_checkpoint(tmp_path / 'h')['v'], [0, 1, 2])


@pytest.mark.parametrize('header, entry, words', [
    (dict(endianness=1), {}, 'big-endian'),
    (dict(endianness=5), {}, 'endianness'),
    (dict(num_shards=0), {}, '0 data shards'),
    (dict(min_consumer=7), {}, 'newer'),
    ({}, dict(dtype_enum=7), "'v' has dtype string"),
    ({}, dict(dtype_enum=20), "'v' has dtype resource"),
    ({}, dict(size=8), 'size 8 bytes, expected 12'),
    ({}, dict(shape=(4,)), 'expected 16'),
    ({}, dict(shard=1), 'shard 1'),
])
def test_unsupported_or_inconsistent_entries_are_clear_errors(tmp_path, header, entry, words):
    data = np.arange(3, dtype='<f4').tobytes()
    items = [(b'', tf_bundle._header_proto(**header)), (b'v', entry_for(data, **entry))]
    write_custom(tmp_path / 'h', items, data)
    message = expect_error(ValueError, tmp_path / 'h.index', read_tf_checkpoint, tmp_path / 'h')
    assert words in message


def test_partitioned_variables_are_a_clear_error(tmp_path):
    data = np.arange(3, dtype='<f4').tobytes()
    sliced = entry_for(data) + b'\x3a\x00'  # field 7 (slices), one empty TensorSliceProto
    write_custom(tmp_path / 'p', [(b'', tf_bundle._header_proto()), (b'v', sliced)], data)
    message = expect_error(ValueError, tmp_path / 'p.index', read_tf_checkpoint, tmp_path / 'p')
    assert 'partitioned variables are not supported' in message


def test_snappy_compressed_block_is_a_clear_error(tmp_path):
    data = np.arange(3, dtype='<f4').tobytes()
    table = bytearray(tf_bundle._build_table(
        [(b'', tf_bundle._header_proto()), (b'v', entry_for(data))]))
    meta_handle, _ = tf_bundle._parse_footer(table)
    end = meta_handle.offset - 5  # the data block's trailer
    table[end] = 1
    crc = tf_bundle.mask_crc(tf_bundle.crc32c(bytes(table[:end + 1])))
    table[end + 1:end + 5] = struct.pack('<I', crc)
    write_bytes(tmp_path / 's.index', table)
    write_bytes(tmp_path / 's.data-00000-of-00001', data)
    message = expect_error(ValueError, tmp_path / 's.index', read_tf_checkpoint, tmp_path / 's')
    assert 'snappy' in message


def test_missing_header_and_unordered_keys_are_errors(tmp_path):
    data = np.arange(3, dtype='<f4').tobytes()
    write_custom(tmp_path / 'n', [(b'v', entry_for(data))], data)
    assert 'header' in expect_error(ValueError, tmp_path / 'n.index', read_tf_checkpoint,
                                    tmp_path / 'n')
    write_custom(tmp_path / 'o', [(b'', tf_bundle._header_proto()), (b'w', entry_for(data)),
                                  (b'v', entry_for(data))], data)
    assert 'sort' in expect_error(ValueError, tmp_path / 'o.index', read_tf_checkpoint,
                                  tmp_path / 'o')


@pytest.mark.parametrize('content, words', [
    (b'version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 970\n' * 2, 'LFS'),
    (b'<!DOCTYPE html><html><body>Not Found</body></html>' * 3, 'HTML'),
    (b'', '0 bytes'),
])
def test_wrong_files_in_place_of_the_index_are_named(tmp_path, content, words):
    write_bytes(tmp_path / 'x.index', content)
    assert words in expect_error(ValueError, tmp_path / 'x.index', read_tf_checkpoint,
                                 tmp_path / 'x')


# ---------------------------------------------------------------- missing files


def test_missing_index_and_data_are_file_not_found(ckpt, tmp_path):
    os.remove(f'{ckpt}.data-00000-of-00001')
    message = expect_error(FileNotFoundError, f'{ckpt}.data-00000-of-00001',
                           read_tf_checkpoint, ckpt)
    assert '28 tensors' in message
    os.remove(f'{ckpt}.index')
    expect_error(FileNotFoundError, f'{ckpt}.index', read_tf_checkpoint, ckpt)
    expect_error(FileNotFoundError, f'{ckpt}.index', tf_checkpoint_entries, ckpt)


def test_missing_index_messages_guide_the_user(ckpt):
    directory = os.path.dirname(ckpt)
    assert 'directory' in expect_error(FileNotFoundError, directory, read_tf_checkpoint, directory)
    assert 'without its suffix' in expect_error(FileNotFoundError, f'{ckpt}.index',
                                                read_tf_checkpoint, f'{ckpt}.index')
    os.remove(os.path.join(directory, 'checkpoint'))
    expect_error(FileNotFoundError, 'checkpoint', latest_checkpoint, directory)


def test_checkpoint_file_without_a_path_is_a_value_error(tmp_path):
    write_bytes(tmp_path / 'checkpoint', b'garbage\n')
    expect_error(ValueError, tmp_path / 'checkpoint', latest_checkpoint, tmp_path)


# ------------------------------------------------------------------ corrupt index


def test_index_truncated_at_every_length_is_caught(ckpt):
    index = read_bytes(f'{ckpt}.index')
    for length in range(len(index)):
        write_bytes(f'{ckpt}.index', index[:length])
        expect_error(ValueError, f'{ckpt}.index', read_tf_checkpoint, ckpt)


@pytest.mark.parametrize('mask', [0x01, 0x80, 0xFF])
def test_every_flipped_index_byte_is_caught(ckpt, mask):
    index = read_bytes(f'{ckpt}.index')
    for position in range(len(index)):
        damaged = bytearray(index)
        damaged[position] ^= mask
        write_bytes(f'{ckpt}.index', damaged)
        expect_error(ValueError, f'{ckpt}.index', read_tf_checkpoint, ckpt)


def test_index_with_extra_bytes_is_caught(ckpt):
    index = read_bytes(f'{ckpt}.index')
    for extra in (b'\x00', b'\x00' * 48, index[-48:]):
        write_bytes(f'{ckpt}.index', index + extra)
        expect_error(ValueError, f'{ckpt}.index', read_tf_checkpoint, ckpt)
        write_bytes(f'{ckpt}.index', extra + index)
        expect_error(ValueError, f'{ckpt}.index', read_tf_checkpoint, ckpt)


def test_crc_valid_but_damaged_data_block_never_escapes_as_another_error(ckpt):
    """Bit flips inside the data block with its CRC recomputed: success or a clean error."""
    index = read_bytes(f'{ckpt}.index')
    meta_handle, _ = tf_bundle._parse_footer(index)
    end = meta_handle.offset - 5
    outcomes = set()
    for position in range(end):
        for bit in (0, 7):
            damaged = bytearray(index)
            damaged[position] ^= 1 << bit
            crc = tf_bundle.mask_crc(tf_bundle.crc32c(bytes(damaged[:end + 1])))
            damaged[end + 1:end + 5] = struct.pack('<I', crc)
            write_bytes(f'{ckpt}.index', damaged)
            try:
                read_tf_checkpoint(ckpt)
                outcomes.add('read')
            except (ValueError, FileNotFoundError) as exc:
                assert type(exc) in (untrusted.BadFile, untrusted.MissingFile)
                assert '\n' not in str(exc) and ckpt in str(exc)
                outcomes.add(type(exc).__name__)
    assert 'BadFile' in outcomes


@FUZZ
@given(garbage=st.binary(max_size=200))
def test_random_bytes_as_index_are_a_value_error(tmp_path_factory, garbage):
    directory = tmp_path_factory.mktemp('garbage')
    write_bytes(directory / 'g.index', garbage)
    expect_error(ValueError, directory / 'g.index', read_tf_checkpoint, directory / 'g')


# ------------------------------------------------------------------- corrupt data


def test_data_truncated_anywhere_is_caught(ckpt):
    data = read_bytes(f'{ckpt}.data-00000-of-00001')
    cuts = {0, 1, len(data) - 1}
    for entry in tf_checkpoint_entries(ckpt).values():
        cuts |= {entry.offset, entry.offset + 1, entry.offset + entry.size - 1}
    for length in sorted(cut for cut in cuts if 0 <= cut < len(data)):
        write_bytes(f'{ckpt}.data-00000-of-00001', data[:length])
        message = expect_error(ValueError, f'{ckpt}.data-00000-of-00001', read_tf_checkpoint, ckpt)
        assert 'truncated' in message and 'download it again' in message


def test_first_and_last_byte_of_every_tensor_flipped_is_caught(ckpt):
    path = f'{ckpt}.data-00000-of-00001'
    data = read_bytes(path)
    for entry in tf_checkpoint_entries(ckpt).values():
        for position in (entry.offset, entry.offset + entry.size - 1):
            damaged = bytearray(data)
            damaged[position] ^= 0x01
            write_bytes(path, damaged)
            message = expect_error(ValueError, path, read_tf_checkpoint, ckpt)
            assert entry.name in message and 'CRC32C' in message


@FUZZ
@given(fraction=st.floats(0, 1, exclude_max=True), mask=st.integers(1, 255))
def test_any_flipped_data_byte_is_caught(shared_ckpt, fraction, mask):
    path = f'{shared_ckpt}.data-00000-of-00001'
    data = read_bytes(path)
    position = int(fraction * len(data))
    damaged = bytearray(data)
    damaged[position] ^= mask
    write_bytes(path, damaged)
    try:
        message = expect_error(ValueError, path, read_tf_checkpoint, shared_ckpt)
        assert 'CRC32C' in message
    finally:
        write_bytes(path, data)


@FUZZ
@given(fraction=st.floats(0, 1, exclude_max=True))
def test_data_truncated_at_random_lengths_is_caught(shared_ckpt, fraction):
    path = f'{shared_ckpt}.data-00000-of-00001'
    data = read_bytes(path)
    write_bytes(path, data[:int(fraction * len(data))])
    try:
        assert 'truncated' in expect_error(ValueError, path, read_tf_checkpoint, shared_ckpt)
    finally:
        write_bytes(path, data)
