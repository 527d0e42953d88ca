"""A small inference core for the Llama family in plain torch: the model, its tokenizer and
greedy decoding, with no import of transformers.

Why it exists: importing transformers and building a model through `from_pretrained` cost
most of `sola generate`'s cold start (docs/results.md, "Start-up"). Commands that only run the
model forward (generate) load the base model here instead; everything that trains keeps the
transformers path (sola.modelio.load_base), so edits are made exactly as before.

The modules keep transformers' names and paths (`model.layers.N.mlp.up_proj`, `lm_head`, ...)
so the saved safetensors load directly and sola's routed layer attaches and taps the same
paths through the architecture table (sola.arch). tests/test_core.py holds the core to
transformers' logits, tokens and generations.
"""
