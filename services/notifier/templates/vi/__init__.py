"""Jinja2 templates (a package only so that wheels ship the .j2 files)."""
