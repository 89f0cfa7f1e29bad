"""``rerank``: the command line (``main``) and its documents file formats
(``documents_file``)."""
