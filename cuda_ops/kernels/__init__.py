"""Python side of the compiled ops: fake (meta) kernels, autograd, and reference-shaped wrappers."""
