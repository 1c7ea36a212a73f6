"""The GPU acceptance harness (docs/gpu.md): what a session with a device runs, and how it packs for it."""
