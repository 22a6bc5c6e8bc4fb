"""frozen: only the classification head trains (methods.md section 1)."""

from sftune.methods.base import Method
from sftune.registry import register


@register
class Frozen(Method):
    name = "frozen"
    summary = "Only the classification head trains (the 'Frozen' row of the Stochastic Tuning paper)."

    def trainable(self, name, param):
        return self.ctx.groups[name] == "head"
