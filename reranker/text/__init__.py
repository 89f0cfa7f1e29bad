"""Text -> prompt -> token ids -> windows: the model card's prompt (``prompt``), its exact
ids (``tokenization``, with ``safecut`` proving where a long document may be cut before
tokenizing), and the windows of a document too long for one prompt (``windows``)."""
