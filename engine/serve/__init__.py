"""``twentyq serve``: the classifier over HTTP (FastAPI on uvicorn; ``pip install 'twentyq[serve]'``).

An application layer like :mod:`engine.cli`: nothing in the engine imports it.

- :mod:`engine.serve.settings`: :class:`ServeSettings`, the server's limits and model, checked when built;
- :mod:`engine.serve.uploads`: request bytes to RGB images, decompression bombs refused before decoding;
- :mod:`engine.serve.batcher`: the dynamic batcher, one worker thread over ``Classifier.images.embed`` and
  ``Classifier.classify_embedded``;
- :mod:`engine.serve.schemas`: the pydantic models of requests and answers;
- :mod:`engine.serve.app`: :func:`create_app`, the FastAPI application.
"""
