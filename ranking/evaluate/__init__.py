"""Offline quality evaluation: replay interaction data through the stream's own ranking code.

``recstream evaluate`` (cli.py) loads a dataset (data.py), replays it under a protocol
(protocols.py: prequential test-then-learn, or RecBole's random 80/10/10 split) through each
model (models.py: recstream's online model, built from ranking.state / ranking.collab /
ranking.features, and the baselines), and scores the rankings (metrics.py).
"""

import os

# One BLAS thread (set before numpy loads): the stream ranks one event at a time per worker,
# and OpenBLAS threads spin-waiting on a busy 2-core machine made each small matrix-vector
# product tens of times slower.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
