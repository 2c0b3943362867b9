"""The capacity plan: where every platform component runs and how big each container is."""

from piml.plan.capacity import Plan, make_plan

__all__ = ["Plan", "make_plan"]
