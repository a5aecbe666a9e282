"""The registry event stream's dead letters: the engine is replication.dead_letters (cli/ imports it here)."""

from replication.dead_letters import DeadLetterQueues, dead_letter_queue

__all__ = ["DeadLetterQueues", "dead_letter_queue"]
