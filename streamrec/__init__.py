"""streamrec: a streaming, real-time recommender pipeline.

This package is the shared kernel: settings, the event contract, the Redis
state layout, metric definitions, the embedded dev stack and the CLI.
"""

__version__ = "0.1.0"
