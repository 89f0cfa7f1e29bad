"""Finding and loading the checkpoint: which devices and dtype (``placement``), where the
weights come from (``weights``), and a replica built from them (``loader``)."""
