"""``python -m reranker``: the ``rerank`` command."""

import sys

from .cli import main

sys.exit(main())
