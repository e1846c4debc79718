"""Tests for what weights.py says of a path that is no model folder: nothing there, an empty folder, a GPT-2 folder
without its checkpoint, a corpus, a training run's folder. Each is one line naming the folder, what it is and the
fix, with the right family's download command; a GPT-1 folder that lacks its shards keeps naming the missing file."""
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import convert
import generate
import model_gpt2
import models
import untrusted
import weights
from checkpoint import STATE_FORMAT

ROOT = Path(__file__).resolve().parents[1]


def detect_error(path):
    """Return the BadFile detect_format raises for path, checked to be one line."""
    with pytest.raises(untrusted.BadFile) as err:
        weights.detect_format(str(path))
    assert '\n' not in str(err.value) and err.value.path == str(path)
    return err.value


def write_state(path, identity):
    """Write a training state's file as checkpoint.save_training_state lays it out: a tensor, and its metadata."""
    meta = dict(format=STATE_FORMAT, identity=identity, progress={'n_updates': 3})
    save_file({'model/w': np.zeros(2, 'float32')}, str(path), metadata={'state': json.dumps(meta)})


def test_the_released_sizes_are_model_gpt2s():
    assert weights.GPT2_RELEASED_SIZES == {size: (n_embd, n_layer)
                                           for size, (n_embd, _, n_layer) in model_gpt2.GPT2_SIZES.items()}


# --- 1. nothing there ---------------------------------------------------------------------------------------------

def test_a_missing_gpt2_size_folder_gives_its_download_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # models/355M is then download_model.py's own default folder for gpt2-355M
    err = detect_error('models/355M')
    assert isinstance(err, untrusted.MissingFile)
    assert str(err) == ('models/355M does not exist: check the path, or download GPT-2 355M there with '
                        'python download_model.py --model gpt2-355M')
    elsewhere = tmp_path / 'data' / 'gpt2-774M'  # elsewhere: the command names the folder
    assert str(detect_error(elsewhere)).endswith(f'--model gpt2-774M --model_dir {elsewhere}')
    assert '--model gpt2-124M --model_dir models/117M' in str(detect_error('models/117M'))  # 124M's old name


def test_a_missing_folder_of_another_name_gives_gpt1s_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(detect_error('model/')) == ("model/ does not exist: check the path, or download GPT-1's released "
                                           "weights there with python download_model.py")
    message = str(detect_error(tmp_path / 'nowhere'))
    assert message.endswith(f"GPT-1's released weights there with python download_model.py --model_dir "
                            f"{tmp_path / 'nowhere'}")
    assert 'gpt2' not in message


# --- 2. an empty folder ---------------------------------------------------------------------------------------------

def test_an_empty_folder_says_so_with_its_familys_command(tmp_path):
    gpt2 = tmp_path / 'models' / '124M'  # as a failed GPT-2 download may leave it
    gpt2.mkdir(parents=True)
    (gpt2 / '.DS_Store').write_bytes(b'x')  # a hidden file holds no model
    assert str(detect_error(gpt2)) == (f'{gpt2} is empty: download GPT-2 124M into it with python download_model.py '
                                       f'--model gpt2-124M --model_dir {gpt2}')
    gpt1 = tmp_path / 'mine'
    gpt1.mkdir()
    assert str(detect_error(gpt1)) == (f"{gpt1} is empty: download GPT-1's released weights into it with python "
                                       f"download_model.py --model_dir {gpt1}")


# --- 3. a GPT-2 folder without its checkpoint --------------------------------------------------------------------

def test_a_gpt2_folder_without_its_checkpoint_names_the_size_its_hparams_give(tmp_path):
    folder = tmp_path / 'cut'
    folder.mkdir()
    (folder / 'hparams.json').write_text(json.dumps(dict(n_vocab=50257, n_ctx=1024, n_embd=1024, n_head=16,
                                                         n_layer=24)))
    (folder / 'encoder.json').write_text('{}')
    (folder / 'model.ckpt.data-00000-of-00001.part').write_bytes(b'x' * 10)
    assert str(detect_error(folder)) == (
        f'{folder} is a GPT-2 355M folder without its checkpoint: it holds hparams.json, encoder.json but no '
        'model.ckpt.index or model.ckpt.data-00000-of-00001 (a cut download left model.ckpt.data-00000-of-00001.part); '
        f'fetch them with python download_model.py --model gpt2-355M --model_dir {folder}')


def test_a_gpt2_vocabulary_alone_is_a_gpt2_folder_of_no_known_size(tmp_path):
    folder = tmp_path / 'vocab_only'
    folder.mkdir()
    for name in ('encoder.json', 'vocab.bpe'):
        (folder / name).write_text('x')
    message = str(detect_error(folder))
    assert message.startswith(f'{folder} is a GPT-2 folder without its checkpoint: it holds encoder.json, vocab.bpe')
    assert f'python download_model.py --model gpt2-124M --model_dir {folder} (or gpt2-355M' in message


def test_a_gpt2_folder_with_its_checkpoint_is_read_as_one(tmp_path):
    """Only the checkpoint's absence is diagnosed: with an index, the TensorFlow reader names what is wrong."""
    folder = tmp_path / 'g'
    folder.mkdir()
    (folder / 'hparams.json').write_text('{}')
    (folder / 'model.ckpt.index').write_bytes(b'')
    assert weights.detect_format(str(folder)) == 'tf-checkpoint'


# --- 4. a corpus ---------------------------------------------------------------------------------------------------

def test_a_corpus_folder_says_it_is_one(tmp_path):
    folder = tmp_path / 'corpus'
    folder.mkdir()
    for name in ('meta.json', 'train.bin', 'val.bin', 'encoder.json', 'vocab.bpe'):  # a GPT-2 corpus copies its vocabulary
        (folder / name).write_bytes(b'')
    err = detect_error(folder)
    assert not isinstance(err, untrusted.MissingFile)
    assert str(err) == (f'{folder} is a corpus prepared by prepare_corpus.py (meta.json, train.bin, val.bin), not model '
                        'weights: pretrain.py takes it as --corpus; give a weights folder instead')


# --- 5. a training run's folder ------------------------------------------------------------------------------------

def test_an_unfinished_pretrain_run_says_how_to_resume_it(tmp_path):
    folder = tmp_path / 'run'
    folder.mkdir()
    write_state(folder / 'train_state.safetensors', {'--arch': 'gpt1', 'n_updates': 10})
    (folder / 'args.json').write_text(json.dumps({'corpus': 'data/my corpus', 'out': str(folder)}))
    (folder / 'log.jsonl').write_text('')
    (folder / 'run.lock').write_text('')
    assert str(detect_error(folder)) == (
        f'{folder} is the folder of an unfinished pretrain.py run: its weights are only in its training state '
        f'{folder / "train_state.safetensors"} (convert.py reads no training state; model.safetensors and config.json '
        "are written at the end); resume the run to its end with python pretrain.py --corpus 'data/my corpus' --out "
        f'{folder} --resume and the flags it ran with (args.json lists them), which writes the model there')


def test_a_train_run_is_told_by_its_state(tmp_path):
    folder = tmp_path / 'save' / 'tiny'  # train.py's save_dir/desc/, its log kept in log_dir
    folder.mkdir(parents=True)
    write_state(folder / 'train_state.safetensors', {'--dataset': 'rocstories', '--n_iter': 3})
    message = str(detect_error(folder))
    assert message.startswith(f'{folder} is the folder of a train.py run, not a model folder: its weights are in its '
                              f'training state {folder / "train_state.safetensors"}, which no reader')
    assert message.endswith(f'resume an unfinished run with python train.py --dataset rocstories --save_dir '
                            f'{tmp_path / "save"} --desc tiny --resume and the flags it ran with')
    (folder / 'best_params.safetensors').write_bytes(b'')
    assert 'and its best ones in best_params.safetensors' in str(detect_error(folder))


def test_a_run_whose_script_cannot_be_told_names_both(tmp_path):
    folder = tmp_path / 'r'
    folder.mkdir()
    (folder / 'train_state.safetensors').write_bytes(b'damaged')
    message = str(detect_error(folder))
    assert message.startswith(f'{folder} is the folder of an unfinished pretrain.py or train.py run')
    assert f'python pretrain.py --out {folder} --resume' in message and '--desc r --resume' in message


# --- what stays as it was ------------------------------------------------------------------------------------------

def test_a_gpt1_folder_without_its_weights_still_names_the_missing_file(tmp_path, shard_dir):
    clone = tmp_path / 'clone' / 'model'  # a fresh clone's model/: the vocabulary only
    clone.mkdir(parents=True)
    for name in weights.VOCAB_FILES:
        (clone / name).write_bytes((ROOT / 'model' / name).read_bytes())
    assert weights.detect_format(str(clone)) == 'released'
    with pytest.raises(untrusted.MissingFile, match=r'params_shapes\.json is missing: the weights are the model/'):
        weights.read_checkpoint(str(clone))
    (shard_dir / 'params_shapes.json').unlink()  # shards there: the reader names what is missing
    with pytest.raises(untrusted.MissingFile, match=r'params_shapes\.json is missing'):
        weights.read_checkpoint(str(shard_dir))


# --- through the callers: one line reaches the user ----------------------------------------------------------------

def test_convert_prints_the_diagnosis_as_one_line(tmp_path, capsys):
    corpus = tmp_path / 'corpus'
    corpus.mkdir()
    for name in ('meta.json', 'train.bin', 'val.bin'):
        (corpus / name).write_bytes(b'')
    assert convert.main(['to-safetensors', '--model_dir', str(corpus), '--out', str(tmp_path / 'o')]) == 1
    err = capsys.readouterr().err
    assert err == f'convert.py: error: {detect_error(corpus)}\n' and 'is a corpus prepared by prepare_corpus.py' in err
    empty = tmp_path / 'empty'
    empty.mkdir()  # shards-to-safetensors reads the released format directly: the same diagnosis
    assert convert.main(['shards-to-safetensors', '--model_dir', str(empty), '--out', str(tmp_path / 'o')]) == 1
    assert capsys.readouterr().err == f'convert.py: error: {detect_error(empty)}\n'
    assert not (tmp_path / 'o').exists()


def test_generate_and_load_model_give_the_same_line(tmp_path, capsys):
    folder = tmp_path / 'models' / '1558M'
    assert generate.main(['--model_dir', str(folder), '--prompt', 'hi', '--device', 'cpu']) == 1
    err = capsys.readouterr().err
    assert err == (f'generate.py: error: {folder} does not exist: check the path, or download GPT-2 1558M there with '
                   f'python download_model.py --model gpt2-1558M --model_dir {folder}\n')
    with pytest.raises(FileNotFoundError, match='does not exist: check the path, or download GPT-2 1558M'):
        models.load_model(str(folder))
