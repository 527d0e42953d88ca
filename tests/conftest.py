"""Tiny random models (GPT-2 with Conv1D, Llama with Linear, and Gemma 3 for the family facts
only it has: a BOS prefix, per-position attention kinds) with a real byte-level BPE tokenizer.

Built from configs in well under a second and saved as ordinary Hugging Face directories, so
the same fixtures drive unit tests of the method and end-to-end CLI tests (`--model DIR`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is Madrid.",
    "Danielle Darrieux's mother tongue is French. Edwin of Northumbria's religion is Christianity.",
    "Toko Yasuda plays the guitar. Autonomous University of Madrid is located in Spain.",
    "What is the twin city of Lyon? It is Beirut. Who is the father of Alexander? Philip.",
    "Apple was founded by Steve Jobs. The Eiffel Tower is in Paris, France, Europe.",
    "Basketball, baseball, football, tennis, chess, piano, violin, English, German, Japanese.",
]


def build_tokenizer(bos: bool = False):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 20, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"] + (["<bos>"] if bos else []))
    extra = {"bos_token": "<bos>"} if bos else {}
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>", **extra)


def build_gemma3(vocab: int, bos_id: int):
    """Gemma 3 in miniature: alternating sliding (window 3, RoPE base 10k) and full attention
    (RoPE base 1M) blocks, tied embeddings scaled by sqrt(hidden) as in gemma-3-270m."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                              num_key_value_heads=1, head_dim=8, query_pre_attn_scalar=8, max_position_embeddings=128,
                              sliding_window=3, layer_types=["sliding_attention", "full_attention"] * 2,
                              rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                               "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}},
                              initializer_range=0.2, eos_token_id=0, bos_token_id=bos_id, pad_token_id=0)
    return Gemma3ForCausalLM(config).eval()


def build_model(kind: str, vocab: int):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=4, n_head=4, n_positions=128, initializer_range=0.2, eos_token_id=0, bos_token_id=0, pad_token_id=0)
        return GPT2LMHeadModel(config).eval()
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.2, eos_token_id=0, bos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{'gpt2': dir, 'llama': dir}: saved tiny models, loadable with `--model DIR`."""
    tokenizer = build_tokenizer()
    dirs = {}
    for kind in ("gpt2", "llama"):
        directory = tmp_path_factory.mktemp(f"tiny-{kind}")
        build_model(kind, len(tokenizer)).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        dirs[kind] = directory
    return dirs


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Gemma 3 (family `gemma3`, tokenizer with a <bos> token), for `--model DIR`."""
    tokenizer = build_tokenizer(bos=True)
    directory = tmp_path_factory.mktemp("tiny-gemma3")
    build_gemma3(len(tokenizer), tokenizer.bos_token_id).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(params=["gpt2", "llama"])
def tiny(request: pytest.FixtureRequest, tiny_dirs: dict[str, Path]):
    """(kind, model, tokenizer) freshly loaded, once per architecture."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = tiny_dirs[request.param]
    return request.param, AutoModelForCausalLM.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory)


@pytest.fixture(autouse=True)
def fixed_author(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commits made by tests carry a known author."""
    monkeypatch.setenv("SOLA_AUTHOR", "tester")


# --- shared-registry backends (tests/servers.py): a real PostgreSQL and an S3 endpoint ------------
@pytest.fixture(scope="session")
def postgres_server():
    from servers import start_postgres, stop_postgres

    server = start_postgres()
    yield server
    stop_postgres(server)


@pytest.fixture(scope="session")
def s3_server():
    import os

    from servers import S3_CREDENTIALS, start_s3, stop_s3

    saved = {name: os.environ.get(name) for name in S3_CREDENTIALS}
    os.environ.update(S3_CREDENTIALS)  # what s3fs reads, in this process and the CLI processes it starts
    server = start_s3()
    yield server
    stop_s3(server)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(params=["local", "postgres+s3"])
def storage(request: pytest.FixtureRequest):
    """Where a test's registry lives: the local directory, or a fresh Postgres schema plus a fresh
    S3 bucket (the registry test suite runs against both through this fixture)."""
    from registry.storage import Storage

    if request.param == "local":
        return Storage()
    return Storage(request.getfixturevalue("postgres_server").url(), request.getfixturevalue("s3_server").url())
