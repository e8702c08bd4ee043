"""byok-worker: LLM completion jobs from RabbitMQ, run with each workspace's own provider keys."""

__version__ = "0.1.0"
