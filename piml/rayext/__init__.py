"""Ray workers outside Kubernetes (the inventory's ray_external hosts): their service files, the stage, and
the head's view of them."""
