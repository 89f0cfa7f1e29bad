"""A request and its results: the options every front end shares (``options``), the
validated and tokenized request (``prepare``), and logits -> scores -> ranked results
(``results``)."""
