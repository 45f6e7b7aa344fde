"""Beyond one machine: the program published to NATS JetStream, and edges serving it.

Optional (``pip install townhall[cluster]``): nothing here is imported unless a NATS
URL is configured, so one machine runs with nothing else installed.
"""
