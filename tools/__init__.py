"""tools/ holds commands built on the reranker package that the serving runtime never imports."""
