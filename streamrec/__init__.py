"""streamrec: a streaming, real-time recommender pipeline.

This package is the shared kernel every other room imports: settings, the event
and item contracts, the Redis state layout, ranking features, the model
registry, metric definitions and the client. It imports none of them
(`make lint` checks it; docs/architecture.md draws the rooms).
"""

__version__ = "0.1.0"
