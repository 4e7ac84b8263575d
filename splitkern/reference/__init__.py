"""Pure-PyTorch reference of every op: the test oracle and the CPU path."""
