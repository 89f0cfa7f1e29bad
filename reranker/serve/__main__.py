"""``python -m reranker.serve``: the same as ``rerank serve``."""

import sys

from .command import main

sys.exit(main())
