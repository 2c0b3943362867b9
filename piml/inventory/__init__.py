"""The inventory: an Ansible YAML inventory (k3s-ansible layout) read into validated nodes."""

from piml.inventory.model import Inventory, Node, Role, Taint
from piml.inventory.validate import load_inventory

__all__ = ["Inventory", "Node", "Role", "Taint", "load_inventory"]
