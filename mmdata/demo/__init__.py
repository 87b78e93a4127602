"""An offline demo corpus with known truth, and a local web that serves it.

- :func:`mmdata.demo.corpus.build` writes image-caption pairs with labelled noise and interleaved
  HTML/WARC documents.
- :class:`mmdata.demo.server.DemoServer` serves them (and stand-ins for any other image URL) with
  fault modes encoded in the URL; see :mod:`mmdata.demo.urls` for hosts and the fault scheme.
"""
