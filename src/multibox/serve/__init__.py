"""``multibox serve``: an HTTP detection service with dynamic batching and a web page (needs ``multibox[serve]``).

Modules: :mod:`~multibox.serve.app` (the routes), :mod:`~multibox.serve.batcher` (dynamic batching),
:mod:`~multibox.serve.backend` (a checkpoint or ONNX file as a batch detector), :mod:`~multibox.serve.uploads`
(request limits and decoding), :mod:`~multibox.serve.metrics` (Prometheus text), :mod:`~multibox.serve.page` (the
page), :mod:`~multibox.serve.server` (uvicorn).
"""

__all__: list[str] = []
