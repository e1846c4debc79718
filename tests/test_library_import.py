"""docs/library.md's "Import from anywhere": a notebook outside the clone puts the clone on sys.path and imports the
modules; the shipped vocabularies are found next to the code, the weights in ./model/ of the working folder."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# as a notebook elsewhere would run it: the clone on sys.path, then the documented imports and defaults
NOTEBOOK = """
import sys
sys.path.insert(0, sys.argv[1])
import model_pytorch
from text_utils import TextEncoder
from encoder_gpt2 import get_encoder
print(TextEncoder().encode(['hello world'], verbose=False))
print(get_encoder().encode('Hello world'))
model = model_pytorch.TransformerModel(model_pytorch.GPTConfig(n_embd=24, n_head=2, n_layer=1, n_ctx=8))
try:
    model_pytorch.load_openai_pretrained_model(model, n_embd=24)
except FileNotFoundError as error:
    print(error)
"""


def test_the_modules_import_from_a_folder_outside_the_clone_with_the_shipped_vocabularies(tmp_path):
    assert not tmp_path.resolve().is_relative_to(ROOT)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    proc = subprocess.run([sys.executable, '-c', NOTEBOOK, str(ROOT)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gpt1, gpt2, weights = proc.stdout.splitlines()[-3:]
    assert gpt1 == '[[3570, 1276]]'  # GPT-1's BPE: 'hello</w>', 'world</w>'
    assert gpt2 == '[15496, 995]'  # GPT-2's: 'Hello', 'Ġworld'
    assert weights.startswith('./model/ does not exist')  # the weights: ./model/ of the working folder
