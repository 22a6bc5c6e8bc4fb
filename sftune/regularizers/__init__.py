"""Regularisers (methods.md section 5), one module each, registered with `@register_regularizer`; they
compose with every method through the same hooks (`sftune.methods.base.Regularizer`)."""
