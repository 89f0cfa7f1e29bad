"""Requests in flight: the one capacity rule (``gate``), the in-flight bounds (``admission``),
the queue whose replica workers fill and run the passes (``scheduler``), the loop thread that
makes the async core blocking for the library (``loop``), and progress reports (``progress``)."""
