"""blockfuzz harness: drives a real QEMU and compares it with the model (see ARCHITECTURE.md)."""
