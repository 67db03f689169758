"""Pure physics kernels: FFTs, propagators, shifts, optics, modes. No learnable parameters."""
