"""``python -m reranker``: the ``rerank`` command."""

import sys

from .cli.main import main

sys.exit(main())
