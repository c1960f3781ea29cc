"""Offline quality evaluation: replay interaction data through the stream's own ranking code.

``recstream evaluate`` (cli.py) loads a dataset (data.py), replays it under a protocol
(protocols.py: prequential test-then-learn, or RecBole's random 80/10/10 split) through each
model (models.py: recstream's online model, built from ranking.state / ranking.collab /
ranking.ranker, and the baselines), and scores the rankings (metrics.py).
"""
