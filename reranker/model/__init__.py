"""Passes -> hidden states -> logits on one replica: the engine that runs a pass
(``engine``, passes planned by ``batching``, packed by ``packing``), the Qwen3 forward
restricted to what the score needs (``scorer``, ``attention``, ``layers``, ``fp8``), and which
GPU errors are fatal (``faults``)."""
