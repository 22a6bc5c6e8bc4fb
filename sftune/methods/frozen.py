"""frozen: only the classification head trains (methods.md section 1)."""

from sftune.errors import UsageError
from sftune.methods.base import Method
from sftune.registry import register


@register
class Frozen(Method):
    name = "frozen"
    summary = "Only the classification head trains (the 'Frozen' row of the Stochastic Tuning paper)."

    def setup(self, ctx) -> None:
        super().setup(ctx)
        if not any(g == "head" for g in ctx.groups.values()):
            raise UsageError(f"method frozen trains only the task head, and {type(ctx.model).__name__} has none "
                             f"(task {ctx.task.name} trains a causal LM). Choose a method that trains the model, "
                             "e.g. --method stochastic or --method full.")

    def trainable(self, name, param):
        return self.ctx.groups[name] == "head"
