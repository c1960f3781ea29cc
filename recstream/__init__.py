"""recstream: a streaming, real-time, multimodal recommender on Kafka.

The data path, one subpackage per stage:
  recstream.streams   everything Kafka: wire schemas, settings, the Faust app and its handlers,
                      the local broker, the CLI, the app-side client and the demo
  recstream.encoders  content -> vectors (ONNX text, image and audio encoders, media fetching)
  recstream.ranking   per-user state and its online update, the item side, the item store
                      (Qdrant), candidates and the learned scorer, and the offline evaluator
Plus recstream.testing (the pytest plugin apps use) and recstream.bench (`recstream bench`).
Importing this package imports none of them.
"""

__version__ = "0.1.0"
