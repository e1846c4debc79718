"""untrusted.py: the error type, regular files only, contained paths, bounded reads, JSON limits, typed fields."""
import os
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

import untrusted
from tests.helpers import assert_refused, run_limited
from untrusted import BadFile, MissingFile


def test_bad_file_is_one_line_value_error_and_missing_file_also_file_not_found():
    err = BadFile('a/b: first line\nsecond\tline', 'a/b')
    assert isinstance(err, ValueError) and str(err) == 'a/b: first line second line' and err.path == 'a/b'
    missing = MissingFile('a/c is missing', 'a/c')
    assert isinstance(missing, FileNotFoundError) and isinstance(missing, BadFile) and str(missing) == 'a/c is missing'
    assert str(pickle.loads(pickle.dumps(missing))) == 'a/c is missing'  # crosses process boundaries intact


@pytest.mark.parametrize('error', [TypeError('x'), KeyError('identity'), IndexError('list index'), RecursionError(),
                                   OverflowError('big'), UnicodeDecodeError('utf-8', b'\xff', 0, 1, 'bad'),
                                   ValueError('plain'), PermissionError(13, 'Permission denied')])
def test_reading_turns_every_reader_error_into_one_bad_file_naming_the_file(error):
    with pytest.raises(BadFile) as info:
        with untrusted.reading('folder/file.json'):
            raise error
    assert str(info.value).startswith('folder/file.json: ') and info.value.path == 'folder/file.json'
    assert type(info.value) is BadFile


def test_reading_keeps_a_message_that_names_the_file_and_makes_missing_files_missing():
    with pytest.raises(BadFile, match=r'^folder/x\.bin is truncated$'):
        with untrusted.reading('folder'):
            raise ValueError('folder/x.bin is truncated')
    with pytest.raises(MissingFile, match='folder/y'):
        with untrusted.reading('folder'):
            open('folder/y')
    with pytest.raises(untrusted.BadArgument, match=r'^--n_head 7: '):  # the caller's fault, not the file's
        with untrusted.reading('folder'):
            raise untrusted.BadArgument('--n_head 7: n_head=7 does not divide n_embd=32')
    with pytest.raises(ZeroDivisionError):  # a programming error is not a bad file
        with untrusted.reading('folder'):
            raise ZeroDivisionError


@pytest.mark.parametrize('name, why', [('../victim/model.ckpt', 'a path outside'), ('/etc/passwd', 'a path outside'),
                                       ('a/../../b', 'a path outside'), ('', 'not a file name'),
                                       ('a\0b', 'not a file name'), (7, 'not a file name'), (None, 'not a file name')])
def test_contained_refuses_paths_leaving_the_folder_without_looking_at_them(tmp_path, name, why):
    with pytest.raises(BadFile) as info:
        untrusted.contained(tmp_path / 'folder', name, 'folder/checkpoint')
    message = str(info.value)
    assert message.startswith('folder/checkpoint: names ') and why in message
    assert 'exist' not in message and 'No such file' not in message


def test_contained_refuses_a_link_leading_out_and_accepts_names_inside(tmp_path):
    folder = tmp_path / 'folder'
    (folder / 'sub').mkdir(parents=True)
    (tmp_path / 'outside').write_text('x')
    os.symlink(tmp_path / 'outside', folder / 'out')
    os.symlink(folder / 'sub', folder / 'in')
    with pytest.raises(BadFile, match='outside its folder'):
        untrusted.contained(folder, 'out', 'index.json')
    assert untrusted.contained(folder, 'in/x', 'index.json') == os.path.join(folder, 'in/x')
    assert untrusted.contained(folder, 'sub/../y', 'index.json') == os.path.join(folder, 'sub/../y')
    inside = str(folder / 'sub' / 'model.ckpt')  # an absolute path inside the folder, as TensorFlow may write
    assert untrusted.contained(folder, inside, 'checkpoint') == inside


def test_open_regular_refuses_fifos_devices_folders_and_links_out_and_names_missing_files(tmp_path):
    os.mkfifo(tmp_path / 'fifo')
    os.symlink('/dev/zero', tmp_path / 'zero')
    (tmp_path / 'dir').mkdir()
    (tmp_path / 'real').write_bytes(b'abc')
    os.symlink(tmp_path / 'real', tmp_path / 'dir' / 'up')  # a link out of dir/, into its parent
    assert assert_refused(untrusted.read_bytes, str(tmp_path / 'fifo'), seconds=20).endswith('not a regular file '
                                                                                             '(a pipe, device or '
                                                                                             'socket): a file was '
                                                                                             'expected there')
    assert 'leads outside' in assert_refused(untrusted.read_bytes, str(tmp_path / 'zero'), seconds=20)
    with pytest.raises(BadFile, match='is a folder'):
        untrusted.read_bytes(tmp_path / 'dir')
    with pytest.raises(BadFile, match='leads outside'):
        untrusted.read_bytes(tmp_path / 'dir' / 'up')
    assert untrusted.read_bytes(tmp_path / 'dir' / 'up', folder=tmp_path) == b'abc'
    with pytest.raises(MissingFile, match=r'nope is missing: fetch it$'):
        untrusted.read_bytes(tmp_path / 'nope', missing='fetch it')
    with pytest.raises(BadFile, match='NUL'):
        untrusted.read_bytes(str(tmp_path / 'a\0b'))


def test_read_bytes_refuses_a_file_larger_than_its_limit_before_reading_it(tmp_path):
    (tmp_path / 'f').write_bytes(b'x' * 101)
    with pytest.raises(BadFile, match=r'is 101 bytes, more than any vocabulary \(100 bytes at most\)'):
        untrusted.read_bytes(tmp_path / 'f', limit=100, what='vocabulary')
    assert untrusted.read_bytes(tmp_path / 'f', limit=101) == b'x' * 101


def test_json_depth_size_and_constants_are_bounded(tmp_path):
    path = tmp_path / 'deep.json'
    path.write_text('[' * 100000 + ']' * 100000)
    message = assert_refused(untrusted.read_json, str(path), memory=256 << 20, seconds=60)
    assert 'nests JSON more than 64 deep' in message
    path.write_text('{"a": "[[[[[[", "b": [[1]]}')  # brackets inside strings do not count
    assert untrusted.read_json(path) == {'a': '[[[[[[', 'b': [[1]]}
    for text in ('{"n": Infinity}', '{"n": NaN}', '{"n": -Infinity}'):
        path.write_text(text)
        with pytest.raises(BadFile, match='not valid JSON'):
            untrusted.read_json(path)
    path.write_text('{"n": NaN}')
    assert untrusted.read_json(path, constants=True)['n'] != 0  # logs may hold NaN losses
    path.write_text('[1]')
    with pytest.raises(BadFile, match='must hold a JSON object, not list'):
        untrusted.read_json(path)
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(BadFile, match='not UTF-8'):
        untrusted.read_json(path)
    path.write_text('{"n": ' + '1' * 5000 + '}')  # past Python's int-from-text limit
    with pytest.raises(BadFile, match='not valid JSON'):
        untrusted.read_json(path)


@given(st.text(max_size=60))
def test_parse_json_raises_only_bad_file(text):
    try:
        untrusted.parse_json(text, 'x.json')
    except BadFile as err:
        assert str(err).startswith('x.json: ') and '\n' not in str(err)


@pytest.mark.parametrize('value', [True, 4.0, '4', None, [4], -1, 1025])
def test_int_field_refuses_non_ints_bools_and_out_of_range(value):
    with pytest.raises(ValueError, match='n_layer'):
        untrusted.int_field('n_layer', value, low=0)


@pytest.mark.parametrize('value', [1.0, 2, -0.1, float('nan'), float('inf'), '0.1', None, True])
def test_fraction_field_refuses_what_is_no_dropout_rate(value):
    with pytest.raises(ValueError, match='attn_pdrop must be a number in'):
        untrusted.fraction_field('attn_pdrop', value)


def test_fields_accept_valid_values():
    assert untrusted.int_field('n_layer', 1024) == 1024 and untrusted.int_field('n_special', 0) == 0
    assert untrusted.fraction_field('embd_pdrop', 0) == 0.0 and untrusted.fraction_field('embd_pdrop', 0.5) == 0.5
    assert untrusted.choice_field('afn', 'gelu', ('gelu', 'relu')) == 'gelu'
    with pytest.raises(ValueError, match="afn must be one of 'gelu', 'relu', not \\['gelu'\\]"):
        untrusted.choice_field('afn', ['gelu'], ('gelu', 'relu'))


def test_run_limited_reports_memory_overruns_and_hangs():
    import time

    import numpy as np
    assert run_limited(np.ones, 1 << 30, memory=64 << 20)[0] == 'MemoryError'
    assert run_limited(time.sleep, 30, seconds=1) == ('hung', '')
    assert run_limited(np.ones, 10) == ('ok', '')


def test_a_hugging_face_cache_snapshot_may_link_into_its_own_blobs_only(tmp_path):
    repo = tmp_path / 'models--gpt2'
    (repo / 'blobs').mkdir(parents=True)
    snapshot = repo / 'snapshots' / 'abc123'
    snapshot.mkdir(parents=True)
    (repo / 'blobs' / 'f00d').write_bytes(b'weights')
    (tmp_path / 'secret').write_bytes(b'key')
    os.symlink('../../blobs/f00d', snapshot / 'model.safetensors')  # as huggingface_hub lays a download out
    os.symlink(tmp_path / 'secret', snapshot / 'config.json')
    assert untrusted.read_bytes(snapshot / 'model.safetensors', folder=snapshot) == b'weights'
    with pytest.raises(BadFile, match='leads outside'):
        untrusted.read_bytes(snapshot / 'config.json', folder=snapshot)
    elsewhere = tmp_path / 'snapshots' / 'x'  # a folder merely named like a snapshot gains only its own ../../blobs
    elsewhere.mkdir(parents=True)
    os.symlink(repo / 'blobs' / 'f00d', elsewhere / 'w')
    with pytest.raises(BadFile, match='leads outside'):
        untrusted.read_bytes(elsewhere / 'w', folder=elsewhere)


def test_an_error_under_a_short_folder_name_is_still_named():
    with pytest.raises(BadFile, match=r"^m: cannot reshape array"):
        with untrusted.reading('m'):
            raise ValueError('cannot reshape array of size 3 into shape (2,)')


def test_writes_never_follow_a_link_planted_at_a_temporarys_name(tmp_path):
    """A folder from elsewhere may hold links named as a writer's temporaries (PIDs are predictable): the temporary
    is a new file, and the rename replaces the target name itself."""
    from checkpoint import atomic_write
    outside = tmp_path / 'outside'
    outside.write_bytes(b'precious')
    folder = tmp_path / 'folder'
    folder.mkdir()
    for name in ('a.json', 'b.json'):
        for planted in (f'{name}.tmp{os.getpid()}', f'{name}.tempstate{os.getpid()}', f'{name}.tmp'):
            os.symlink(outside, folder / planted)
    untrusted.write_atomically(folder / 'a.json', [b'{}', b'\n'])
    atomic_write(str(folder / 'b.json'), lambda tmp: open(tmp, 'w').write('{}\n'))
    assert outside.read_bytes() == b'precious'
    assert (folder / 'a.json').read_bytes() == b'{}\n' == (folder / 'b.json').read_bytes()
    assert not (folder / 'a.json').is_symlink()
