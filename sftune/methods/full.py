"""full: vanilla fine-tuning (methods.md section 1)."""

from sftune.methods.base import Method
from sftune.registry import register


@register
class Full(Method):
    name = "full"
    summary = "Vanilla fine-tuning: every parameter trains."
