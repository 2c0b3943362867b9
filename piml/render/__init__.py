"""Render the platform's Kubernetes manifests from the plan (Jinja templates in templates/)."""

from piml.render.manifests import COMPONENTS, Rendered, render_platform

__all__ = ["COMPONENTS", "Rendered", "render_platform"]
