"""Attacks on GPT-2's released TensorFlow checkpoint as weights.py and tf_bundle.py read it (issue 26): crafted
indexes that would build quadratic keys or read one byte range many times, links to devices, FIFOs, a `checkpoint`
file naming another folder, hparams.json of every bad type, a dtype flipped under a valid CRC, and random damage.
Every reader entry point may let only untrusted.BadFile escape, with one line naming the file, in bounded memory and
time."""
import contextlib
import json
import os
import shutil
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import download_model
import model_gpt2
import tf_bundle
import untrusted
import weights
from tests.helpers import assert_refused, write_tiny_gpt2

INDEX = 'model.ckpt.index'
DATA = 'model.ckpt.data-00000-of-00001'
FILES = ('hparams.json', 'checkpoint', INDEX, DATA)
SIZE = '124M'  # made the tiny release's size by the tiny_124m fixture
MEMORY = 256 << 20
v = tf_bundle._varint_bytes


@pytest.fixture(scope='module')
def release(tmp_path_factory):
    """A valid released GPT-2 folder: the real vocabulary's 50257 rows, 1024 positions, tiny blocks."""
    return write_tiny_gpt2(tmp_path_factory.mktemp('release') / 'gpt2', n_ctx=1024)


@pytest.fixture(scope='module')
def original(release):
    """The release as read before any attack."""
    return weights.read_tf_gpt2(str(release))


@contextlib.contextmanager
def tiny_size():
    """Make the size '124M' the tiny one of the release while inside, for gpt2_file_problem."""
    saved = model_gpt2.GPT2_SIZES[SIZE]
    model_gpt2.GPT2_SIZES[SIZE] = (32, 4, 2)
    try:
        yield
    finally:
        model_gpt2.GPT2_SIZES[SIZE] = saved


@pytest.fixture
def tiny_124m():
    """tiny_size for the whole test."""
    with tiny_size():
        yield


def copy_release(release, dest):
    """Copy the release's files to the new folder dest; return it."""
    dest.mkdir(parents=True)
    for name in FILES:
        shutil.copyfile(release / name, dest / name)
    return dest


def refused(fn, *args, names):
    """Call fn(*args) in this process; require one BadFile line naming names; return the message."""
    with pytest.raises(untrusted.BadFile) as info:
        fn(*args)
    message = str(info.value)
    assert str(names) in message and '\n' not in message, message
    return message


def same_checkpoint(a, b):
    """Return whether two Checkpoints hold the same arrays (dtype, shape, bytes) and config."""
    pairs = [(a.tokens, b.tokens), (a.positions, b.positions), (a.special, b.special)]
    if a.blocks.keys() != b.blocks.keys() or a.config != b.config:
        return False
    pairs += [(a.blocks[k], b.blocks[k]) for k in a.blocks]
    return all(x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes() for x, y in pairs)


def index_items(folder):
    """Return the decoded (key, value) items of a folder's index."""
    return tf_bundle._table_items(memoryview((folder / INDEX).read_bytes()))


def write_items(folder, items):
    """Write items as the folder's index, every block CRC32C valid."""
    (folder / INDEX).write_bytes(tf_bundle._build_table(items))


def changed_entry(key, value, **changes):
    """Return an entry's serialized BundleEntryProto with fields changed (dtype_enum, shape, offset, size, ...)."""
    entry = tf_bundle._parse_entry(key, value, 1)
    enum = next(e for e, (name, _) in tf_bundle._DTYPES.items() if name == entry.dtype)
    fields = dict(dtype_enum=enum, shape=entry.shape, shard=entry.shard, offset=entry.offset, size=entry.size,
                  masked_crc=entry.crc32c)
    fields.update(changes)
    return tf_bundle._entry_proto(**fields)


def raw_table(block_entries, separator=b'\xff' * 8):
    """Return a table whose one data block holds block_entries (raw encoded entries), valid CRCs and footer."""
    data = block_entries + struct.pack('<II', 0, 1)
    out = bytearray(tf_bundle._block_with_trailer(data))
    meta = struct.pack('<II', 0, 1)
    meta_handle = (len(out), len(meta))
    out += tf_bundle._block_with_trailer(meta)
    index = tf_bundle._BlockBuilder(1)
    index.add(separator, tf_bundle._encode_handle(0, len(data)))
    contents = index.finish()
    index_handle = (len(out), len(contents))
    out += tf_bundle._block_with_trailer(contents)
    handles = tf_bundle._encode_handle(*meta_handle) + tf_bundle._encode_handle(*index_handle)
    return bytes(out + handles.ljust(tf_bundle.HANDLE_AREA_SIZE, b'\0') + struct.pack('<Q', tf_bundle.TABLE_MAGIC))


def header_entry():
    """Return the raw encoded header entry (key '')."""
    header = tf_bundle._header_proto()
    return v(0) + v(0) + v(len(header)) + header


# --- the index: quadratic keys, many entries on one byte range ------------------------------------------------

def growing_keys_index(size):
    """An index of about size bytes whose every key shares the whole previous key and adds one byte: rebuilding
    them all would take about (size / 5)**2 / 2 bytes."""
    parts, length, total = [header_entry()], 0, 0
    while total < size:
        part = v(length) + v(1) + v(0) + bytes([65 + length % 26])
        parts.append(part)
        total += len(part)
        length += 1
    return raw_table(b''.join(parts))


def long_keys_index(n_entries, key_length=1000):
    """An index whose keys are each key_length bytes (under the per-key limit), each entry 7 bytes long: rebuilding
    them would take n_entries * key_length bytes, about 140 times the index's size."""
    parts = [header_entry(), v(0) + v(key_length) + v(0) + b'k' * key_length]
    parts += [v(key_length - 3) + v(3) + v(0) + (i + 1).to_bytes(3, 'big') for i in range(n_entries)]
    return raw_table(b''.join(parts))


@pytest.mark.parametrize('index', [lambda: growing_keys_index(224 << 10), lambda: long_keys_index(300_000)],
                         ids=['keys-sharing-the-whole-previous-key', 'keys-adding-up-past-the-index-size'])
def test_prefix_compressed_keys_are_rebuilt_in_memory_bounded_by_the_index(release, tmp_path, index):
    folder = copy_release(release, tmp_path / 'm')
    (folder / INDEX).write_bytes(index())
    message = assert_refused(weights.read_tf_gpt2, str(folder), names=folder / INDEX, memory=MEMORY, seconds=60)
    assert 'key' in message
    assert_refused(tf_bundle.tf_checkpoint_entries, str(folder / 'model.ckpt'), names=folder / INDEX,
                   memory=MEMORY, seconds=60)


def test_a_key_longer_than_any_name_is_refused_before_it_is_built():
    block = header_entry() + v(0) + v(tf_bundle.MAX_KEY_BYTES + 1) + v(0) + b'k' * (tf_bundle.MAX_KEY_BYTES + 1)
    with pytest.raises(tf_bundle._Problem, match=f'{tf_bundle.MAX_KEY_BYTES + 1}-byte key'):
        tf_bundle._table_items(memoryview(raw_table(block)))


def test_an_index_larger_than_any_is_refused_before_it_is_read(release, tmp_path):
    folder = copy_release(release, tmp_path / 'm')
    with open(folder / INDEX, 'r+b') as f:
        f.truncate(tf_bundle.INDEX_MAX_BYTES + 1)  # sparse: nothing to read would fit the limit
    assert 'bytes at most' in refused(weights.read_tf_gpt2, str(folder), names=folder / INDEX)


def shared_range_items(folder, count, prefix='opt/slot'):
    """The folder's index items plus count entries named prefix{i} all pointing at model/wte's bytes."""
    items = index_items(folder)
    wte = dict(items)[b'model/wte']
    extra = [(f'{prefix}{i:04d}'.encode(), wte) for i in range(count)]
    return sorted(items + extra)


@pytest.mark.parametrize('prefix', ['opt/slot', 'model/h0/slot'])
def test_entries_sharing_one_byte_range_are_refused_before_any_is_read(release, tmp_path, prefix):
    folder = copy_release(release, tmp_path / 'm')
    write_items(folder, shared_range_items(folder, 250, prefix))  # 250 x wte's 6.4 MB: 1.6 GB if each were read
    message = assert_refused(weights.read_tf_gpt2, str(folder), names=folder / INDEX, memory=MEMORY, seconds=60)
    assert ('overlap' if prefix == 'opt/slot' else 'unexpected') in message  # model/h0/... is a GPT-2 name
    assert 'overlap' in assert_refused(tf_bundle.read_tf_checkpoint, str(folder / 'model.ckpt'), names=folder / INDEX,
                                       memory=MEMORY, seconds=60)
    assert 'overlap' in refused(tf_bundle.verify_tf_checkpoint, str(folder / 'model.ckpt'), names=folder / INDEX)


def test_variables_the_model_does_not_use_are_listed_and_their_data_never_read(release, tmp_path, original):
    folder = copy_release(release, tmp_path / 'm')
    arrays = tf_bundle.read_tf_checkpoint(str(folder / 'model.ckpt'))
    # Adam's slots of every variable (as a fine-tuning run saves them; int64 here: their dtype does not matter)
    slots = {'model/wte/Adam': np.ones(10, np.float32), 'model/h0/attn/c_attn/w/Adam': np.ones(3, np.int64),
             'model/h1/mlp/c_fc/b/Adam_1': np.ones(3, np.float32), 'model/ln_f/g/Adam': np.ones(2, np.float32)}
    arrays.update({'global_step': np.array(7, np.int64), 'opt/m': np.ones(1000, np.float32), **slots})
    tf_bundle.write_tf_checkpoint(str(folder / 'model.ckpt'), arrays)
    entries = tf_bundle.tf_checkpoint_entries(str(folder / 'model.ckpt'))
    raw = bytearray((folder / DATA).read_bytes())
    for name in ('global_step', 'opt/m', *slots):  # their bytes fail their CRC32C: reading them would fail
        raw[entries[name].offset] ^= 0xFF
    (folder / DATA).write_bytes(bytes(raw))
    ckpt = weights.read_tf_gpt2(str(folder))
    assert ckpt.ignored == sorted(['global_step', 'opt/m', *slots])
    assert same_checkpoint(ckpt, original)
    refused(tf_bundle.read_tf_checkpoint, str(folder / 'model.ckpt'), names=folder / DATA)  # all read: refused


@pytest.mark.parametrize('name', ['model/h0/attn/c_attn/w/Adam_2', 'model/h0/attn/extra', 'model/ln_f/Adam/x'])
def test_a_model_variable_that_is_no_gpt2_parameter_nor_adam_slot_is_refused(release, tmp_path, name):
    folder = copy_release(release, tmp_path / 'm')
    arrays = tf_bundle.read_tf_checkpoint(str(folder / 'model.ckpt'))
    arrays[name] = np.ones(3, np.float32)
    tf_bundle.write_tf_checkpoint(str(folder / 'model.ckpt'), arrays)
    message = refused(weights.read_tf_gpt2, str(folder), names=folder / INDEX)
    assert 'unexpected' in message and name in message, message


def test_sizes_in_the_index_are_checked_against_the_disk_before_anything_is_allocated(release, tmp_path):
    folder = copy_release(release, tmp_path / 'm')
    items = [(k, changed_entry(k, val, shape=(1 << 30, 32), size=1 << 37) if k == b'model/wte' else val)
             for k, val in index_items(folder)]
    write_items(folder, items)
    message = assert_refused(tf_bundle.read_tf_checkpoint, str(folder / 'model.ckpt'), names=folder / DATA,
                             memory=MEMORY, seconds=60)
    assert 'truncated' in message


# --- what is not a regular file inside the folder -------------------------------------------------------------

@pytest.mark.parametrize('name', [INDEX, DATA])
def test_a_link_to_dev_zero_is_refused_at_once(release, tmp_path, name):
    folder = copy_release(release, tmp_path / 'm')
    (folder / name).unlink()
    os.symlink('/dev/zero', folder / name)
    assert_refused(weights.read_tf_gpt2, str(folder), names=folder / name, memory=MEMORY, seconds=20)


@pytest.mark.parametrize('name', FILES)
def test_a_fifo_in_place_of_a_file_is_refused_without_waiting(release, tmp_path, name):
    folder = copy_release(release, tmp_path / 'm')
    (folder / name).unlink()
    os.mkfifo(folder / name)
    assert_refused(weights.read_tf_gpt2, str(folder), names=folder / name, memory=MEMORY, seconds=20)


# --- the `checkpoint` file naming a path outside its folder ---------------------------------------------------

def state_text(path, all_path=None):
    return f'model_checkpoint_path: "{path}"\nall_model_checkpoint_paths: "{all_path or path}"\n'


@pytest.mark.parametrize('case', ['parent', 'absolute', 'link', 'all-paths', 'nul'])
def test_a_checkpoint_file_naming_another_folder_is_refused(release, tmp_path, case, tiny_124m):
    victim = copy_release(release, tmp_path / 'victim')
    folder = tmp_path / 'm'
    folder.mkdir()
    shutil.copyfile(release / 'hparams.json', folder / 'hparams.json')
    texts = {'parent': (state_text('../victim/model.ckpt'), state_text('../nowhere/model.ckpt')),
             'absolute': (state_text(victim / 'model.ckpt'), state_text(tmp_path / 'nowhere' / 'model.ckpt')),
             'link': (state_text('victimlink/model.ckpt'), state_text('nowherelink/model.ckpt')),
             'all-paths': (state_text('model.ckpt', '../victim/model.ckpt'),
                           state_text('model.ckpt', '../nowhere/model.ckpt')),
             'nul': (state_text('model\\000.ckpt'), state_text('other\\000.ckpt'))}
    os.symlink(victim, folder / 'victimlink')
    os.symlink(tmp_path / 'nowhere', folder / 'nowherelink')
    if case == 'all-paths':  # the folder's own checkpoint is there: only the other path is wrong
        for name in (INDEX, DATA):
            shutil.copyfile(release / name, folder / name)
    messages = []
    for text in texts[case]:  # an outside path that exists, then one that does not
        (folder / 'checkpoint').write_text(text)
        messages.append(refused(weights.read_tf_gpt2, str(folder), names=folder / 'checkpoint'))
        kind, what = download_model.gpt2_file_problem(str(folder), 'checkpoint', SIZE)
        assert kind is not None and str(folder / 'checkpoint') in what
    names = [('victim', 'nowhere'), (str(victim), str(tmp_path / 'nowhere')), ('victim', 'nowhere'), ('victim', 'nowhere'),
             ('model\\x00.ckpt', 'other\\x00.ckpt')][['parent', 'absolute', 'link', 'all-paths', 'nul'].index(case)]
    assert messages[0].replace(*names) == messages[1]  # nothing tells whether the outside path exists


def test_the_released_files_verify_and_a_checkpoint_file_hiding_its_path_in_a_comment_does_not(release, tmp_path,
                                                                                              tiny_124m):
    folder = copy_release(release, tmp_path / 'm')
    for name in FILES:
        assert download_model.gpt2_file_problem(str(folder), name, SIZE) == (None, None), name
    (folder / 'checkpoint').write_text('model_checkpoint_path: "other.ckpt"\n# model_checkpoint_path: "model.ckpt"\n')
    kind, what = download_model.gpt2_file_problem(str(folder), 'checkpoint', SIZE)
    assert kind == 'content' and 'model.ckpt' in what


# --- the dtype of a variable, under a valid CRC ---------------------------------------------------------------

@pytest.mark.parametrize('enum', [3, 22, 14], ids=['int32', 'uint32', 'bfloat16'])
def test_a_dtype_flipped_under_valid_crcs_is_refused_naming_the_variable(release, tmp_path, tiny_124m, enum):
    folder = copy_release(release, tmp_path / 'm')
    name = 'model/ln_f/g'
    items = [(k, changed_entry(k, val, dtype_enum=enum, **({'shape': (64,)} if enum == 14 else {})) if k == name.encode()
              else val) for k, val in index_items(folder)]
    write_items(folder, items)
    prefix = str(folder / 'model.ckpt')
    assert tf_bundle.tf_checkpoint_entries(prefix)[name].dtype != 'float32'
    tf_bundle.read_tf_checkpoint(prefix)  # every CRC is valid: only the dtype is off
    message = refused(weights.read_tf_gpt2, str(folder), names=folder / INDEX)
    assert name in message and 'float32' in message
    refused(tf_bundle.verify_tf_checkpoint, prefix, None, 1 << 24, 'float32', names=name)
    kind, what = download_model.gpt2_file_problem(str(folder), INDEX, SIZE)
    assert kind == 'content' and name in what
    kind, what = download_model.gpt2_file_problem(str(folder), DATA, SIZE)
    assert kind == 'corrupt' and name in what


# --- hparams.json ---------------------------------------------------------------------------------------------

HPARAMS = dict(n_vocab=50257, n_ctx=1024, n_embd=32, n_head=4, n_layer=2)
BAD_FIELDS = [('n_layer', 2147483648), ('n_layer', 1e8), ('n_layer', True), ('n_layer', '12'), ('n_layer', None),
              ('n_layer', 0), ('n_layer', -2), ('n_layer', 2.0), ('n_layer', [2]), ('n_layer', {'n': 2}),
              ('n_vocab', 1 << 40), ('n_ctx', False), ('n_embd', 32.5), ('n_head', 0), ('n_head', 5),
              ('n_embd', 10 ** 400)]


@pytest.mark.parametrize('field, value', BAD_FIELDS)
def test_every_bad_hparams_field_is_refused_naming_the_file(release, tmp_path, field, value, tiny_124m):
    folder = copy_release(release, tmp_path / 'm')
    hparams = dict(HPARAMS, **{field: value})
    if value is None:
        del hparams[field]
    (folder / 'hparams.json').write_text(json.dumps(hparams))
    message = refused(weights.read_tf_gpt2, str(folder), names=folder / 'hparams.json')
    assert field in message
    kind, what = download_model.gpt2_file_problem(str(folder), 'hparams.json', SIZE)
    assert kind == 'corrupt' and field in what


@pytest.mark.parametrize('text', ['{"n_vocab": NaN}', '{"n_layer": Infinity}', '[' * 100_000 + ']' * 100_000,
                                  '[2, 4]', '{"n_layer": 2', '\udcff', ' ' * 70_000])
def test_hparams_json_that_is_no_object_of_numbers_is_refused(release, tmp_path, text):
    folder = copy_release(release, tmp_path / 'm')
    (folder / 'hparams.json').write_bytes(text.encode('utf-8', 'surrogateescape'))
    refused(weights.read_tf_gpt2, str(folder), names=folder / 'hparams.json')


def test_a_huge_n_layer_is_refused_at_once(release, tmp_path):
    folder = copy_release(release, tmp_path / 'm')
    (folder / 'hparams.json').write_text(json.dumps(dict(HPARAMS, n_layer=2147483648)))
    assert_refused(weights.read_tf_gpt2, str(folder), names=folder / 'hparams.json', memory=MEMORY, seconds=20)


def test_n_layer_is_checked_against_the_blocks_of_the_index_before_any_shape_is_built(release, tmp_path,
                                                                                        monkeypatch):
    folder = copy_release(release, tmp_path / 'm')
    (folder / 'hparams.json').write_text(json.dumps(dict(HPARAMS, n_layer=1024)))

    def no_shapes(hparams):
        raise AssertionError('shapes built before n_layer was checked against the index')
    monkeypatch.setattr(weights, 'gpt2_tensor_shapes', no_shapes)
    assert 'n_layer=1024' in refused(weights.read_tf_gpt2, str(folder), names=folder / INDEX)


# --- shapes and paths that would make a plain ValueError ------------------------------------------------------

def test_a_shape_of_more_dimensions_than_an_array_can_have_is_refused(release, tmp_path):
    folder = copy_release(release, tmp_path / 'm')
    items = [(k, changed_entry(k, val, shape=(1,) * 65 + (32,)) if k == b'model/ln_f/g' else val)
             for k, val in index_items(folder)]
    write_items(folder, items)
    assert 'dimensions' in refused(weights.read_tf_gpt2, str(folder), names=folder / INDEX)
    refused(tf_bundle.read_tf_checkpoint, str(folder / 'model.ckpt'), names=folder / INDEX)


def test_a_conv_weight_whose_first_dimension_is_not_one_is_refused_before_reshaping(release, tmp_path):
    folder = copy_release(release, tmp_path / 'm')
    name = b'model/h0/attn/c_attn/w'  # [1, 32, 96] stored as [2, 16, 96]: the same bytes, a valid CRC
    items = [(k, changed_entry(k, val, shape=(2, 16, 96)) if k == name else val) for k, val in index_items(folder)]
    write_items(folder, items)
    message = refused(weights.read_tf_gpt2, str(folder), names=folder / INDEX)
    assert 'model/h0/attn/c_attn/w' in message and '(2, 16, 96)' in message


def test_a_nul_byte_in_a_path_is_refused(release, tmp_path, tiny_124m):
    with pytest.raises(untrusted.BadFile, match='NUL'):
        weights.read_tf_gpt2(str(tmp_path / 'a\0b'))
    with pytest.raises(untrusted.BadFile, match='NUL'):
        tf_bundle.read_tf_checkpoint(str(tmp_path / 'a\0b'))
    with pytest.raises(untrusted.BadFile, match='NUL'):
        tf_bundle.tf_checkpoint_entries(str(tmp_path / 'a\0b'))
    assert download_model.gpt2_file_problem(str(tmp_path / 'a\0b'), INDEX, SIZE)[0] is not None
    assert download_model.gpt2_file_problem(str(release), INDEX, SIZE, str(tmp_path / 'a\0b'))[0] is not None


# --- random damage --------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def victim(release, tmp_path_factory):
    """A module-wide copy of the release for the hypothesis tests, which restore what they change."""
    return copy_release(release, tmp_path_factory.mktemp('fuzz') / 'm')


def recrc_data_block(index, damaged):
    """Give the first data block of damaged (laid out as index) its valid CRC again."""
    _, index_handle = tf_bundle._parse_footer(index)
    block = tf_bundle._read_block(memoryview(index), index_handle, len(index), 'index block')
    (_, encoded), = tf_bundle._block_entries(block, 'index block')
    handle = tf_bundle._decode_handle(encoded, 'data block')
    end = handle.offset + handle.size
    damaged[end + 1:end + 5] = struct.pack('<I', tf_bundle.mask_crc(tf_bundle.crc32c(bytes(damaged[:end + 1]))))


DAMAGE = settings(max_examples=60, deadline=None)


@DAMAGE
@given(name=st.sampled_from([INDEX, INDEX, DATA]), cut=st.booleans(), where=st.floats(0, 1, exclude_max=True),
       mask=st.integers(1, 255), recrc=st.booleans(), tiny=st.booleans())
def test_random_damage_lets_only_bad_file_escape(victim, original, name, cut, where, mask, recrc, tiny):
    path = victim / name
    good = path.read_bytes()
    span = len(good) if name == INDEX or not tiny else 4096  # the data file's first bytes: wte's first rows
    position = int(where * span)
    if cut:
        damaged = bytearray(good[:position])
    else:
        damaged = bytearray(good)
        damaged[position] ^= mask
        if name == INDEX and recrc:
            recrc_data_block(good, damaged)  # past the block CRC: the decoder's checks must catch it
    path.write_bytes(bytes(damaged))
    try:
        ckpt = None
        try:
            ckpt = weights.read_tf_gpt2(str(victim))
        except untrusted.BadFile as err:
            assert '\n' not in str(err) and str(victim) in str(err), str(err)
        else:
            assert same_checkpoint(ckpt, original)
        with tiny_size():
            problems = {file: download_model.gpt2_file_problem(str(victim), file, SIZE) for file in FILES}  # never raises
        if ckpt is not None:  # what loads as the original also verifies
            assert all(problem == (None, None) for problem in problems.values()), problems
        for kind, what in problems.values():
            assert (kind is None) == (what is None) and '\n' not in (what or '')
    finally:
        path.write_bytes(good)
