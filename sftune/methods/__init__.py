"""Fine-tuning methods, one module each. Every module here is imported by `sftune.registry`, so a new
method is one new file with a `@register`-ed `Method` subclass (and its test)."""
