"""The built-in shapes: geometry (signed distances), tracing (their renders), library (the
image set of every shape, colour and view, cached), prompts (which sets a prompt names) and
fitting (a shape fitted to one picture, for the image kinds)."""
