"""The publisher library (README, "The publisher library"): ``async with Client() as client``."""

from worker.client.client import Client, ClientClosed, JobNotRouted, ReplyLost
from worker.client.results import ResultSubscription

__all__ = ["Client", "ClientClosed", "JobNotRouted", "ReplyLost", "ResultSubscription"]
