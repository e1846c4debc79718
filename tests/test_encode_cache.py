"""Tests of encode_cache.py: cached ids equal the tokenizer's, every input of the ids is in the key, a damaged or
planted entry is reported and encoded again, and train.py reads the cache instead of loading spaCy."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import encode_cache
from encode_cache import CACHE_FORMAT, CachedEncoder, texts_key, tokenizer_key
from models import tokenizer_from_files
from tests.helpers import ROOT, roc_cli_args, roc_workdir
from text_utils import BPE_PATH, ENCODER_PATH

TEXTS = ['Karen was assigned a roommate her first year of college.', 'They went to a concert.', '',
         'Café naïve — “quotes”, 3.14 and\nnew lines.']


@pytest.fixture(scope='module')
def gpt1():
    """The GPT-1 tokenizer of the shipped vocabulary and its ids of TEXTS, encoded without a cache."""
    tokenizer = tokenizer_from_files('gpt1', ENCODER_PATH, BPE_PATH)
    return tokenizer, tokenizer.encode(TEXTS, verbose=False)


def fresh(folder):
    """Return a new CachedEncoder on a new GPT-1 tokenizer (spaCy not loaded) over folder."""
    return CachedEncoder(tokenizer_from_files('gpt1', ENCODER_PATH, BPE_PATH), str(folder))


def only_entry(folder):
    """Return the path of the one cache file in folder."""
    (name,) = os.listdir(folder)
    return folder / name


def test_a_second_encoder_reads_the_same_ids_without_loading_spacy(gpt1, tmp_path):
    _, plain = gpt1
    first = fresh(tmp_path)
    assert first.encode(TEXTS, verbose=False) == plain and first.hits == 0
    assert only_entry(tmp_path).name == texts_key(first.key, TEXTS) + '.safetensors'
    second = fresh(tmp_path)
    assert second.encode(TEXTS, verbose=False) == plain and second.hits == 1
    assert second.base._nlp is None  # the tokenizer never ran: its spaCy pipeline was never loaded
    assert second.encoder is second.base.encoder  # callers add special tokens to the tokenizer's own dict


def test_gpt2_ids_come_back_the_same(tmp_path):
    texts = TEXTS + ['<|endoftext|> and  two  spaces']
    plain = tokenizer_from_files('gpt2').encode(texts, verbose=False)
    CachedEncoder(tokenizer_from_files('gpt2'), str(tmp_path)).encode(texts, verbose=False)
    second = CachedEncoder(tokenizer_from_files('gpt2'), str(tmp_path))
    assert second.encode(texts, verbose=False) == plain and second.hits == 1


def test_the_key_changes_with_every_input_of_the_ids(gpt1, monkeypatch):
    tokenizer, _ = gpt1
    key = tokenizer_key(tokenizer)
    assert texts_key(key, ['ab', 'c']) != texts_key(key, ['a', 'bc'])  # the same characters, cut differently
    assert texts_key(key, ['ab']) != texts_key(key, ['ab', ''])
    assert texts_key(key, TEXTS) != texts_key(key, TEXTS[:-1] + [TEXTS[-1] + ' '])
    assert tokenizer_key(tokenizer_from_files('gpt2')) != key
    other = tokenizer_from_files('gpt1', ENCODER_PATH, BPE_PATH)
    assert tokenizer_key(other) == key
    token = next(iter(other.encoder))
    other.encoder[token] += 1  # another vocabulary
    assert tokenizer_key(other) != key
    other = tokenizer_from_files('gpt1', ENCODER_PATH, BPE_PATH)
    other.bpe_ranks[next(iter(other.bpe_ranks))] = -1  # other merges
    assert tokenizer_key(other) != key
    monkeypatch.setattr(encode_cache, 'library_version', lambda name: '99' if name == 'spacy' else 'x')
    assert tokenizer_key(tokenizer) != key  # another spaCy may tokenize otherwise


def write_entry(path, key, ids, offsets, **metadata):
    save_file({'ids': ids, 'offsets': offsets}, str(path), metadata={'format': CACHE_FORMAT, 'key': key, **metadata})


def damage_cases(key, n_ids):
    """Yield (what, a function writing that damage at a path)."""
    good_offsets = torch.tensor([0, 1, 2, 2, 3])
    yield 'truncated', lambda p: p.write_bytes(p.read_bytes()[:40])
    yield 'not safetensors', lambda p: p.write_bytes(b'\x00' * 64)
    yield 'another key', lambda p: write_entry(p, 'f' * 64, torch.tensor([1, 2, 3], dtype=torch.int32), good_offsets)
    yield 'id out of range', lambda p: write_entry(p, key, torch.tensor([1, n_ids, 3], dtype=torch.int32), good_offsets)
    yield 'negative id', lambda p: write_entry(p, key, torch.tensor([1, -1, 3], dtype=torch.int32), good_offsets)
    yield 'offsets going back', lambda p: write_entry(p, key, torch.tensor([1, 2, 3], dtype=torch.int32),
                                                      torch.tensor([0, 2, 1, 2, 3]))
    yield 'offsets past the ids', lambda p: write_entry(p, key, torch.tensor([1, 2, 3], dtype=torch.int32),
                                                        torch.tensor([0, 1, 2, 3, 4]))
    yield 'one text short', lambda p: write_entry(p, key, torch.tensor([1, 2, 3], dtype=torch.int32),
                                                  torch.tensor([0, 1, 2, 3]))
    yield 'float ids', lambda p: save_file({'ids': torch.ones(3), 'offsets': good_offsets}, str(p),
                                           metadata={'format': CACHE_FORMAT, 'key': key})


def test_a_damaged_entry_is_named_in_one_line_and_encoded_again(gpt1, tmp_path, capsys):
    _, plain = gpt1
    probe = fresh(tmp_path / 'probe')
    key = texts_key(probe.key, TEXTS)
    for what, damage in damage_cases(key, probe.n_ids):
        folder = tmp_path / what.replace(' ', '_')
        fresh(folder).encode(TEXTS, verbose=False)
        path = only_entry(folder)
        damage(path)
        capsys.readouterr()
        again = fresh(folder)
        assert again.encode(TEXTS, verbose=False) == plain and again.hits == 0, what
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f'{path}: ignored (') and 'encoding the texts again' in err[0], what
        assert fresh(folder).encode(TEXTS, verbose=False) == plain, what  # rewritten whole: a hit again
        assert capsys.readouterr().err == '', what


def test_a_link_or_a_folder_in_place_of_an_entry_is_not_followed(gpt1, tmp_path, capsys):
    _, plain = gpt1
    probe = fresh(tmp_path / 'cache')
    path = tmp_path / 'cache' / f'{texts_key(probe.key, TEXTS)}.safetensors'
    outside = tmp_path / 'outside.safetensors'
    fresh(tmp_path / 'elsewhere').encode(TEXTS, verbose=False)
    os.replace(only_entry(tmp_path / 'elsewhere'), outside)  # a valid entry, but outside the cache folder
    (tmp_path / 'cache').mkdir()
    path.symlink_to(outside)
    encoder = fresh(tmp_path / 'cache')
    assert encoder.encode(TEXTS, verbose=False) == plain and encoder.hits == 0
    assert 'leads outside' in capsys.readouterr().err
    assert not path.is_symlink()  # replaced by a file of its own


def test_an_unwritable_cache_costs_only_the_saving(gpt1, tmp_path, capsys):
    _, plain = gpt1
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    encoder = fresh(blocker / 'cache')
    assert encoder.encode(TEXTS, verbose=False) == plain
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'not cached' in err[0]


def test_the_setting_names_the_folder(monkeypatch, tmp_path):
    monkeypatch.setenv('GPT_PYTORCH_CACHE', str(tmp_path))
    assert encode_cache.cache_folder('auto') == str(tmp_path / 'encoded')
    assert encode_cache.cache_folder('none') is None
    assert encode_cache.cache_folder('some/folder') == 'some/folder'
    monkeypatch.delenv('GPT_PYTORCH_CACHE')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert encode_cache.cache_folder('auto') == str(tmp_path / 'xdg' / 'gpt-pytorch' / 'encoded')
    tokenizer = object()
    assert encode_cache.cached(tokenizer, 'none') is tokenizer


def train_once(d, cache, desc, env=None):
    """Run train.py's tiny ROCStories job in folder d with --encode_cache cache; return its summary record."""
    proc = subprocess.run([sys.executable, str(ROOT / 'train.py'), *roc_cli_args(d, '--submit', '--desc', desc,
                                                                                   '--encode_cache', str(cache))],
                          cwd=d, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads((d / 'log' / f'{desc}_summary.json').read_text())


def test_train_reads_its_second_run_from_the_cache_and_trains_the_same(tmp_path):
    d = roc_workdir(tmp_path)
    cache = tmp_path / 'cache'
    first = train_once(d, cache, 'first')
    entries = sorted(os.listdir(cache))
    assert len(entries) == 9  # the story and the two endings of each of the 3 splits
    stamps = {name: os.stat(cache / name).st_mtime_ns for name in entries}
    second = train_once(d, cache, 'second')
    assert {name: os.stat(cache / name).st_mtime_ns for name in os.listdir(cache)} == stamps  # read, not rewritten
    assert second['best_va'] == first['best_va'] and second['te_acc'] == first['te_acc']
    logs = [[{k: v for k, v in json.loads(line).items() if k not in ('time', 'desc')}
             for line in (d / 'log' / f'{desc}.jsonl').read_text().splitlines()] for desc in ('first', 'second')]
    assert logs[0] == logs[1]


def test_none_turns_the_cache_off(tmp_path):
    d = roc_workdir(tmp_path)
    home = tmp_path / 'home'
    train_once(d, 'none', 'off', env={**os.environ, 'GPT_PYTORCH_CACHE': str(home)})
    assert not home.exists()
    train_once(d, 'auto', 'auto', env={**os.environ, 'GPT_PYTORCH_CACHE': str(home)})
    assert len(os.listdir(home / 'encoded')) == 9
