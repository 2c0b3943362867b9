"""Node facts: one shell script gathers them in one round trip; pure parsers read its output."""

from piml.facts.commands import gather_command, gather_script
from piml.facts.model import NodeFacts, parse_facts
from piml.facts.values import RootMount, ServiceState, Throttled

__all__ = ["NodeFacts", "RootMount", "ServiceState", "Throttled", "gather_command", "gather_script", "parse_facts"]
